"""``sdcompose serve --ray``: throughput with 1 and 2 generator replicas, and the Ray path's cost per request.

    python benchmarks/serve_ray.py --out serve-ray-results     # results.json and plot.png there

All on 127.0.0.1 with the tiny test models. Throughput: ``--requests`` concurrent ``/v1/generate`` calls (one
base) on a warm deployment, as images per minute. Overhead: the median of ``--repeats`` sequential calls on a warm
Ray deployment of one replica and to an in-process ``sdcompose serve --no-ui``, both up at once, the calls
alternating between them (so the shared machine's changing load hits both alike), both at one thread (a replica
reserving one CPU gets one): the difference is what Ray Serve adds: the ingress, the handle call to the
replica, the stream of events and the result crossing back.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

WAIT_S = 900


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def body(i: int, args: argparse.Namespace) -> dict:
    return {"prompt": f"a lighthouse {i}", "model": "tiny-sd15", "width": args.size, "height": args.size,
            "steps": args.steps, "seed": i}


def timed_burst(url: str, args: argparse.Namespace) -> tuple[float, set[str]]:
    async def burst():
        async with httpx.AsyncClient(base_url=url, timeout=WAIT_S) as client:
            return await asyncio.gather(*[client.post("/v1/generate", json=body(i, args))
                                          for i in range(args.requests)])
    start = time.perf_counter()
    answers = asyncio.run(burst())
    seconds = time.perf_counter() - start
    bad = [a.text[:200] for a in answers if a.status_code != 200]
    if bad:
        raise SystemExit(f"requests failed: {bad[:3]}")
    return seconds, {a.json()["metadata"].get("replica", "in-process") for a in answers}


def paired_ms(urls: list[str], args: argparse.Namespace) -> list[list[float]]:
    """Per URL, the times of ``--repeats`` sequential calls, the URLs taking turns (each warmed first)."""
    clients = [httpx.Client(base_url=url, timeout=WAIT_S) for url in urls]
    times = [[] for _ in urls]
    try:
        for i in range(args.repeats + 1):  # the first call of each loads the model
            for client, kept in zip(clients, times):
                start = time.perf_counter()
                answer = client.post("/v1/generate", json=body(i, args))
                if i:
                    kept.append((time.perf_counter() - start) * 1000)
                assert answer.status_code == 200, answer.text[:300]
    finally:
        for client in clients:
            client.close()
    return times


def in_process_server() -> tuple[subprocess.Popen, str]:
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "sdcompose.cli", "serve", "--no-ui", "--port", str(port)],
                              env=os.environ | {"OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)
    line = server.stdout.readline()  # "sdcompose: serving on ..." once it listens
    if "serving on" not in line:
        raise SystemExit(f"sdcompose serve did not start: {line}")
    return server, f"http://127.0.0.1:{port}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="serve-ray-results")
    parser.add_argument("--requests", type=int, default=24, help="concurrent requests per throughput case")
    parser.add_argument("--repeats", type=int, default=8, help="sequential requests for the overhead")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2, help="times each replica count is deployed and timed")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    server, local_url = in_process_server()

    import ray
    from ray import serve

    from sdcompose.raycluster import patient_start, runtime_env
    from sdcompose.server.rayserve import APP, Options, application
    patient_start()
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False, runtime_env=runtime_env())
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    rows = []
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        for replicas in (1, 2) * args.rounds:  # the cases take turns, so the machine's changing load hits both
            serve.run(application(Options(replicas=replicas, cpus_per_replica=1)), name=APP, route_prefix="/")
            if not rows:
                local_ms, ray_ms = paired_ms([local_url, url], args)
                server.terminate()
                print(f"per request: in-process serve {statistics.median(local_ms):.0f} ms, Ray Serve 1 replica "
                      f"{statistics.median(ray_ms):.0f} ms (medians, alternating)", flush=True)
            timed_burst(url, args)  # warm: the base loads on every replica a burst reaches
            seconds, used = timed_burst(url, args)
            rows.append({"replicas": replicas, "seconds": round(seconds, 2), "replicas_used": len(used),
                         "images_per_min": round(args.requests * 60 / seconds, 1), "load_average": os.getloadavg()})
            print(f"{replicas} replica(s): {seconds:.1f} s, {rows[-1]['images_per_min']} images/min, "
                  f"{len(used)} replica(s) answered", flush=True)
            serve.delete(APP)
    finally:
        server.terminate()
        server.wait(60)
        serve.shutdown()
        ray.shutdown()
    results = {"date": time.strftime("%Y-%m-%d"), "cores": os.cpu_count(), "cpus": args.cpus, "steps": args.steps,
               "size": args.size, "requests": args.requests, "rows": rows,
               "ratio_2_over_1": round(per_min(rows, 2) / per_min(rows, 1), 2),
               "in_process_ms": [round(t, 1) for t in local_ms], "ray_ms": [round(t, 1) for t in ray_ms],
               "overhead_ms": round(statistics.median(ray_ms) - statistics.median(local_ms), 1)}
    (out / "results.json").write_text(json.dumps(results, indent=1))
    plot(results, out / "plot.png")
    print(f"2 replicas / 1: {results['ratio_2_over_1']}x; Ray overhead per request {results['overhead_ms']} ms")


def per_min(rows: list[dict], replicas: int) -> float:
    """Images per minute of all the rounds with ``replicas`` together."""
    runs = [r for r in rows if r["replicas"] == replicas]
    return round(sum(r["images_per_min"] * r["seconds"] for r in runs) / sum(r["seconds"] for r in runs), 1)


def plot(results: dict, target: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    rows = results["rows"]
    left.bar([f"{r['replicas']} replica{'s' * (r['replicas'] > 1)}\n(round {i // 2 + 1})" for i, r in enumerate(rows)],
             [r["images_per_min"] for r in rows], color=["tab:blue" if r["replicas"] == 1 else "tab:orange" for r in rows])
    left.set_ylabel("images per minute")
    left.set_title(f"{results['requests']} concurrent requests ({results['ratio_2_over_1']}x)")
    right.boxplot([results["in_process_ms"], results["ray_ms"]], tick_labels=["in-process serve", "serve --ray"])
    right.set_ylabel("ms per request (sequential, 1 thread)")
    right.set_title(f"overhead: {results['overhead_ms']:+.0f} ms (median)")
    fig.suptitle(f"tiny-sd15 {results['size']}x{results['size']}, {results['steps']} steps; {results['cores']}-core "
                 f"machine shared with other jobs ({results['date']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(target, dpi=100)


if __name__ == "__main__":
    main()
