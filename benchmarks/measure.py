"""Timing and peak memory of one call, the way ``../shared/bench/diffusers_baseline.py`` measures them.

Step time: the denoising loop only, from a timestamp taken (after a device sync) at the end of each
step, (last - first) / (steps - 1); call time: the whole call. Medians over the timed runs, after one
untimed warm-up call. Peak: ``torch.cuda.max_memory_allocated`` since the warm-up (0 on CPU).
"""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import torch


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(call: Callable[[Callable[[], None] | None], Any], runs: int, device: str) -> dict[str, Any]:
    """``call(tick)`` runs once; ``tick()`` marks the end of a denoising step."""
    stamps: list[float] = []

    def tick() -> None:
        sync(device)
        stamps.append(time.perf_counter())

    call(None)  # warm-up: loading, placing, compiling, first-use allocations
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    totals, steps, last = [], [], None
    for _ in range(runs):
        stamps.clear()
        sync(device)
        start = time.perf_counter()
        last = call(tick)
        sync(device)
        totals.append(time.perf_counter() - start)
        if len(stamps) > 2:
            steps.append((stamps[-1] - stamps[0]) / (len(stamps) - 1))
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else 0.0
    return {"s_per_call": round(statistics.median(totals), 4),
            "ms_per_step": round(1000 * statistics.median(steps), 2) if steps else None,
            "peak_gb": round(peak, 3), "output": last}


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one line per case, sdcompose next to plain diffusers."""
    head = ("| case | sdcompose s/call | diffusers s/call | ratio | sdcompose ms/step | diffusers ms/step "
            "| sdcompose peak GB | diffusers peak GB | sdcompose plan |")
    lines = [head, "|" + "---|" * 9]
    cell = (lambda v: "-" if v is None else f"{v}")
    for row in rows:
        ours, plain = row.get("sdcompose") or {}, row.get("diffusers") or {}
        lines.append(f"| {row['case']} | {cell(ours.get('s_per_call'))} | {cell(plain.get('s_per_call'))} | "
                     f"{cell(ratio(ours.get('s_per_call'), plain.get('s_per_call')))} | "
                     f"{cell(ours.get('ms_per_step'))} | {cell(plain.get('ms_per_step'))} | "
                     f"{cell(ours.get('peak_gb'))} | {cell(plain.get('peak_gb'))} | {ours.get('plan', '-')} |")
    return "\n".join(lines)
