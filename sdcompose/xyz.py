"""X/Y/Z plot, as AUTOMATIC1111's script: one request run over a grid of up to three axes, one job.

Each cell is a full generation (batch 1) with its own metadata, so any cell's PNG makes itself again; each
Z value gets a labelled grid image whose metadata names the axes and the request.

    from sdcompose.xyz import Axis, plot
    made = plot(pipe, GenerationRequest(prompt="a fox", model="sd15", seed=7),
                [Axis.parse("steps", "10, 20, 30"), Axis.parse("guidance", "4, 7.5")])
    made.grids[0].save("grid.png"); made.cells[0].result.save("first.png")
"""
from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass
from itertools import product
from typing import Any, Callable

from PIL import Image, ImageDraw, ImageFont

from sdcompose.errors import ValidationError
from sdcompose.metadata import FORMAT
from sdcompose.request import GenerationRequest, validate

AXES = {"seed": "Seed", "steps": "Steps", "guidance": "CFG scale", "scheduler": "Sampler",
        "lora_weight": "LoRA weight", "control_weight": "ControlNet weight", "prompt_sr": "Prompt S/R"}
KINDS = {"seed": int, "steps": int, "guidance": float, "scheduler": str, "lora_weight": float,
         "control_weight": float, "prompt_sr": str}
NAMES = ("X", "Y", "Z")
MAX_CELLS = 100
MAX_VALUES = 32


@dataclass(frozen=True)
class Axis:
    """One axis: what it varies (a key of ``AXES``) and its values, in order."""

    kind: str
    values: tuple[Any, ...]

    @classmethod
    def parse(cls, kind: str, text: str | list | tuple) -> "Axis":
        """Values written as A1111 does: separated by commas (``10, 20, 30``; ``Euler, DPM++ 2M``). For Prompt
        S/R the first is the text searched in the prompt and each value replaces it (the first: unchanged)."""
        if kind not in AXES:
            raise ValidationError(f"an X/Y/Z axis is one of {', '.join(AXES)}, got {str(kind)[:40]!r}")
        items = [v.strip() for v in text.split(",")] if isinstance(text, str) else list(text)
        items = [v for v in items if v != ""]
        if not items:
            raise ValidationError(f"the {AXES[kind]} axis has no values: write them separated by commas")
        if len(items) > MAX_VALUES:
            raise ValidationError(f"the {AXES[kind]} axis has {len(items)} values; at most {MAX_VALUES}")
        convert = KINDS[kind]
        values = []
        for item in items:
            try:
                values.append(convert(item) if convert is str else _number(convert, item))
            except (TypeError, ValueError, OverflowError):
                what = "whole numbers" if convert is int else "numbers"
                raise ValidationError(f"the {AXES[kind]} axis takes {what}, got {str(item)[:40]!r}") from None
        return cls(kind, tuple(values))

    def label(self, value: Any) -> str:
        return f"{AXES[self.kind]}: {value:g}" if isinstance(value, float) else f"{AXES[self.kind]}: {value}"

    def apply(self, request: GenerationRequest, value: Any) -> GenerationRequest:
        """``request`` with this axis at ``value``."""
        if self.kind in ("seed", "steps", "guidance", "scheduler"):
            return request.with_(**{self.kind: value})
        if self.kind == "prompt_sr":
            return request.with_(prompt=request.prompt.replace(str(self.values[0]), str(value)),
                                 negative_prompt=request.negative_prompt.replace(str(self.values[0]), str(value)))
        parts = request.loras if self.kind == "lora_weight" else request.controls
        if not parts:
            what = "LoRA" if self.kind == "lora_weight" else "ControlNet unit"
            raise ValidationError(f"the {AXES[self.kind]} axis needs a {what} in the request")
        first = parts[0].with_(weight=value)
        return request.with_(**{"loras" if self.kind == "lora_weight" else "controls": [first, *parts[1:]]})


@dataclass
class Cell:
    index: tuple[int, int, int]  # x, y, z
    request: GenerationRequest
    result: Any = None  # the cell's sdcompose.Result


@dataclass
class Plot:
    axes: list[Axis]
    cells: list[Cell]  # x fastest, then y, then z
    grids: list[Image.Image]  # one per Z value
    grid_metadata: list[dict[str, Any]]


def cells(request: GenerationRequest, axes: list[Axis]) -> list[Cell]:
    """Every cell's request, each checked before anything runs (a bad value fails the plot at once)."""
    if not 1 <= len(axes) <= 3:
        raise ValidationError(f"an X/Y/Z plot has 1 to 3 axes, got {len(axes)}")
    kinds = [a.kind for a in axes]
    if len(set(kinds)) != len(kinds):
        raise ValidationError("two X/Y/Z axes vary the same thing; give each axis its own")
    for axis in axes:
        if axis.kind == "prompt_sr" and str(axis.values[0]) not in request.prompt + request.negative_prompt:
            raise ValidationError(f"Prompt S/R: {str(axis.values[0])[:60]!r} is not in the prompt (the first value "
                                  "is the text replaced)")
    sizes = [len(a.values) for a in axes] + [1] * (3 - len(axes))
    if sizes[0] * sizes[1] * sizes[2] > MAX_CELLS:
        raise ValidationError(f"the plot has {sizes[0] * sizes[1] * sizes[2]} cells; at most {MAX_CELLS}")
    base = request.with_(batch=1, seed=request.seed if request.seed is not None else secrets.randbelow(2**32))
    out = []
    for z, y, x in product(*(range(n) for n in reversed(sizes))):
        cell = base
        for axis, i in zip(axes, (x, y, z)):
            try:
                cell = axis.apply(cell, axis.values[i])
                cell = validate(cell)
            except ValidationError as exc:
                raise ValidationError(f"{NAMES[axes.index(axis)]} axis ({AXES[axis.kind]}) value "
                                      f"{axis.values[i]!r}: {exc}") from None
        out.append(Cell((x, y, z), cell))
    return out


def plot(pipe: Any, request: GenerationRequest, axes: list[Axis], progress: Callable[[int, int], None] | None = None,
         cancel: threading.Event | None = None, done: Callable[[Cell], None] | None = None) -> Plot:
    """Run every cell through ``pipe.run`` (one job: ``progress(step, total)`` counts the steps of all cells;
    ``cancel`` stops at the end of a step; ``done(cell)`` after each cell), then draw the grids."""
    grid = cells(request, axes)
    total = sum(c.request.steps for c in grid)
    offset = 0
    for cell in grid:
        report = None if progress is None else (lambda step, _n, base=offset: progress(base + step, total))
        cell.result = pipe.run(cell.request, progress=report, cancel=cancel)
        offset += cell.request.steps
        if done is not None:
            done(cell)
    sizes = [len(a.values) for a in axes] + [1] * (3 - len(axes))
    grids, metas = [], []
    for z in range(sizes[2]):
        layer = [c for c in grid if c.index[2] == z]
        rows = [[c.result.images[0] for c in layer if c.index[1] == y] for y in range(sizes[1])]
        x_labels = [axes[0].label(v) for v in axes[0].values]
        y_labels = [axes[1].label(v) for v in axes[1].values] if len(axes) > 1 else [""]
        title = axes[2].label(axes[2].values[z]) if len(axes) > 2 else ""
        grids.append(draw_grid(rows, x_labels, y_labels, title))
        metas.append({"format": FORMAT, "xyz": {
            "axes": [{"kind": a.kind, "name": NAMES[i], "values": list(a.values)} for i, a in enumerate(axes)],
            "z": z, "cells": [{"index": list(c.index), "seed": c.request.seed} for c in layer],
            "request": request.summary()}})  # not at the top: a grid is not one generation to restore
    return Plot(axes, grid, grids, metas)


def draw_grid(rows: list[list[Image.Image]], x_labels: list[str], y_labels: list[str], title: str = "") -> Image.Image:
    """The cells in rows, X labels above the columns, Y labels left of the rows, a title above (the Z value)."""
    width, height = rows[0][0].size
    font = ImageFont.load_default(size=max(12, min(32, width // 12)))
    line = font.getbbox("Ay")[3] + 8
    left = 0 if not any(y_labels) else max(font.getlength(t) for t in y_labels) + 16
    top = line * (2 if title else 1)
    canvas = Image.new("RGB", (int(left) + width * len(rows[0]), top + height * len(rows)), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((canvas.width / 2, line / 2), title, fill="black", font=font, anchor="mm")
    for i, text in enumerate(x_labels):
        draw.text((left + width * i + width / 2, top - line / 2), text, fill="black", font=font, anchor="mm")
    for j, (row, text) in enumerate(zip(rows, y_labels)):
        draw.text((left / 2, top + height * j + height / 2), text, fill="black", font=font, anchor="mm")
        for i, image in enumerate(row):
            canvas.paste(image.convert("RGB"), (int(left) + width * i, top + height * j))
    return canvas


def _number(convert: type, text: Any) -> Any:
    value = float(text)
    if convert is int:
        if value != int(value):
            raise ValueError(text)
        return int(value)
    return value
