"""Step time with guidance 1 (no classifier-free-guidance batch) against 7.5, full-size SD1.5 parts, random weights.

    python benchmarks/guidance.py [--device cpu] [--size 256] [--steps 4] [--rounds 3] [--threads 1] [--out DIR]

Builds the parts once under SDCOMPOSE_HOME (benchmarks/parts.py), then times sdcompose's own call for
txt2img and for txt2img + one ControlNet, the two guidance values taking turns round by round (so a
change in the machine's load falls on both). Each step is timed twice: wall-clock and, on CPU, the
calling thread's CPU time (torch runs on that one thread with --threads 1), which a busy shared CPU
does not inflate. Prints a markdown table of medians and ratios. A step's cost does not depend on the
weights' values, so random weights give the real figure.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import measure  # noqa: E402
import parts  # noqa: E402
import sdcompose  # noqa: E402
from sdcompose.pipelines.catalog import home  # noqa: E402

GUIDANCE = (7.5, 1.0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = torch.float16 if args.device.startswith("cuda") else torch.float32
    entries = parts.build(home() / "models", "sd15", "cpu", dtype, controlnets=1)
    overlay = parts.overlay(Path(tempfile.mkdtemp()) / "models.yaml", entries)
    pipe = sdcompose.Pipeline(models=overlay, device=args.device, dtype=dtype)
    hint = torch.zeros(args.size, args.size, 3, dtype=torch.uint8).numpy()
    hint[args.size // 4:3 * args.size // 4, args.size // 4:3 * args.size // 4] = 255
    rows = []
    for case, controls in (("txt2img", []), ("+ 1 ControlNet", [sdcompose.Control(
            "canny", hint, model="bench-sd15-cn0", preprocessed=True)])):
        def call(guidance: float, tick=None, controls=controls) -> None:
            pipe.generate("a lighthouse", model="bench-sd15", controls=controls, width=args.size,
                          height=args.size, steps=args.steps, guidance=guidance, seed=1, memory="none",
                          progress=(lambda step, total: tick()) if tick else None)
        call(7.5)  # warm-up: loading, placing, first-use allocations
        steps: dict[float, dict[str, list[float]]] = {g: {"wall": [], "cpu": []} for g in GUIDANCE}
        for _ in range(args.rounds):
            for guidance in GUIDANCE:
                wall, cpu = [], []

                def tick() -> None:
                    measure.sync(args.device)
                    wall.append(time.perf_counter())
                    cpu.append(time.thread_time())
                call(guidance, tick)
                for key, stamps in (("wall", wall), ("cpu", cpu)):
                    steps[guidance][key] += [b - a for a, b in zip(stamps, stamps[1:])]
        row = {"case": case}
        for guidance in GUIDANCE:
            for key in ("wall", "cpu"):
                row[f"{key} {guidance}"] = round(1000 * statistics.median(steps[guidance][key]), 1)
        row["wall ratio"] = measure.ratio(row["wall 1.0"], row["wall 7.5"])
        row["cpu ratio"] = measure.ratio(row["cpu 1.0"], row["cpu 7.5"])
        rows.append(row)
        print(f"{case}: {row}", file=sys.stderr)
    lines = [f"| case ({args.size}x{args.size}, {args.steps} steps x {args.rounds} rounds, {args.device}, "
             f"{torch.get_num_threads()} thread(s)) | wall ms/step 7.5 | wall ms/step 1 | wall ratio "
             "| CPU ms/step 7.5 | CPU ms/step 1 | CPU ratio |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['case']} | {r['wall 7.5']} | {r['wall 1.0']} | {r['wall ratio']} | {r['cpu 7.5']} | "
              f"{r['cpu 1.0']} | {r['cpu ratio']} |" for r in rows]
    print("\n".join(lines))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "guidance.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
