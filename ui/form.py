"""The UI's form as named fields: form values -> ``Pipeline.generate`` arguments, and metadata -> form values.

Pure data, no Gradio: the page (``app.py``) draws one component per field name, the web API
takes the same names, and the image-info tab restores a PNG through ``from_metadata``.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from collections.abc import Mapping
from typing import Any, Callable

import numpy as np
from PIL import Image

from sdcompose.errors import PluginError, ValidationError, quote
from sdcompose.images import MAX_BYTES, open_image, to_rgb
from sdcompose.request import Control, GenerationRequest, Hires, IpAdapter, Lora, bounds, default

TASKS = ("txt2img", "img2img", "inpaint")
RANDOM_SEED = -1
_R = GenerationRequest
# The hires fix (text to image only): off, else ``Hires`` from the hires_* fields, the schema's defaults
HIRES_DEFAULTS = {"hires_enable": False, **{f"hires_{name}": default(Hires, name) for name in Hires.model_fields}}
DEFAULTS = dict(task="txt2img", prompt=default(_R, "prompt"), negative_prompt=default(_R, "negative_prompt"),
                model=None, scheduler=default(_R, "scheduler"), steps=default(_R, "steps"),
                guidance=default(_R, "guidance"), width=default(_R, "width"), height=default(_R, "height"),
                seed=RANDOM_SEED, batch=default(_R, "batch"), strength=default(_R, "strength"),
                resize_mode=default(_R, "resize_mode"), init_image=None,
                inpaint=None, mask=None, loras=[], add_trigger_words=default(_R, "add_trigger_words"),
                memory=default(_R, "memory"), attention=default(_R, "attention"), vram="", fast=default(_R, "fast"),
                ip_enable=False, ip_model=None, ip_image=None,
                **{f"ip_{name}": default(IpAdapter, name) for name in ("weight", "start", "end")},
                **HIRES_DEFAULTS)
UNIT_DEFAULTS = dict(enable=False, plugin=None, image=None, file=None, preprocessed=default(Control, "preprocessed"),
                     model="auto", **{name: default(Control, name) for name in (
                         "weight", "start", "end", "resize_mode", "control_mode")})
LORA_WEIGHT = default(Lora, "weight")
# Slider ranges, the schema's limits: (low, high) by form field ("unit_*": each ControlNet unit's, "lora": each LoRA's)
RANGES = {**{name: bounds(_R, name) for name in ("steps", "width", "height", "guidance", "batch", "strength")},
          **{f"unit_{name}": bounds(Control, name) for name in ("weight", "start", "end")},
          "lora": bounds(Lora, "weight"),
          **{f"hires_{name}": bounds(Hires, name) for name in ("scale", "steps", "denoise")},
          **{f"ip_{name}": bounds(IpAdapter, name) for name in ("weight", "start", "end")}}
EMBEDDED = "<image>"  # an image field restored without decoding the image (Image info shows this)
SCALARS = ("prompt", "negative_prompt", "model", "width", "height", "steps", "guidance", "scheduler", "strength",
           "resize_mode", "memory", "attention", "fast")
SEED_MAX = bounds(_R, "seed")[1]


@dataclass(frozen=True)
class Rejected:
    """An upload the page refused (not an image, too many pixels...): the reason, one sentence, no server path."""

    reason: str


FIELD_TITLES = {"init_image": "the input image", "mask": "the mask", "image": "the control image",
                "file": "the control file", "ip_image": "the IP-Adapter reference"}


def field_title(name: str) -> str:
    """A field as the page names it: ``cn1_image`` is "ControlNet unit 2: the control image"."""
    unit = re.fullmatch(r"cn(\d+)_(\w+)", name)
    if unit:
        return f"ControlNet unit {int(unit[1]) + 1}: {FIELD_TITLES.get(unit[2], unit[2])}"
    return FIELD_TITLES.get(name, name).capitalize()


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
        for name in {"img2img": ("init_image",), "inpaint": ("mask",)}.get(task, ()):  # units: in control()
            if isinstance(values.get(name), Rejected):
                raise ValidationError(f"{field_title(name)}: {values[name].reason}")
        kwargs = {name: values[name] for name in (*SCALARS, "batch", "add_trigger_words")
                  if values.get(name) is not None and name not in ("strength", "resize_mode")}
        kwargs["seed"] = _seed(values.get("seed"))
        kwargs["vram"] = values.get("vram") or None  # empty: what the card has free
        kwargs["controls"] = self._controls(values)
        kwargs["loras"] = []
        for lora_id in values.get("loras") or []:
            if not isinstance(lora_id, str) or lora_id not in self.loras:
                raise ValidationError(f"no LoRA {quote(lora_id)} on offer; pick from {', '.join(self.loras) or 'none'}")
            kwargs["loras"].append(Lora(lora_id, values.get(self.lora(lora_id), LORA_WEIGHT)))
        kwargs["ip_adapters"] = _ip_adapters(values)
        if task != "txt2img":  # strength and the resize mode apply only to an input image
            kwargs["strength"] = values.get("strength", DEFAULTS["strength"])
            kwargs["resize_mode"] = values.get("resize_mode") or DEFAULTS["resize_mode"]
        if task == "txt2img" and values.get("hires_enable"):
            kwargs["hires"] = Hires(**{name: values[f"hires_{name}"] for name in Hires.model_fields
                                       if values.get(f"hires_{name}") is not None})
        if task == "img2img":
            if values.get("init_image") is None:
                raise ValidationError("image to image needs an input image: upload one in the Image to image tab")
            kwargs["init_image"] = values["init_image"]
        elif task == "inpaint":
            kwargs["init_image"], kwargs["mask"] = _inpaint(values.get("inpaint"), values.get("mask"))
        return kwargs

    def _controls(self, values: dict[str, Any]) -> list[Control]:
        return [self.control(i, values) for i in self.unit_names(values)]

    def unit_names(self, values: dict[str, Any]) -> list[int]:
        """The page's index of each enabled unit: ``controls[k]`` of the request is unit ``unit_names()[k]``."""
        return [i for i in range(self.units) if values.get(self.unit(i, "enable"))]

    def control(self, i: int, values: dict[str, Any]) -> Control:
        """ControlNet unit ``i`` of the form as a ``Control``."""
        def get(name: str) -> Any:
            value = values.get(self.unit(i, name))
            return UNIT_DEFAULTS[name] if value is None else value
        plugin_id = get("plugin")
        if not isinstance(plugin_id, str) or plugin_id not in self.conditioners:
            raise ValidationError(f"ControlNet unit {i + 1}: pick a conditioner "
                                  f"({', '.join(self.conditioners) or 'none installed'})")
        image = get("image") if get("image") is not None else get("file")
        if isinstance(image, Rejected):
            raise ValidationError(f"{field_title(self.unit(i, 'image'))}: {image.reason}")
        if image is None:
            raise ValidationError(f"ControlNet unit {i + 1} has no image: upload one (or an OpenPose JSON or "
                                  "depth-map file), or untick Enable")
        if isinstance(image, str) and image.lower().endswith(".json"):
            image = _pose_json(image, f"ControlNet unit {i + 1}")
        params = {spec.name: values[key] for spec in self.conditioners[plugin_id]
                  if values.get(key := self.param(i, plugin_id, spec.name)) is not None}
        return Control(plugin_id, image=image, weight=get("weight"), start=get("start"), end=get("end"),
                       params=params, model=None if get("model") in ("", "auto") else get("model"),
                       resize_mode=get("resize_mode"), control_mode=get("control_mode"),
                       preprocessed=bool(get("preprocessed")))

    # ---- metadata -> form ----------------------------------------------------------------------
    def from_metadata(self, meta: dict[str, Any], inputs: Mapping[str, Any],
                      store: Callable[[str, Image.Image], str] | None) -> tuple[dict[str, Any], list[str]]:
        """Every field's value to make the image again (control maps become preprocessed units), and warnings
        for what this page cannot offer. ``store(name, image)`` saves an embedded image and returns its path;
        only the images the form takes are decoded for it. ``store=None``: none is decoded, each field holds
        ``EMBEDDED``."""
        request, warnings = GenerationRequest.from_metadata(meta, inputs), []

        def keep(name: str, image: Any) -> str:
            return EMBEDDED if store is None else store(name, open_image(image, f"embedded {name}"))

        values = self.defaults()
        values.update({name: getattr(request, name) for name in SCALARS})
        values.update(seed=request.seed, add_trigger_words=request.add_trigger_words, task=request.task,
                      vram=_size_text(request.vram))
        if request.hires is not None:
            values.update(hires_enable=True,
                          **{f"hires_{name}": getattr(request.hires, name) for name in Hires.model_fields})
        if request.init_image is not None:
            init = keep("init_image", request.init_image)
            if values["task"] == "inpaint":
                values["inpaint"] = {"background": init, "layers": [], "composite": init}
                values["mask"] = keep("mask", request.mask)
            else:
                values["init_image"] = init
        for use in request.adapters:  # the one list of adapters: its LoRAs fit the page's LoRA list
            if use.id in self.loras and use.id not in values["loras"]:
                values["loras"].append(use.id)
                values[self.lora(use.id)] = use.weight
            else:
                warnings.append(f"adapter {use.id!r} (from the request's adapters list) is not offered on this page; "
                                "left out")
        for lora in request.loras:
            if lora.id in self.loras:
                values["loras"].append(lora.id)
                values[self.lora(lora.id)] = lora.weight
            else:
                warnings.append(f"LoRA {lora.id!r} is not in this server's models.yaml; left out")
        for index, adapter in enumerate(request.ip_adapters):
            if index == 0:  # the page has one IP-Adapter section
                values.update(ip_enable=True, ip_model=adapter.id, ip_image=keep("ip-adapter-0-0", adapter.images()[0]),
                              **{f"ip_{name}": getattr(adapter, name) for name in ("weight", "start", "end")})
            if index > 0 or len(adapter.images()) > 1:
                warnings.append("the image used more IP-Adapter references than this page's one; the first was kept")
        units = []
        for index, control in enumerate(request.controls):
            if control.id in self.conditioners:
                units.append((index, control))
            else:
                warnings.append(f"conditioner {control.id!r} is not installed here; its unit was left out")
        if len(units) > self.units:
            warnings.append(f"the image used {len(units)} ControlNet units; this page has {self.units}")
        for i, (index, control) in enumerate(units[:self.units]):
            values.update({self.unit(i, name): getattr(control, name) for name in (
                "weight", "start", "end", "resize_mode", "control_mode")})
            values.update({self.unit(i, "enable"): True, self.unit(i, "plugin"): control.id,
                           self.unit(i, "model"): control.model or "auto", self.unit(i, "preprocessed"): True,
                           self.unit(i, "image"): keep(f"control-{index}", control.image)})
            for spec in self.conditioners[control.id]:
                if spec.name in control.params:  # only a value the plugin accepts reaches the form
                    try:
                        values[self.param(i, control.id, spec.name)] = spec.check(control.params[spec.name])
                    except PluginError as exc:
                        warnings.append(f"ControlNet unit {i + 1} ({control.id}): {exc}; left at its default")
        return values, warnings


def _ip_adapters(values: dict[str, Any]) -> list[IpAdapter]:
    """The page's one IP-Adapter section as the request's list (empty when it is off)."""
    if not values.get("ip_enable"):
        return []
    image = values.get("ip_image")
    if isinstance(image, Rejected):
        raise ValidationError(f"{field_title('ip_image')}: {image.reason}")
    if not values.get("ip_model"):
        raise ValidationError("IP-Adapter: pick an adapter in the IP-Adapter section (or switch it off)")
    if image is None:
        raise ValidationError("IP-Adapter: upload a reference image in the IP-Adapter section (or switch it off)")
    return [IpAdapter(values["ip_model"], image, **{name: values.get(f"ip_{name}", DEFAULTS[f"ip_{name}"])
                                                    for name in ("weight", "start", "end")})]


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
    """The page's seed (-1: random) as the request's (None: random); the schema checks the upper limit."""
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an int of hundreds of digits
        number = float("nan")
    if not math.isfinite(number) or number != int(number):
        raise ValidationError(f"seed must be a whole number (-1 for random), got {quote(value)}")
    seed = value if isinstance(value, int) and not isinstance(value, bool) else int(number)  # every digit kept
    if seed < 0 and seed != RANDOM_SEED:
        raise ValidationError(f"seed must be -1 (random) or between 0 and {SEED_MAX}, got {seed}")
    return None if seed == RANDOM_SEED else seed


def _pose_json(path: str, where: str) -> Any:
    """An uploaded OpenPose JSON file, parsed here so no error names the server's upload folder."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError:
        raise ValidationError(f"{where}: the uploaded file could not be read; upload it again") from None
    if len(data) > MAX_BYTES:
        raise ValidationError(f"{where}: the JSON file is larger than {MAX_BYTES // 2**20} MB")
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:
        line = f" (line {exc.lineno})" if isinstance(exc, json.JSONDecodeError) else ""
        raise ValidationError(f"{where}: the file is not valid OpenPose JSON{line}") from None


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
