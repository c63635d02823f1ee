"""What the HTTP API adds to a request: ``sdcompose serve`` on loopback against the in-process Python API.

    python benchmarks/http_overhead.py [--repeats 20]

Tiny random-weight models on CPU, 64x64, 2 steps, one seed: the denoising is the same work both ways, so the
difference of the medians is the HTTP API's cost per request (parsing, the queue, PNG encoding with the metadata,
base64, JSON, the socket). Requests are interleaved, so a change in the machine's load hits every kind alike.
Prints a Markdown table (docs/http-api.md has the last one).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time

import httpx

REQUEST = dict(prompt="a lighthouse", model="tiny-sd15", width=64, height=64, steps=2, seed=1)
A1111 = dict(prompt="a lighthouse", width=64, height=64, steps=2, seed=1, sampler_name="DPM++ 2M",
             override_settings={"sd_model_checkpoint": "tiny-sd15"})


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
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

        kinds = {
            "Python API (`Pipeline.generate`)": lambda: pipe.generate(**REQUEST),
            "Python API + the PNG with metadata": python_png,
            "`POST /v1/generate` (JSON answer)": lambda: client.post("/v1/generate", json=REQUEST).raise_for_status(),
            "`POST /v1/generate`, `Accept: image/png`": lambda: client.post(
                "/v1/generate", json=REQUEST, headers={"Accept": "image/png"}).raise_for_status(),
            "`POST /sdapi/v1/txt2img`": lambda: client.post("/sdapi/v1/txt2img", json=A1111).raise_for_status(),
            "`POST /v1/jobs` + SSE to the result": lambda: sse(client),
        }
        for fn in kinds.values():  # warm: models loaded on both sides, caches filled
            fn()
        times: dict[str, list[float]] = {name: [] for name in kinds}
        for _ in range(args.repeats):
            for name, fn in kinds.items():
                times[name].append(timed(fn))
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
    base = statistics.median(times[next(iter(kinds))])
    print(f"{args.repeats} interleaved repeats, median ms (tiny-sd15, 64x64, 2 steps, CPU)\n")
    print("| request | median ms | over the Python API | ratio |\n|---|---|---|---|")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.1f} | {median - base:+.1f} ms | {median / base:.2f} |")
    print("\n" + json.dumps({name: statistics.median(v) for name, v in times.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
