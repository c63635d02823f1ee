"""AUTOMATIC1111 and sd-webui-controlnet names mapped to sdcompose's: samplers, modules, models, modes.

The tables here are the compatibility table of docs/http-api.md.
"""
from __future__ import annotations

import re
from typing import Any

from sdcompose import samplers
from sdcompose.errors import ValidationError, quote, suggest
from sdcompose.infotext import HR_UPSCALERS
from sdcompose.pipelines.resolve import upscaler_by_name

from .inputs import FieldError

# sd-webui-controlnet preprocessor (module) names -> (sdcompose conditioner, its params)
MODULES: dict[str, tuple[str, dict[str, Any]]] = {
    "canny": ("canny", {}),
    "depth": ("depth", {}), "depth_midas": ("depth", {}), "depth_anything": ("depth", {}),
    "depth_anything_v2": ("depth", {}),
    "openpose": ("pose", {}), "openpose_full": ("pose", {"include_hand": True, "include_face": True}),
    "openpose_hand": ("pose", {"include_hand": True}), "openpose_face": ("pose", {"include_face": True}),
    "dw_openpose_full": ("pose", {"include_hand": True, "include_face": True}),
    "softedge_pidinet": ("softedge", {"detector": "pidinet"}), "softedge_hed": ("softedge", {"detector": "hed"}),
    "lineart_realistic": ("lineart", {}), "lineart": ("lineart", {}), "lineart_coarse": ("lineart", {"coarse": True}),
    "tile_resample": ("tile", {}), "shuffle": ("shuffle", {}), "mlsd": ("mlsd", {}), "normal_bae": ("normal", {}),
    "scribble_hed": ("scribble", {"detector": "hed"}), "scribble_pidinet": ("scribble", {"detector": "pidinet"}),
}
NO_PREPROCESSOR = ("none", "None", "")
# sd-webui-controlnet's IP-Adapter modules (its CLIP vision preprocessors): such a unit is an image prompt
# (``ip_adapters``); the encoder is the one the models.yaml IP-Adapter names, whichever of these is sent.
IP_ADAPTER_MODULES = ("ip-adapter_clip_sd15", "ip-adapter_clip_h", "ip-adapter_clip_g", "ip-adapter_clip_sdxl",
                      "ip-adapter_clip_sdxl_plus_vith")
# words in a ControlNet model's name -> the conditioner it was trained for (for module "none")
MODEL_KINDS = (("canny", "canny"), ("depth", "depth"), ("openpose", "pose"), ("pose", "pose"),
               ("softedge", "softedge"), ("hed", "softedge"), ("lineart", "lineart"), ("tile", "tile"),
               ("shuffle", "shuffle"), ("mlsd", "mlsd"), ("normal", "normal"), ("scribble", "scribble"))
RESIZE_MODES = {"Just Resize": "just_resize", "Crop and Resize": "crop_and_resize",
                "Resize and Fill": "resize_and_fill", "Scale to Fit (Inner Fit)": "crop_and_resize",
                "Envelope (Outer Fit)": "resize_and_fill", 0: "just_resize", 1: "crop_and_resize",
                2: "resize_and_fill"}
CONTROL_MODES = {"Balanced": "balanced", "My prompt is more important": "prompt_first",
                 "ControlNet is more important": "control_first", 0: "balanced", 1: "prompt_first",
                 2: "control_first"}


def scheduler_id(sampler: Any, schedule: Any) -> str:
    """sdcompose's sampler id for A1111's sampler name and schedule type ("DPM++ 2M" + "Karras"), through the one
    sampler table (``sdcompose.samplers``); "automatic" (or none) is what A1111 itself picks for that sampler."""
    try:
        samplers.canonical(sampler)
    except ValidationError:
        known = [name for name, *_ in samplers.SAMPLERS.values()]
        raise FieldError("sampler_name", f"sampler_name {quote(sampler)} is not a sampler sdcompose has; it has "
                                         f"{', '.join(known)}{suggest(str(sampler), known)}") from None
    if schedule is not None and not isinstance(schedule, str):
        raise FieldError("scheduler", f"scheduler must be a schedule type such as Automatic or Karras, "
                                      f"got {quote(schedule)}")
    try:
        return samplers.canonical(sampler, schedule or "automatic")
    except ValidationError as exc:
        raise FieldError("scheduler", f"scheduler: {exc}") from None


def schedule_types() -> list[tuple[str, str]]:
    """A1111's schedule types sdcompose has, as (name, label): Automatic first, then the sampler table's."""
    table = samplers.SCHEDULES.items()
    return [("automatic", "Automatic")] + [(sched or "uniform", label) for sched, (label, _) in table]


def model_name(value: str) -> str:
    """``control_v11p_sd15_canny [d14c016b]`` -> ``control_v11p_sd15_canny``: A1111 titles carry a short hash."""
    return re.sub(r"\s*\[[0-9a-fA-F]{6,}\]$", "", str(value)).strip()


def is_t2i_adapter(name: str) -> bool:
    """``t2iadapter_canny_sd15v2``, ``t2i-adapter-canny-sdxl-1.0``: a TencentARC T2I-Adapter's name."""
    return re.search(r"t2i[-_]?adapter", name.lower()) is not None


def conditioner_for_model(name: str) -> str | None:
    lowered = name.lower()
    return next((plugin for word, plugin in MODEL_KINDS if word in lowered), None)


def choice(table: dict, value: Any, field: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value not in table:
        names = [k for k in table if isinstance(k, str)]
        raise FieldError(field, f"{field} {str(value)[:80]!r} is not one of {', '.join(names)} (or 0-2)")
    return table[value]


def hr_upscaler(value: Any, catalog: Any, field: str = "hr_upscaler") -> str:
    """sdcompose's upscaler for an A1111 upscaler name (``HR_UPSCALERS``) or a models.yaml upscaler id or file name."""
    found = upscaler_by_name(catalog, model_name(value)) if isinstance(value, str) and value else None
    if found is None:
        known = list(HR_UPSCALERS) + [i for i, e in catalog.entries.items() if e.kind == "upscaler"]
        raise FieldError(field, f"{field} {quote(value)} is not an upscaler sdcompose has "
                                f"(GET /sdapi/v1/upscalers lists them){suggest(str(value), known)}")
    return found
