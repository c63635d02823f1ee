"""Batch throughput in-process and over Ray actors (and, with --serve, the Ray Serve deployment), as images/min.

    python benchmarks/scale_out.py --out scale-results      # results.json and plot.png in scale-results/

Each case runs ``sdcompose batch`` as a user does (a fresh command, a fresh output folder) on the tiny test models
and times the whole command, model loading and Ray's start of its actors included. The Ray cases use a local Ray
started here with ``--cpus`` CPUs, one per actor, and stopped at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def jobs_file(folder: Path, lines: int, steps: int, size: int) -> Path:
    path = folder / "jobs.jsonl"
    path.write_text("".join(json.dumps({"id": f"b{i:03d}", "prompt": f"a lighthouse {i}", "model": "tiny-sd15",
                                        "width": size, "height": size, "steps": steps, "seed": i}) + "\n"
                            for i in range(lines)))
    return path


def timed_batch(jobs: Path, out: Path, *args: str) -> float:
    start = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "sdcompose.cli", "batch", str(jobs), "--out", str(out), "-q", *args],
                         capture_output=True, text=True, timeout=1800)
    seconds = time.perf_counter() - start
    if run.returncode != 0:
        raise SystemExit(f"sdcompose batch {' '.join(args)} failed: {run.stderr[-2000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="scale-results")
    parser.add_argument("--lines", type=int, default=16)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=6, help="timed lines for the per-line overhead")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="scale-out-"))
    jobs = jobs_file(scratch, args.lines, args.steps, args.size)
    rows = []

    def case(name: str, *extra: str) -> None:
        seconds = timed_batch(jobs, scratch / f"out-{len(rows)}", *extra)
        rows.append({"case": name, "seconds": round(seconds, 2), "images_per_min": round(args.lines * 60 / seconds, 1)})
        print(f"{name:32} {seconds:8.1f} s  {rows[-1]['images_per_min']:7.1f} images/min", flush=True)

    case("in-process, 1 worker")
    case("in-process, 2 workers", "--workers", "2")
    import ray
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from sdcompose.raycluster import runtime_env
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False, runtime_env=runtime_env())
    try:
        address = ray.get_runtime_context().gcs_address
        case("--ray, 1 actor", "--ray", "--address", address, "--workers", "1")
        case("--ray, 2 actors", "--ray", "--address", address, "--workers", "2")
        overhead = ray_overhead(jobs, args.repeats)
        print(f"Ray per line: {overhead['ray_ms']:.0f} ms vs in-process {overhead['local_ms']:.0f} ms "
              f"(overhead {overhead['overhead_ms']:.0f} ms)", flush=True)
    finally:
        ray.shutdown()
    results = {"lines": args.lines, "steps": args.steps, "size": args.size, "cpus": args.cpus, "cores": os.cpu_count(),
               "rows": rows, "overhead": overhead, "date": time.strftime("%Y-%m-%d")}
    (out / "results.json").write_text(json.dumps(results, indent=1))
    plot(results, out / "plot.png")


def ray_overhead(jobs: Path, repeats: int) -> dict:
    """Median time of one line on a warm worker in this process and on a warm Ray actor (1 thread each)."""
    import statistics

    import ray
    import torch

    from sdcompose.batch.jobs import read_jobs
    from sdcompose.batch.ray_workers import RayWorker
    from sdcompose.batch.worker import Worker
    job = read_jobs(jobs)[0]
    torch.set_num_threads(1)  # the actor has one CPU, so one thread
    local = Worker("local-0")
    actor = RayWorker(ray.remote(num_cpus=1)(Worker).remote("ray-0"), "ray-0")

    def median_ms(worker) -> float:
        worker.render(job)  # warm: the model loads
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            files, reason = worker.render(job)
            times.append(time.perf_counter() - start)
            assert reason is None, reason
        return statistics.median(times) * 1000

    local_ms, ray_ms = median_ms(local), median_ms(actor)
    ray.kill(actor.handle)
    return {"local_ms": round(local_ms, 1), "ray_ms": round(ray_ms, 1), "overhead_ms": round(ray_ms - local_ms, 1)}


def plot(results: dict, target: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = results["rows"]
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(rows) + 1.5))
    ax.barh([r["case"] for r in rows], [r["images_per_min"] for r in rows], color="tab:blue")
    ax.invert_yaxis()
    ax.set_xlabel(f"images per minute (tiny model, {results['size']}x{results['size']}, {results['steps']} steps, "
                  f"{results['lines']} lines, whole command)")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(target, dpi=100)


if __name__ == "__main__":
    main()
