"""Depth: a depth map estimated from a photo (Depth Anything V2 Small via transformers), or read from a depth-map file.

Output convention, as the depth ControlNets were trained on: near = bright, far = dark, 8-bit.
A depth-map input (8- or 16-bit greyscale or a float TIFF, e.g. a render's depth pass) is stretched to the
full range (robustly: ``depth_maps.to_unit``), and inverted when its convention is far = bright (``invert``)
or taken as 1/depth when it is metric (``inverse``). A colour-mapped picture of depth is refused.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from sdcompose.plugins.api import Conditioner, ParamSpec, PluginError, first_line

from .annotators import NetCache, detect_size
from .depth_maps import colormap, to_unit

ESTIMATOR = "annotator-depth-anything-v2-small"
DEEP_MODES = ("I;16", "I;16B", "I;16L", "I", "F")  # 16-bit, 32-bit and float images


class Depth(Conditioner):
    id = "depth"
    api_version = "2.0"
    version = "1.0"
    help = ("Depth map, near = bright: estimated from a photo with Depth Anything V2 Small, or read from an "
            "8/16-bit depth-map image (greyscale inputs are taken as depth maps unless input=photo).")
    families = frozenset({"sd15", "sdxl"})
    annotators = (ESTIMATOR,)
    params = (
        ParamSpec("input", "choice", "auto", choices=("auto", "photo", "depth_map"),
                  help="auto: greyscale or 16-bit images are depth maps, colour images are photos."),
        ParamSpec("invert", "bool", False, help="Flip near and far (for depth maps where far is bright)."),
        ParamSpec("inverse", "bool", False,
                  help="Metric depth (bigger = farther, e.g. metres): use 1/depth, the relative inverse depth the "
                       "ControlNets were trained on."),
        ParamSpec("zeros", "choice", "auto", choices=("auto", "invalid", "depth"),
                  help="auto: zeros in 16-bit and float maps mark pixels with no reading (left out of the range, "
                       "drawn black); in 8-bit maps they are depth."),
        ParamSpec("normalize", "bool", True,
                  help="Stretch a depth map's values to the full 0-255 range (else keep them, scaled by bit depth)."),
        ParamSpec("detect_resolution", "int", 518, min=56, max=2044, step=14,
                  help="Short side of the photo as the estimator sees it (a multiple of 14)."),
    )

    def __init__(self) -> None:
        self._nets = NetCache(size=1)

    def preprocess(self, source, ctx, params):
        mode = params["input"]
        if mode != "photo":
            _refuse_colour_maps(source, mode)
        if mode == "auto":
            mode = "depth_map" if _is_greyscale(source) else "photo"
        if mode == "photo":
            depth = self._estimate(source.image, ctx, params["detect_resolution"])
            low, high = float(depth.min()), float(depth.max())
            depth = (depth - low) / (high - low) if high > low else np.zeros_like(depth)
            depth = 1.0 - depth if params["invert"] else depth
        else:
            deep = source.raw.mode in DEEP_MODES
            zero_invalid = params["zeros"] == "invalid" or (params["zeros"] == "auto" and deep)
            depth = to_unit(_read_depth(source.raw, source.image), zero_invalid, params["inverse"], params["invert"],
                            params["normalize"])
        return Image.fromarray((np.clip(depth, 0.0, 1.0) * 255.0).round().astype(np.uint8)).convert("RGB")

    def _estimate(self, image: Image.Image, ctx: Any, resolution: int) -> np.ndarray:
        """Relative inverse depth (bigger = nearer) at the detector's working size."""
        import torch
        folder = ctx.weight(ESTIMATOR)
        model, processor = self._nets.get(folder / "model.safetensors", ctx.device,
                                          lambda: _load_estimator(folder, ctx.device))
        size = detect_size(image.size, resolution)
        side = {"height": max(14, round(size[1] / 14) * 14), "width": max(14, round(size[0] / 14) * 14)}
        inputs = processor(images=image, size=side, keep_aspect_ratio=False, return_tensors="pt")
        with torch.no_grad():
            predicted = model(pixel_values=inputs["pixel_values"].to(ctx.device)).predicted_depth
            predicted = torch.nn.functional.interpolate(predicted[:, None].float(), size=(size[1], size[0]),
                                                        mode="bicubic", align_corners=False)
        return predicted[0, 0].cpu().numpy().astype(np.float64)


def _load_estimator(folder, device: str):
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation
    if not (folder / "config.json").is_file():
        raise PluginError(f"depth estimator folder {folder} has no config.json; download the whole model folder")
    try:
        model = AutoModelForDepthEstimation.from_pretrained(folder, local_files_only=True, use_safetensors=True,
                                                            trust_remote_code=False)  # never a folder's own code
        processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as exc:
        raise PluginError(f"depth estimator in {folder} did not load ({first_line(exc, 160)}); "
                          "download it again") from None
    return model.float().eval().requires_grad_(False).to(device), processor


def _is_greyscale(source) -> bool:
    if source.raw.mode in DEEP_MODES + ("L", "LA", "1"):
        return True
    array = np.asarray(source.image)
    return bool((array[..., 0] == array[..., 1]).all() and (array[..., 1] == array[..., 2]).all())


def _refuse_colour_maps(source, mode: str) -> None:
    if source.raw.mode in DEEP_MODES or _is_greyscale(source):
        return
    name = colormap(np.asarray(source.image))
    if name is not None:
        raise PluginError(f"this looks like a colour-mapped picture of depth ({name} colours), not a depth map: save the "
                          "depth as a greyscale or 16-bit image (Depth Anything: --grayscale), or pass input=photo to "
                          "estimate depth from it as a photo")


def _read_depth(raw: Image.Image, rgb: Image.Image) -> np.ndarray:
    """Depth values at full precision: 16-bit over 65535, float taken as is (NaN and inf kept), 8-bit over 255."""
    if raw.mode in DEEP_MODES:
        array = np.asarray(raw, dtype=np.float64)
        if raw.mode == "F":
            return array
        return array / (65535.0 if raw.mode.startswith("I;16") or array.max(initial=0) > 255 else 255.0)
    return np.asarray(rgb.convert("L"), dtype=np.float64) / 255.0
