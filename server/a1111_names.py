"""AUTOMATIC1111 and sd-webui-controlnet names mapped to sdcompose's: samplers, modules, models, modes.

The tables here are the compatibility table of docs/http-api.md.
"""
from __future__ import annotations

import re
from typing import Any

from sdcompose.errors import suggest

from .inputs import FieldError

# (sampler_name, scheduler) -> sdcompose scheduler id; scheduler "automatic" is the sampler's own default.
SAMPLERS = {"Euler": "euler", "Euler a": "euler_a", "DDIM": "ddim", "DPM++ 2M": "dpmpp_2m", "UniPC": "unipc"}
SCHEDULERS = {"automatic": None, "karras": "karras"}
KARRAS = {"dpmpp_2m": "dpmpp_2m_karras"}
OLD_KARRAS_NAMES = {"DPM++ 2M Karras": "dpmpp_2m_karras"}  # before A1111 1.9 the schedule was in the sampler name

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
}
NO_PREPROCESSOR = ("none", "None", "")
# words in a ControlNet model's name -> the conditioner it was trained for (for module "none")
MODEL_KINDS = (("canny", "canny"), ("depth", "depth"), ("openpose", "pose"), ("pose", "pose"),
               ("softedge", "softedge"), ("hed", "softedge"), ("lineart", "lineart"))
RESIZE_MODES = {"Just Resize": "just_resize", "Crop and Resize": "crop_and_resize",
                "Resize and Fill": "resize_and_fill", "Scale to Fit (Inner Fit)": "crop_and_resize",
                "Envelope (Outer Fit)": "resize_and_fill", 0: "just_resize", 1: "crop_and_resize",
                2: "resize_and_fill"}
CONTROL_MODES = {"Balanced": "balanced", "My prompt is more important": "prompt_first",
                 "ControlNet is more important": "control_first", 0: "balanced", 1: "prompt_first",
                 2: "control_first"}


def scheduler_id(sampler: Any, schedule: Any, field: str = "sampler_name") -> str:
    """sdcompose's scheduler for an A1111 sampler name and schedule type ("DPM++ 2M" + "Karras")."""
    if sampler in OLD_KARRAS_NAMES:
        return OLD_KARRAS_NAMES[sampler]
    if sampler not in SAMPLERS:
        known = [*SAMPLERS, *OLD_KARRAS_NAMES]
        raise FieldError(field, f"{field} {str(sampler)[:80]!r} is not a sampler sdcompose has; it has "
                                f"{', '.join(known)}{suggest(str(sampler), known)}")
    name = SAMPLERS[sampler]
    kind = SCHEDULERS.get(str(schedule or "automatic").lower(), "unknown")
    if kind is None:
        return name
    if kind == "karras" and name in KARRAS:
        return KARRAS[name]
    raise FieldError("scheduler", f"scheduler {str(schedule)[:80]!r} with sampler {sampler!r} is not available; "
                                  f"use Automatic{' or Karras' if name in KARRAS else ''}")


def model_name(value: str) -> str:
    """``control_v11p_sd15_canny [d14c016b]`` -> ``control_v11p_sd15_canny``: A1111 titles carry a short hash."""
    return re.sub(r"\s*\[[0-9a-fA-F]{6,}\]$", "", str(value)).strip()


def conditioner_for_model(name: str) -> str | None:
    lowered = name.lower()
    return next((plugin for word, plugin in MODEL_KINDS if word in lowered), None)


def choice(table: dict, value: Any, field: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value not in table:
        names = [k for k in table if isinstance(k, str)]
        raise FieldError(field, f"{field} {str(value)[:80]!r} is not one of {', '.join(names)} (or 0-2)")
    return table[value]
