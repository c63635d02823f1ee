"""Hires fix: one request, two passes over one model cache.

Pass 1 generates at the request's size. Its images are enlarged (``lanczos``, or a models.yaml upscaler
run tile by tile), and pass 2 repaints each one image-to-image at the target size with its own steps and
denoising strength, the same prompt, seed, LoRAs and ControlNet units (their pass-1 maps refitted to the
new size). The metadata records the request once and both passes after it; reproducing it runs the same
two passes and gives the same pixels.
"""
from __future__ import annotations

import threading
from typing import Any, Callable

from PIL import Image

from sdcompose.request import LANCZOS, LIMITS
from sdcompose.result import Result


def target_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """The pass-2 size: the request's scaled and rounded down to the size multiple (as the request checks it)."""
    multiple = LIMITS["size_multiple"]
    return max(multiple, int(width * scale) // multiple * multiple), max(multiple, int(height * scale) // multiple * multiple)


def run(pipe: Any, req: Any, progress: Callable[[int, int], None] | None = None,
        cancel: threading.Event | None = None, preview: Callable[[int, int, Image.Image], None] | None = None) -> Result:
    """Both passes of ``req`` (validated, seeded, with ``hires`` set) through ``pipe``'s public ``run``."""
    hires = req.hires
    if hires.upscaler != LANCZOS:
        pipe.catalog.get(hires.upscaler, "upscaler")  # an unknown upscaler is refused before pass 1
    width, height = target_size(req.width, req.height, hires.scale)
    steps = hires.steps or req.steps
    total = req.steps + steps * req.batch

    def counted(offset: int) -> Callable[[int, int], None] | None:
        return None if progress is None else (lambda step, _total: progress(offset + step, total))

    first = pipe.run(req.with_(hires=None), progress=counted(0), cancel=cancel, preview=preview)
    images, arrays, per_image, second = [], [], [], None
    for i, image in enumerate(first.images):
        big, upscaled_with = _enlarge(pipe, image, hires.upscaler, width, height, cancel)
        controls = [c.with_(image=first.inputs[f"control-{k}"], preprocessed=True) for k, c in enumerate(req.controls)]
        refs = [a.with_(image=[first.inputs[f"ip-adapter-{k}-{j}"] for j in range(len(a.images()))])
                for k, a in enumerate(req.ip_adapters)]  # decoded once, in pass 1
        uses = [a.with_(image=[first.inputs[f"adapter-{k}-{j}"] for j in range(len(a.images()))] or None)
                for k, a in enumerate(req.adapters)]
        second = pipe.run(req.with_(hires=None, init_image=big, strength=hires.denoise, width=width, height=height,
                                    steps=steps, seed=req.seed + i, batch=1, controls=controls, ip_adapters=refs,
                                    adapters=uses),
                          progress=counted(req.steps + i * steps), cancel=cancel)
        images += second.images
        arrays += second.arrays
        per_image.append(_record(req, first.per_image[i], second.per_image[0], hires, upscaled_with))
    shared = {k: v for k, v in per_image[0].items() if k not in ("seed", "image_index")}
    shared["seeds"] = first.metadata["seeds"]
    inputs = {k: v for k, v in first.inputs.items() if k.startswith(("control-", "ip-adapter-", "adapter-"))}
    return Result(images=images, metadata=shared, per_image=per_image, arrays=arrays, inputs=inputs)


def _enlarge(pipe: Any, image: Image.Image, upscaler: str, width: int, height: int,
             cancel: threading.Event | None) -> tuple[Image.Image, dict[str, Any]]:
    """The pass-1 image at the pass-2 size, and the models.yaml record of the upscaler used (none for lanczos)."""
    if upscaler == LANCZOS:
        return image.resize((width, height), Image.LANCZOS), {}
    done = pipe.upscale(image, model=upscaler, scale=max(width / image.width, height / image.height), cancel=cancel)
    big = done.images[0]
    return (big if big.size == (width, height) else big.resize((width, height), Image.LANCZOS)), done.metadata["models"]


def _record(req: Any, first: dict[str, Any], second: dict[str, Any], hires: Any,
            upscaler_models: dict[str, Any]) -> dict[str, Any]:
    """Pass 2's metadata under the whole request, with each pass's own settings, models and runtime."""
    meta = dict(second)
    meta["request"] = req.summary()
    meta["task"] = "txt2img"
    meta["models"] = {**first["models"], **second["models"], **upscaler_models}
    passes = []
    for number, record in ((1, first), (2, second)):
        asked = record["request"]
        passes.append({"pass": number, "width": asked["width"], "height": asked["height"], "steps": asked["steps"],
                       "strength": None if number == 1 else asked["strength"], "seed": record["seed"],
                       "task": record["task"], "memory_plan": record.get("memory_plan"),
                       "control_maps_sha256": record.get("control_maps_sha256", [])})
    passes[1]["upscaler"] = hires.upscaler
    meta["passes"] = passes
    return meta
