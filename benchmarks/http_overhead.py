"""What the HTTP API adds to a request: ``sdcompose serve`` on loopback against the in-process Python API.

    python benchmarks/http_overhead.py [--rounds 30]

Tiny random-weight models on CPU, 64x64, 2 steps, one seed. Made to be read on a loaded machine, where one
tiny generation varies by a second or more from call to call: each HTTP answer says how long its own run took
on the server (``Server-Timing: run;dur=``; for the SSE stream, the job's ``started``/``finished``), so the
HTTP API's cost (parsing, the queue, PNG encoding with the metadata, base64, JSON, the socket, the client) is
measured per request as the round trip minus that request's own run, not as a difference of two noisy
generations. Kinds are interleaved in a new random order each round; the table gives the median of the
per-request costs with their interquartile range, and the ratio to the Python API's median time. Prints a
Markdown table (docs/http-api.md has the last one).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import time

import httpx

REQUEST = dict(prompt="a lighthouse", model="tiny-sd15", width=64, height=64, steps=2, seed=1)
A1111 = dict(prompt="a lighthouse", width=64, height=64, steps=2, seed=1, sampler_name="DPM++ 2M",
             scheduler="Uniform", cfg_scale=7.5, override_settings={"sd_model_checkpoint": "tiny-sd15"})  # the same


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def timed(fn) -> tuple[float, float]:
    """(round trip ms, the server's own run ms) of one call; ``fn`` returns the run ms (None: all of it)."""
    started = time.perf_counter()
    run = fn()
    took = (time.perf_counter() - started) * 1000
    return took, took if run is None else run


def run_ms(answer: httpx.Response) -> float:
    answer.raise_for_status()
    return float(answer.headers["server-timing"].split("dur=")[1])


def sse(client: httpx.Client) -> float:
    job = client.post("/v1/jobs", json=REQUEST).json()["id"]
    last = None
    with client.stream("GET", f"/v1/jobs/{job}/events") as stream:
        for line in stream.iter_lines():
            if line.startswith("data: ") and '"state": "done"' in line:
                last = json.loads(line[6:])
            if line.startswith("event: result"):
                break
    return (last["finished"] - last["started"]) * 1000


def quartiles(values: list[float]) -> tuple[float, float, float]:
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, median, q3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30, help="rounds; each runs every kind once")
    parser.add_argument("--seed", type=int, default=0, help="of the random order within each round")
    args = parser.parse_args()
    import sdcompose
    from sdcompose.metadata import png_bytes
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "sdcompose.cli", "serve", "--no-ui", "--port", str(port),
                               "--device", "cpu"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env=os.environ | {"PYTHONUNBUFFERED": "1"})
    try:
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300)
        deadline = time.monotonic() + 300
        while True:
            try:
                client.get("/v1/health")
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("the server did not start")
                time.sleep(0.5)
        pipe = sdcompose.Pipeline(device="cpu")

        made = pipe.generate(**REQUEST)
        python = "Python API (`Pipeline.generate`)"
        kinds = {
            python: lambda: pipe.generate(**REQUEST) and None,
            "the PNG with metadata alone (`png_bytes`)": lambda: png_bytes(
                made.images[0], made.per_image[0], made.inputs) and 0.0,
            "`POST /v1/generate` (JSON answer)": lambda: run_ms(client.post("/v1/generate", json=REQUEST)),
            "`POST /v1/generate`, `Accept: image/png`": lambda: run_ms(client.post(
                "/v1/generate", json=REQUEST, headers={"Accept": "image/png"})),
            "`POST /sdapi/v1/txt2img`": lambda: run_ms(client.post("/sdapi/v1/txt2img", json=A1111)),
            "`POST /v1/jobs` + SSE to the result": lambda: sse(client),
        }
        for _ in range(3):  # warm: models loaded on both sides, caches filled
            for fn in kinds.values():
                fn()
        order = random.Random(args.seed)
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in kinds}
        for _ in range(args.rounds):
            names = list(kinds)
            order.shuffle(names)
            for name in names:
                times[name].append(timed(kinds[name]))
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
    load = os.getloadavg()[0]
    base = statistics.median(took for took, _ in times[python])
    print(f"{args.rounds} rounds, each kind once a round in random order; load average {load:.1f} at the end "
          "(tiny-sd15, 64x64, 2 steps, CPU)\n")
    print("| request | median ms, whole request | added by the HTTP API: median (IQR) of each request's round trip "
          "minus its own run | ratio to the Python API |")
    print("|---|---|---|---|")
    summary = {}
    for name, values in times.items():
        median = statistics.median(took for took, _ in values)
        if name == python:
            print(f"| {name} | {median:.1f} | (the baseline) | 1.00 |")
            continue
        q1, added, q3 = quartiles([took - run for took, run in values])
        summary[name] = {"median_ms": median, "added_ms": added, "iqr_ms": [q1, q3]}
        ratio = "" if "alone" in name else f"{(base + added) / base:.3f}"
        print(f"| {name} | {median:.1f} | {added:.1f} ms ({q1:.1f} to {q3:.1f}) | {ratio} |")
    print("\n" + json.dumps({"baseline_ms": base, "load": load, "kinds": summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
