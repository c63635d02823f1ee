"""Enlarging an image through an upscaler plugin's network, tile by tile, so memory stays bounded at any size.

Each tile is run with ``overlap`` pixels of context on every side and only its centre is kept, so tiles
meet without seams. When the requested scale is not the network's own, the network runs as many
passes as needed to reach at least that scale and the result is resized (Lanczos) to the exact size,
as A1111 does.
"""
from __future__ import annotations

import math
import threading
from typing import Any

import numpy as np
from PIL import Image

from sdcompose.errors import Cancelled, ValidationError
from sdcompose.plugins.api import PluginContext
from sdcompose.request import LIMITS

PLUGIN = "spandrel"  # the upscaler plugin that loads models.yaml upscaler entries
TILE, OVERLAP = 256, 16
SCALES = (1.0, 8.0)
WORK_PIXELS = 4 * LIMITS["pixels"]  # the largest intermediate a multi-pass upscale may hold


def target_size(size: tuple[int, int], scale: Any) -> tuple[int, int]:
    """The output size for ``scale``; ValidationError if the scale or the result is out of bounds."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) \
            or not SCALES[0] <= scale <= SCALES[1]:
        raise ValidationError(f"scale must be a number from {SCALES[0]:g} to {SCALES[1]:g}, got {scale!r}")
    width, height = (max(1, round(side * scale)) for side in size)
    low, high = LIMITS["size"]
    if max(width, height) > high or width * height > LIMITS["pixels"]:
        raise ValidationError(f"{size[0]}x{size[1]} at scale {scale:g} would be {width}x{height}, more than the "
                              f"limit ({high} a side, {LIMITS['pixels']} pixels): lower the scale")
    return width, height


def passes(size: tuple[int, int], scale: float, native: int) -> int:
    """How many runs of a ``native``-scale network reach ``scale``; refused if an intermediate gets too large."""
    count = max(1, math.ceil(math.log(scale, native) - 1e-9)) if scale > 1 else 0
    pixels = size[0] * size[1] * native ** (2 * count)
    if pixels > WORK_PIXELS:
        raise ValidationError(f"a {native}x network needs {count} pass(es) for scale {scale:g}, and the last would "
                              f"hold {pixels} pixels (limit {WORK_PIXELS}): lower the scale or use a smaller image")
    return count


def run_tiled(net: Any, image: Image.Image, device: str, tile: int = TILE, overlap: int = OVERLAP,
              cancel: threading.Event | None = None) -> Image.Image:
    """One pass of ``net`` over ``image`` in tiles of ``tile`` pixels (plus ``overlap`` of context)."""
    import torch
    if not 32 <= tile <= 2048 or not 0 <= overlap <= tile // 2:
        raise ValidationError(f"tile must be 32-2048 pixels and overlap 0 to half a tile, got {tile} and {overlap}")
    source = np.asarray(image.convert("RGB"))
    height, width = source.shape[:2]
    scale = net.scale
    out = np.empty((height * scale, width * scale, 3), np.uint8)
    with torch.inference_mode():
        for top in range(0, height, tile):
            for left in range(0, width, tile):
                if cancel is not None and cancel.is_set():
                    raise Cancelled("upscale cancelled")
                y0, x0 = max(0, top - overlap), max(0, left - overlap)
                y1, x1 = min(height, top + tile + overlap), min(width, left + tile + overlap)
                patch = torch.from_numpy(source[y0:y1, x0:x1].copy()).to(device)
                patch = patch.permute(2, 0, 1)[None].float() / 255
                result = net(patch)[0].permute(1, 2, 0).mul(255).round().to(torch.uint8).cpu().numpy()
                bottom, right = min(height, top + tile), min(width, left + tile)
                crop = result[(top - y0) * scale:(bottom - y0) * scale, (left - x0) * scale:(right - x0) * scale]
                out[top * scale:bottom * scale, left * scale:right * scale] = crop
    return Image.fromarray(out)


def upscale(net: Any, image: Image.Image, scale: float, device: str, tile: int = TILE,
            cancel: threading.Event | None = None) -> tuple[Image.Image, dict[str, Any]]:
    """``image`` enlarged ``scale`` times through ``net``; returns the image and what was done, for the metadata."""
    size = target_size(image.size, scale)
    count = passes(image.size, scale, net.scale)
    for _ in range(count):
        image = run_tiled(net, image, device, tile, cancel=cancel)
    resized = image.size != size
    if resized:
        image = image.resize(size, Image.LANCZOS)
    return image, {"scale": scale, "native_scale": net.scale, "passes": count, "tile": tile, "overlap": OVERLAP,
                   "resized": resized, "size": list(size)}


def load(registry: Any, loader: Any, entry: Any, device: str, dtype: Any) -> Any:
    """The network of the models.yaml upscaler ``entry``, loaded by the upscaler plugin on ``device``."""
    plugin = registry.get(PLUGIN, "upscaler")
    path = loader.verified_path(entry)
    from sdcompose.plugins.contain import plugin_code
    with plugin_code(f"upscaler plugin {plugin.id!r} could not load {entry.id!r}"):  # fails this request only
        return plugin.load(path, PluginContext(device=device, dtype=dtype))
