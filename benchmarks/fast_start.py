"""Fast mode in a fresh process: start-up (compile + capture), step rate, and its image against default mode.

Run by run.py twice: first with an empty compile cache (cold, ``--full``: also times plain diffusers
and three fused LoRAs in this process), then again (warm: the cache from the first run). Prints one
JSON line.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

import numpy as np
import torch

import measure
from run import Bench, Case


def main() -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False)
    parser.add_argument("--models", required=True)
    parser.add_argument("--ids", required=True, help="JSON: base, cn, lora ids")
    parser.add_argument("--full", action="store_true")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    start = time.perf_counter()
    dtype = torch.float16 if args.device == "cuda" else torch.float32
    bench = Bench(args.models, json.loads(args.ids), args.device, dtype)
    case = Case("+1 ControlNet, fast mode", size=args.size, steps=args.steps)
    default = bench.generate(case, case.steps)  # loads and places the models; the reference image
    loaded = time.perf_counter()
    first = bench.generate(case, case.steps, fast=True)
    measure.sync(args.device)
    out = {"load_s": round(loaded - start, 1), "first_fast_image_s": round(time.perf_counter() - loaded, 1),
           "fast_report": first.metadata["fast"],
           "max_abs_diff": round(float(np.abs(np.stack(first.arrays) - np.stack(default.arrays)).max()), 5)}
    if args.full:
        fast = measure.timed(lambda tick: bench.generate(case, case.steps if tick else 2, tick, fast=True), 3,
                             args.device)
        out.update(fast_s_per_call=fast["s_per_call"], fast_ms_per_step=fast["ms_per_step"],
                   fast_peak_gb=fast["peak_gb"])
        plain = bench.plain(replace(case, name="+1 ControlNet"))
        out.update(plain_s_per_call=plain["s_per_call"], plain_ms_per_step=plain["ms_per_step"])
        loras = replace(case, name="+1 ControlNet + 3 LoRAs, fast mode", loras=3)
        fused = measure.timed(lambda tick: bench.generate(loras, loras.steps if tick else 2, tick, fast=True), 3,
                              args.device)
        out.update(lora3_fast_ms_per_step=fused["ms_per_step"], lora3_fast_report=fused["output"].metadata["fast"])
    print(json.dumps(out, default=str), flush=True)


if __name__ == "__main__":
    main()
