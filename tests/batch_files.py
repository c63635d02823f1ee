"""Batch files for the batch tests: small requests for the tiny models, written as JSON lines."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def request(i: int, model: str = "tiny-sd15", **kw) -> dict:
    return {"id": f"img-{i:02d}", "prompt": f"a lighthouse number {i}", "model": model, "width": 64, "height": 64,
            "steps": 2, "seed": i} | kw


def write_jobs(path: Path, lines: list) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def pngs(folder: Path) -> dict[str, Path]:
    return {p.name: p for p in folder.glob("*.png")}


def batch(*args, env: dict | None = None) -> subprocess.Popen:
    """``sdcompose batch ARGS`` as a subprocess (its output read with ``communicate``)."""
    return subprocess.Popen([sys.executable, "-m", "sdcompose.cli", "batch", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=(env or os.environ) | {"SDCOMPOSE_DEBUG": ""})
