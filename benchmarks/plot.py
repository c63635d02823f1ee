"""Time and peak memory per case, sdcompose next to plain diffusers, from results.json: one PNG.

    python benchmarks/plot.py results.json plot.png
"""
from __future__ import annotations

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(source: str, target: str) -> None:
    results = json.loads(open(source).read())
    rows = [r for r in results["rows"] if "s_per_call" in (r.get("sdcompose") or {})]
    fast = (results.get("fast") or {}).get("cold") or {}
    if fast.get("fast_s_per_call"):
        rows.append({"case": "+1 ControlNet, fast mode", "sdcompose": {"s_per_call": fast["fast_s_per_call"],
                                                                      "peak_gb": fast.get("fast_peak_gb")}})
    names = [r["case"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(14, 0.45 * len(rows) + 1.5), sharey=True)
    for ax, key, label in ((axes[0], "s_per_call", "seconds per call"), (axes[1], "peak_gb", "peak GPU memory (GiB)")):
        for offset, side, color in ((-0.2, "sdcompose", "tab:blue"), (0.2, "diffusers", "tab:gray")):
            values = [((r.get(side) or {}).get(key) or 0) for r in rows]
            ax.barh([i + offset for i in range(len(rows))], values, height=0.4, label=side, color=color)
        ax.set_xlabel(label)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(rows)), names, fontsize=8)
    axes[0].invert_yaxis()
    axes[0].legend()
    fig.suptitle(f"{results['device']}, {results['date']}: SD1.5 parts, 512x512, 20 steps unless noted")
    fig.tight_layout()
    fig.savefig(target, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
