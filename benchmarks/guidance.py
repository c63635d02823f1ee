"""Step time with guidance 1 (no classifier-free-guidance batch) against 7.5, full-size SD1.5 parts, random weights.

    python benchmarks/guidance.py [--device cpu] [--size 256] [--steps 4] [--runs 2] [--out DIR]

Builds the parts once under SDCOMPOSE_HOME (benchmarks/parts.py), then times sdcompose's own call for
txt2img and for txt2img + one ControlNet at each guidance, and prints a markdown table with the ratio.
A step's cost does not depend on the weights' values, so random weights give the real figure.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import measure  # noqa: E402
import parts  # noqa: E402
import sdcompose  # noqa: E402
from sdcompose.pipelines.catalog import home  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    dtype = torch.float16 if args.device.startswith("cuda") else torch.float32
    entries = parts.build(home() / "models", "sd15", "cpu", dtype, controlnets=1)
    overlay = parts.overlay(Path(tempfile.mkdtemp()) / "models.yaml", entries)
    pipe = sdcompose.Pipeline(models=overlay, device=args.device, dtype=dtype)
    hint = torch.zeros(args.size, args.size, 3, dtype=torch.uint8).numpy()
    hint[args.size // 4:3 * args.size // 4, args.size // 4:3 * args.size // 4] = 255
    rows = []
    for case, controls in (("txt2img", []), ("+ 1 ControlNet", [sdcompose.Control(
            "canny", hint, model="bench-sd15-cn0", preprocessed=True)])):
        row = {"case": case}
        for guidance in (7.5, 1.0):
            def call(tick, guidance=guidance, controls=controls):
                return pipe.generate("a lighthouse", model="bench-sd15", controls=controls, width=args.size,
                                     height=args.size, steps=args.steps, guidance=guidance, seed=1, memory="none",
                                     progress=(lambda step, total: tick()) if tick else None).metadata["memory_plan"]
            timing = measure.timed(call, args.runs, args.device)
            row[str(guidance)] = timing["ms_per_step"]
        row["ratio"] = measure.ratio(row["1.0"], row["7.5"])
        rows.append(row)
        print(f"{case}: {row}", file=sys.stderr)
    lines = [f"| case ({args.size}x{args.size}, {args.steps} steps, {args.device}) | ms/step guidance 7.5 | "
             "ms/step guidance 1 | ratio |", "|---|---|---|---|"]
    lines += [f"| {r['case']} | {r['7.5']} | {r['1.0']} | {r['ratio']} |" for r in rows]
    print("\n".join(lines))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "guidance.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
