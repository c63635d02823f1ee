"""A1111's Extras tab over HTTP (``/sdapi/v1/extra-single-image``): one image enlarged by an upscaler.

``upscaler_1`` is an A1111 upscaler name or a models.yaml upscaler id (``server.a1111_names.hr_upscaler``); the
model runs tile by tile through ``Pipeline.upscale`` and the answer is a PNG with sdcompose's upscale metadata.
"None"/"Lanczos" is a plain Lanczos resize. Face restoration and a second upscaler are refused, not dropped.
"""
from __future__ import annotations

import io
import math
from typing import Any

from PIL import Image

from sdcompose.errors import SdcomposeError
from sdcompose.images import load_rgb
from sdcompose.pipelines import upscale
from sdcompose.request import LANCZOS

from . import a1111_names as names
from .answers import result_pngs
from .inputs import FieldError, image_bytes

# accepted only at these values (A1111's defaults, and what webuiapi sends)
AT_DEFAULT = {"resize_mode": (0,), "gfpgan_visibility": (0,), "codeformer_visibility": (0,),
              "extras_upscaler_2_visibility": (0,), "upscaler_2": ("None", None, "")}
NO_EFFECT = {"show_extras_results", "codeformer_weight", "upscaling_resize_w", "upscaling_resize_h",
             "upscaling_crop", "upscale_first"}  # the last four only matter with resize_mode 1


def extras_plan(payload: Any, catalog: Any) -> tuple[Image.Image, str, float]:
    """(image, sdcompose upscaler, scale) of an extra-single-image payload; FieldError naming a bad field. The
    image is decoded here, under the image limits, before the job is queued."""
    if not isinstance(payload, dict):
        raise FieldError("body", "the body must be a JSON object")
    for key, value in payload.items():
        if key in AT_DEFAULT:
            if isinstance(value, bool) or value not in AT_DEFAULT[key]:
                raise FieldError(key, f"{key}={str(value)[:60]} is not supported (sdcompose's extras only upscale); "
                                      f"leave it at {AT_DEFAULT[key][0]!r}")
        elif key not in NO_EFFECT | {"image", "upscaler_1", "upscaling_resize"}:
            raise FieldError(key, f"unknown field {key!r} for extra-single-image")
    scale = payload.get("upscaling_resize", 2)
    low, high = upscale.SCALES
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) \
            or not low <= scale <= high:
        raise FieldError("upscaling_resize", f"upscaling_resize must be a number from {low:g} to {high:g}, "
                                             f"got {str(scale)[:60]!r}")
    model = names.hr_upscaler(payload.get("upscaler_1", "None"), catalog, "upscaler_1")
    try:
        image = load_rgb(image_bytes(payload.get("image"), "image"), "image")
    except SdcomposeError as exc:
        raise FieldError("image", str(exc)) from None
    try:
        upscale.target_size(image.size, scale)  # a result over the size limits is refused before anything loads
    except SdcomposeError as exc:
        raise FieldError("upscaling_resize", f"upscaling_resize: {exc}") from None
    return image, model, float(scale)


def upscaled_png(pipeline: Any, image: Image.Image, model: str, scale: float, cancel: Any) -> bytes:
    """The PNG bytes of ``source`` enlarged ``scale`` times by ``model`` (or Lanczos)."""
    if model != LANCZOS:
        return result_pngs(pipeline.upscale(image, model=model, scale=scale, cancel=cancel))[0]
    size = upscale.target_size(image.size, scale)
    buf = io.BytesIO()
    image.resize(size, Image.LANCZOS).save(buf, format="PNG")
    return buf.getvalue()
