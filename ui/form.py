"""The UI's form as named fields: form values -> ``Pipeline.generate`` arguments, and metadata -> form values.

Pure data, no Gradio: the page (``app.py``) draws one component per field name, the web API
takes the same names, and the image-info tab restores a PNG through ``from_metadata``.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from PIL import Image

from sdcompose.errors import PluginError, ValidationError, quote
from sdcompose.images import open_image, to_rgb
from sdcompose.request import Control, Lora

TASKS = ("txt2img", "img2img", "inpaint")
RANDOM_SEED = -1
DEFAULTS = dict(task="txt2img", prompt="", negative_prompt="", model=None, scheduler="dpmpp_2m", steps=20,
                guidance=7.5, width=512, height=512, seed=RANDOM_SEED, batch=1, strength=0.75, init_image=None,
                inpaint=None, mask=None, loras=[], add_trigger_words=False, memory="auto", attention="auto", vram="",
                fast=False)
UNIT_DEFAULTS = dict(enable=False, plugin=None, image=None, preprocessed=False, model="auto", weight=1.0, start=0.0,
                     end=1.0, resize_mode="crop_and_resize", control_mode="balanced")
LORA_WEIGHT = 1.0
SCALARS = ("prompt", "negative_prompt", "model", "width", "height", "steps", "guidance", "scheduler", "strength",
           "memory", "attention", "fast")


def slug(text: str) -> str:
    return re.sub(r"\W", "_", text)


@dataclass
class Form:
    """Field names, defaults and how to read them, for the conditioners, LoRAs and ControlNet units on offer."""

    conditioners: dict[str, tuple] = field(default_factory=dict)  # plugin id -> its ParamSpecs
    loras: list[str] = field(default_factory=list)  # models.yaml LoRA ids
    units: int = 3

    # ---- names and defaults ------------------------------------------------------------------
    @staticmethod
    def unit(i: int, name: str) -> str:
        return f"cn{i}_{name}"

    def param(self, i: int, plugin_id: str, name: str) -> str:
        return f"cn{i}_{_unique_slugs(self.conditioners)[plugin_id]}_{name}"

    def lora(self, lora_id: str) -> str:
        return f"lora_{_unique_slugs(self.loras)[lora_id]}"

    def defaults(self) -> dict[str, Any]:
        """Every field name with its starting value, in the order ``/image_info`` and ``/restore`` list them."""
        values = {name: list(value) if isinstance(value, list) else value for name, value in DEFAULTS.items()}
        values.update({self.lora(lora_id): LORA_WEIGHT for lora_id in self.loras})
        first = next(iter(self.conditioners), None)
        for i in range(self.units):
            values.update({self.unit(i, name): value for name, value in UNIT_DEFAULTS.items()})
            values[self.unit(i, "plugin")] = first
            values.update({self.param(i, plugin_id, spec.name): spec.default
                           for plugin_id, specs in self.conditioners.items() for spec in specs})
        return values

    # ---- form -> request ---------------------------------------------------------------------
    def to_kwargs(self, values: dict[str, Any]) -> dict[str, Any]:
        """Arguments for ``Pipeline.generate`` from the form's values; ValidationError for what the form must fix."""
        task = values.get("task") or "txt2img"
        if not isinstance(task, str) or task not in TASKS:
            raise ValidationError(f"task must be one of {', '.join(TASKS)}, got {quote(task)}")
        kwargs = {name: values[name] for name in (*SCALARS, "batch", "add_trigger_words")
                  if values.get(name) is not None and name != "strength"}
        kwargs["seed"] = _seed(values.get("seed"))
        kwargs["vram"] = values.get("vram") or None  # empty: what the card has free
        kwargs["controls"] = self._controls(values)
        kwargs["loras"] = []
        for lora_id in values.get("loras") or []:
            if not isinstance(lora_id, str) or lora_id not in self.loras:
                raise ValidationError(f"no LoRA {quote(lora_id)} on offer; pick from {', '.join(self.loras) or 'none'}")
            kwargs["loras"].append(Lora(lora_id, values.get(self.lora(lora_id), LORA_WEIGHT)))
        if task != "txt2img":
            kwargs["strength"] = values.get("strength", DEFAULTS["strength"])
        if task == "img2img":
            if values.get("init_image") is None:
                raise ValidationError("image to image needs an input image: upload one in the Image to image tab")
            kwargs["init_image"] = values["init_image"]
        elif task == "inpaint":
            kwargs["init_image"], kwargs["mask"] = _inpaint(values.get("inpaint"), values.get("mask"))
        return kwargs

    def _controls(self, values: dict[str, Any]) -> list[Control]:
        return [self.control(i, values) for i in range(self.units) if values.get(self.unit(i, "enable"))]

    def control(self, i: int, values: dict[str, Any]) -> Control:
        """ControlNet unit ``i`` of the form as a ``Control``."""
        def get(name: str) -> Any:
            value = values.get(self.unit(i, name))
            return UNIT_DEFAULTS[name] if value is None else value
        plugin_id = get("plugin")
        if not isinstance(plugin_id, str) or plugin_id not in self.conditioners:
            raise ValidationError(f"ControlNet unit {i + 1}: pick a conditioner "
                                  f"({', '.join(self.conditioners) or 'none installed'})")
        if get("image") is None:
            raise ValidationError(f"ControlNet unit {i + 1} has no image: upload one, or untick Enable")
        params = {spec.name: values[key] for spec in self.conditioners[plugin_id]
                  if values.get(key := self.param(i, plugin_id, spec.name)) is not None}
        return Control(plugin_id, image=get("image"), weight=get("weight"), start=get("start"), end=get("end"),
                       params=params, model=None if get("model") in ("", "auto") else get("model"),
                       resize_mode=get("resize_mode"), control_mode=get("control_mode"),
                       preprocessed=bool(get("preprocessed")))

    # ---- metadata -> form ----------------------------------------------------------------------
    def from_metadata(self, meta: dict[str, Any], inputs: dict[str, Image.Image],
                      store: Callable[[str, Image.Image], str]) -> tuple[dict[str, Any], list[str]]:
        """Every field's value to make the image again (control maps become preprocessed units), and warnings
        for what this page cannot offer. ``store(name, image)`` saves an embedded image and returns its path."""
        req, warnings = meta["request"], []
        values = self.defaults()
        values.update({name: req[name] for name in SCALARS if name in req})
        values.update(seed=meta["seed"], add_trigger_words=bool(req.get("add_trigger_words", False)),
                      task=meta.get("task", "txt2img"), vram=_size_text(req.get("vram")))
        if "init_image" in inputs:
            init = store("init_image", inputs["init_image"])
            if values["task"] == "inpaint":
                values["inpaint"] = {"background": init, "layers": [], "composite": init}
                values["mask"] = store("mask", inputs["mask"]) if "mask" in inputs else None
            else:
                values["init_image"] = init
        for lora in req.get("loras", []):
            if lora["id"] in self.loras:
                values["loras"].append(lora["id"])
                values[self.lora(lora["id"])] = lora["weight"]
            else:
                warnings.append(f"LoRA {lora['id']!r} is not in this server's models.yaml; left out")
        units = []
        for index, control in enumerate(req.get("controls", [])):
            if control["id"] in self.conditioners:
                units.append((index, control))
            else:
                warnings.append(f"conditioner {control['id']!r} is not installed here; its unit was left out")
        if len(units) > self.units:
            warnings.append(f"the image used {len(units)} ControlNet units; this page has {self.units}")
        for i, (index, control) in enumerate(units[:self.units]):
            values.update({self.unit(i, name): control[name] for name in (
                "weight", "start", "end", "resize_mode", "control_mode")})
            embedded = inputs.get(f"control-{index}")
            values.update({self.unit(i, "enable"): True, self.unit(i, "plugin"): control["id"],
                           self.unit(i, "model"): control.get("model") or "auto", self.unit(i, "preprocessed"): True,
                           self.unit(i, "image"): None if embedded is None else store(f"control-{index}", embedded)})
            for spec in self.conditioners[control["id"]]:
                if spec.name in control.get("params", {}):
                    try:
                        values[self.param(i, control["id"], spec.name)] = spec.check(control["params"][spec.name])
                    except PluginError as exc:
                        warnings.append(f"ControlNet unit {i + 1} ({control['id']}): {exc}; left at its default")
        return values, warnings


def _unique_slugs(ids: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in ids:
        name = slug(item)
        while name in out.values():
            name += "_"
        out[item] = name
    return out


def _size_text(size: int | None) -> str:
    if not size:
        return ""
    return f"{size // 2**20}MB" if size % 2**20 == 0 else f"{size}b"


def _seed(value: Any) -> int | None:
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an int of hundreds of digits
        number = float("nan")
    if not math.isfinite(number) or number != int(number):
        raise ValidationError(f"seed must be a whole number (-1 for random), got {quote(value)}")
    return None if int(number) == RANDOM_SEED else int(number)


def _inpaint(editor: Any, uploaded_mask: Any) -> tuple[Any, Any]:
    """The image and mask of the inpaint tab: the editor's background, and an uploaded mask or the painted strokes."""
    background = editor.get("background") if isinstance(editor, dict) else None
    if background is None:
        raise ValidationError("inpaint needs an image: upload one in the Inpaint tab, then paint the area to change")
    if uploaded_mask is not None:
        return background, uploaded_mask
    painted = None
    for layer in editor.get("layers") or []:
        image = open_image(layer, "mask layer")
        alpha = np.asarray(image.getchannel("A") if "A" in image.getbands() else to_rgb(image).convert("L"))
        painted = alpha if painted is None else np.maximum(painted, alpha)
    if painted is None or not painted.any():
        raise ValidationError("inpaint needs a mask: paint over the area to change, or upload a mask")
    return background, Image.fromarray(np.where(painted > 0, 255, 0).astype(np.uint8))
