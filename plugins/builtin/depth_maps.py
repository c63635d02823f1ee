"""Depth-map files from other tools: colour-mapped images told apart, values normalised robustly.

``colormap(rgb)`` names the colour map (inferno, magma, plasma, viridis, turbo, jet, Spectral) an image
was drawn with, if its pixels lie on one: such a picture (Depth Anything's and most viewers' default output)
is not depth the ControlNet can read. ``to_unit(depth, ...)`` turns raw depth values into [0, 1], near =
bright: zeros marked invalid and NaN are left out of the range (and drawn black, as "far"), metric depth
can be taken as 1/depth (``inverse``), and in a far = bright map a cluster of values 1000 times beyond
the rest (a renderer's 1e10 or infinite background) is clamped to the rest's far end instead of
swallowing the range.
"""
from __future__ import annotations

import numpy as np

from sdcompose.plugins.api import PluginError

GAP = 3.0  # orders of magnitude between the scene and a background cluster
# matplotlib's Spectral (ColorBrewer, 11 stops, interpolated linearly as matplotlib does)
SPECTRAL = ["9e0142", "d53e4f", "f46d43", "fdae61", "fee08b", "ffffbf", "e6f598", "abdda4", "66c2a5", "3288bd", "5e4fa2"]
SAMPLE = 8192  # pixels compared
NEAR = 12.0  # colour distance (0-255 units) within which a pixel lies on a map
SHARE = 0.95  # of the pixels that must lie on it
SPAN = 64  # map positions the pixels must spread over (a photo of one hue is not a depth map)


def _maps() -> dict[str, np.ndarray]:
    import cv2
    ramp = np.arange(256, dtype=np.uint8)[:, None]
    out = {name.lower(): cv2.applyColorMap(ramp, getattr(cv2, f"COLORMAP_{name}"))[:, 0, ::-1].astype(np.float32)
           for name in ("INFERNO", "MAGMA", "PLASMA", "VIRIDIS", "TURBO", "JET")}
    stops = np.array([[int(h[i:i + 2], 16) for i in (0, 2, 4)] for h in SPECTRAL], dtype=np.float32)
    x = np.linspace(0, len(stops) - 1, 256)
    out["Spectral"] = np.stack([np.interp(x, np.arange(len(stops)), stops[:, c]) for c in range(3)], axis=1)
    return out


def colormap(rgb: np.ndarray) -> str | None:
    """The colour map ``rgb`` (H x W x 3, uint8) was drawn with, or None for a photo or a grey image."""
    pixels = rgb.reshape(-1, 3).astype(np.float32)
    if len(pixels) > SAMPLE:
        pixels = pixels[:: len(pixels) // SAMPLE + 1]
    if np.abs(pixels - pixels.mean(axis=1, keepdims=True)).max() < NEAR:  # grey: read as depth values
        return None
    for name, lut in _maps().items():
        distance = (pixels ** 2).sum(1)[:, None] - 2 * pixels @ lut.T + (lut ** 2).sum(1)[None, :]
        nearest = distance.argmin(axis=1)
        close = distance[np.arange(len(pixels)), nearest] <= NEAR ** 2
        if close.mean() >= SHARE and np.percentile(nearest[close], 95) - np.percentile(nearest[close], 5) >= SPAN:
            return name
    return None


def to_unit(depth: np.ndarray, zero_invalid: bool, inverse: bool, invert: bool, normalize: bool) -> np.ndarray:
    """Depth values -> [0, 1], near = bright, invalid pixels 0 (see the module's docstring)."""
    if np.isneginf(depth).any():
        raise PluginError("the depth map holds minus-infinite values; write invalid pixels as 0 or NaN")
    invalid = np.isnan(depth) | ((depth == 0) if zero_invalid else False)
    valid = depth[~invalid]
    if valid.size == 0:
        raise PluginError("the depth map has no valid values (all 0 or NaN); is it the right file?")
    if inverse and valid.min() <= 0:
        raise PluginError("inverse (1/depth, for metric depth) needs positive values; this map has values <= 0 "
                          "that are not marked invalid (zeros=invalid marks zeros)")
    # far = bright: a background far beyond the scene is clamped to the scene's far end (+inf always is)
    depth = np.minimum(depth, _scene_far(valid, gap=inverse or invert))
    depth = np.where(invalid, 1.0 if inverse else 0.0, depth)
    if inverse:
        depth = 1.0 / depth
    if normalize:
        low, high = float(depth[~invalid].min()), float(depth[~invalid].max())
        depth = (depth - low) / (high - low) if high > low else np.zeros_like(depth)
    if invert:
        depth = 1.0 - depth
    return np.where(invalid, 0.0, np.clip(depth, 0.0, 1.0))


def _scene_far(values: np.ndarray, gap: bool) -> float:
    """The largest value below a gap of GAP orders of magnitude (``gap``), or the largest finite value."""
    finite = np.unique(values[np.isfinite(values)])
    if finite.size == 0:
        raise PluginError("the depth map holds only infinite values")
    if not gap or finite[0] <= 0 or finite.size < 2:
        return float(finite[-1])
    gaps = np.diff(np.log10(finite))
    i = int(np.argmax(gaps))
    return float(finite[i]) if gaps[i] >= GAP else float(finite[-1])
