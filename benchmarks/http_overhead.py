"""What the HTTP API adds to a request: ``sdcompose serve`` on loopback against the in-process Python API.

    python benchmarks/http_overhead.py [--pairs 60]

Tiny random-weight models on CPU, 64x64, 2 steps, one seed: the denoising is the same work both ways, so the
difference is the HTTP API's cost per request (parsing, the queue, PNG encoding with the metadata, base64, JSON,
the socket). Made to be read on a loaded machine: each round runs the Python API and every HTTP kind once, in a
new random order, and each HTTP request is paired with the Python call of its own round; the figure is the median
of those per-pair differences, with their interquartile range, so load that drifts over minutes cancels out and
a burst hits one pair, not the median. Prints a Markdown table (docs/http-api.md has the last one).
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


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return (time.perf_counter() - started) * 1000


def sse(client: httpx.Client) -> None:
    job = client.post("/v1/jobs", json=REQUEST).json()["id"]
    with client.stream("GET", f"/v1/jobs/{job}/events") as stream:
        for line in stream.iter_lines():
            if line.startswith("event: result"):
                break


def quartiles(values: list[float]) -> tuple[float, float, float]:
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, median, q3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=60, help="rounds; each pairs every HTTP kind with a Python call")
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

        def python_png() -> None:
            result = pipe.generate(**REQUEST)
            png_bytes(result.images[0], result.per_image[0], result.inputs)

        python = "Python API (`Pipeline.generate`)"
        kinds = {
            python: lambda: pipe.generate(**REQUEST),
            "Python API + the PNG with metadata": python_png,
            "`POST /v1/generate` (JSON answer)": lambda: client.post("/v1/generate", json=REQUEST).raise_for_status(),
            "`POST /v1/generate`, `Accept: image/png`": lambda: client.post(
                "/v1/generate", json=REQUEST, headers={"Accept": "image/png"}).raise_for_status(),
            "`POST /sdapi/v1/txt2img`": lambda: client.post("/sdapi/v1/txt2img", json=A1111).raise_for_status(),
            "`POST /v1/jobs` + SSE to the result": lambda: sse(client),
        }
        for _ in range(3):  # warm: models loaded on both sides, caches filled
            for fn in kinds.values():
                fn()
        order = random.Random(args.seed)
        times: dict[str, list[float]] = {name: [] for name in kinds}
        for _ in range(args.pairs):
            names = list(kinds)
            order.shuffle(names)
            for name in names:
                times[name].append(timed(kinds[name]))
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
    load = os.getloadavg()[0]
    base = statistics.median(times[python])
    print(f"{args.pairs} rounds, each kind once a round in random order; load average {load:.1f} at the end "
          "(tiny-sd15, 64x64, 2 steps, CPU)\n")
    print("| request | median ms | added per request: median of the per-round differences (IQR) | ratio |")
    print("|---|---|---|---|")
    summary = {}
    for name, values in times.items():
        median = statistics.median(values)
        if name == python:
            print(f"| {name} | {median:.1f} | (the baseline) | 1.00 |")
            continue
        q1, added, q3 = quartiles([t - b for t, b in zip(values, times[python])])
        summary[name] = {"median_ms": median, "added_ms": added, "iqr_ms": [q1, q3]}
        print(f"| {name} | {median:.1f} | {added:+.1f} ms ({q1:+.1f} to {q3:+.1f}) | {median / base:.2f} |")
    print("\n" + json.dumps({"baseline_ms": base, "load": load, "kinds": summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
