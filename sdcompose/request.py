"""A generation request as typed, pure data: every default and limit is defined once, here.

The pydantic models are the schema the Python API, the CLI, the UI and the HTTP API read
(``GenerationRequest.model_json_schema()``). Making a ``GenerationRequest`` checks it before any
model loads or GPU work starts; a bad value is one sentence in sdcompose's ``ValidationError``,
never pydantic's. ``Control`` and ``Lora`` are parts: they are checked, with their place in the
list named, when the request holding them is made.
"""
from __future__ import annotations

import math
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic import ValidationError as PydanticError

from sdcompose.errors import ValidationError, suggest
from sdcompose.prompt_syntax import SYNTAXES, check_syntax, lora_tags, parse
from sdcompose.samplers import IDS as SCHEDULERS, canonical as canonical_sampler, check_steps

RESIZE_MODES = ("just_resize", "crop_and_resize", "resize_and_fill")
CONTROL_MODES = ("balanced", "prompt_first", "control_first")
MEMORY_MODES = ("auto", "none", "vae_slicing", "vae_tiling", "model_offload", "group_offload", "sequential_offload")
ATTENTION_BACKENDS = ("auto", "sdpa", "xformers", "sliced")
MAX_PIXELS = 4096 * 4096
RUNTIME = ("memory", "attention", "vram", "fast")  # how a request runs on this machine, not what it makes
_ID = dict(min_length=1, max_length=200)


class _Part(BaseModel):
    """A request part made like a dataclass (positional fields allowed, nothing checked until the request)."""

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        names = list(type(self).model_fields)
        if len(args) > len(names):
            raise TypeError(f"{type(self).__name__} takes at most {len(names)} positional fields")
        for name, value in zip(names, args):
            if name in kwargs:
                raise TypeError(f"{type(self).__name__} got two values for {name!r}")
            kwargs[name] = value
        unknown = [name for name in kwargs if name not in names]
        if unknown:
            raise TypeError(f"{type(self).__name__} has no field {unknown[0]!r}{suggest(unknown[0], names)}")
        missing = [n for n, f in type(self).model_fields.items() if f.is_required() and n not in kwargs]
        if missing:
            raise TypeError(f"{type(self).__name__} needs {missing[0]!r}")
        made = type(self).model_construct(**kwargs)
        for slot in ("__dict__", "__pydantic_fields_set__", "__pydantic_extra__", "__pydantic_private__"):
            object.__setattr__(self, slot, getattr(made, slot))

    def with_(self, **changes: Any):
        unknown = [name for name in changes if name not in type(self).model_fields]
        if unknown:
            raise TypeError(f"{type(self).__name__} has no field {unknown[0]!r}")
        return self.model_copy(update=changes)

    def summary(self) -> dict[str, Any]:
        """Every field as JSON-ready data (an image replaced by a marker)."""
        data = {name: getattr(self, name) for name in type(self).model_fields}
        if "image" in data:
            data["image"] = None if data["image"] is None else "<image>"
        if "params" in data and isinstance(data["params"], dict):
            data["params"] = dict(data["params"])
        return data


class Control(_Part):
    """One ControlNet unit: a conditioner plugin id, its input, and how strongly and when it acts."""

    id: str = Field(**_ID, description="a conditioner plugin id (sdcompose plugins list)")
    image: Any = Field(None, description="path, PIL image, numpy array, or parsed JSON for plugins that take it")
    weight: float = Field(1.0, ge=0.0, le=4.0, description="controlnet_conditioning_scale")
    start: float = Field(0.0, ge=0.0, le=1.0, description="control_guidance_start: fraction of the steps")
    end: float = Field(1.0, ge=0.0, le=1.0, description="control_guidance_end: fraction of the steps")
    params: dict[str, Any] = Field(default_factory=dict, description="the plugin's own parameters")
    model: str | None = Field(None, **_ID, description="a models.yaml ControlNet id; default: the plugin's for "
                                                       "the base family")
    resize_mode: Literal[RESIZE_MODES] = "crop_and_resize"  # type: ignore[valid-type]
    control_mode: Literal[CONTROL_MODES] = "balanced"  # type: ignore[valid-type]
    preprocessed: bool = Field(False, description="true: image already is the control map; the preprocessor "
                                                  "is skipped")


class Lora(_Part):
    id: str = Field(**_ID, description="a models.yaml LoRA id")
    weight: float = Field(1.0, ge=-4.0, le=4.0)


class IpAdapter(_Part):
    """An image prompt: a models.yaml IP-Adapter and one or more reference images (a shorthand for an
    ``AdapterUse`` with ``start`` and ``end`` params; pipelines/adapter_uses.py)."""

    id: str = Field(**_ID, description="a models.yaml ip_adapter id")
    image: Any = Field(None, description="the reference: path, PIL image or array; or a list of them, which "
                                         "diffusers reads as one prompt")
    weight: float = Field(1.0, ge=0.0, le=2.0, description="set_ip_adapter_scale for this adapter")
    start: float = Field(0.0, ge=0.0, le=1.0, description="fraction of the steps where it starts acting")
    end: float = Field(1.0, ge=0.0, le=1.0, description="fraction of the steps where it stops acting")

    def images(self) -> list[Any]:
        return list(self.image) if isinstance(self.image, (list, tuple)) else [self.image]

    def summary(self) -> dict[str, Any]:
        data = super().summary()
        data["image"] = ["<image>"] * len(self.images())
        return data


class AdapterUse(_Part):
    """One adapter of any kind: a models.yaml entry (a LoRA, an IP-Adapter...) applied by the adapter plugin that
    serves its kind, with a weight, the plugin's params and its reference images if it takes them
    (pipelines/adapter_uses.py). ``Lora`` and ``IpAdapter`` are shorthands for the two built-in kinds."""

    id: str = Field(**_ID, description="a models.yaml entry id of a kind an adapter plugin serves (lora, ip_adapter)")
    weight: float = Field(1.0, ge=-4.0, le=4.0, description="its strength; the serving plugin may allow less")
    params: dict[str, Any] = Field(default_factory=dict, description="the serving plugin's own parameters "
                                                                     "(an IP-Adapter's start and end)")
    image: Any = Field(None, description="reference image(s), for adapters that take them: path, PIL image or "
                                         "array, or a list")

    def images(self) -> list[Any]:
        if self.image is None:
            return []
        return list(self.image) if isinstance(self.image, (list, tuple)) else [self.image]

    def summary(self) -> dict[str, Any]:
        data = super().summary()
        data["image"] = ["<image>"] * len(self.images())
        return data


LANCZOS = "lanczos"  # the hires/extras upscaler that is an image resize, no model (the default)


class Hires(_Part):
    """Hires fix: a second pass image-to-image at ``scale`` times the size (pipelines/hires.py)."""

    scale: float = Field(2.0, ge=1.0, le=4.0, description="the second pass's size over the first's (hr_scale)")
    upscaler: str = Field(LANCZOS, **_ID, description="lanczos, or a models.yaml upscaler id (hr_upscaler)")
    steps: int = Field(0, ge=0, le=500, description="second-pass steps; 0: the request's (hr_second_pass_steps)")
    denoise: float = Field(0.5, ge=0.0, le=1.0, description="second-pass denoising strength")


class GenerationRequest(BaseModel):
    """Everything that decides the images of one call; made from keywords, a mapping or JSON."""

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    prompt: str = Field("", max_length=20_000)
    negative_prompt: str = Field("", max_length=20_000)
    model: str | None = Field(None, **_ID, description="a models.yaml base id; default: the Pipeline's "
                                                       "(SDCOMPOSE_MODEL, else sd15)")
    controls: list[Control] = Field(default_factory=list, max_length=8)
    loras: list[Lora] = Field(default_factory=list, max_length=16)
    init_image: Any = Field(None, description="img2img/inpaint source: path, PIL image or array")
    strength: float = Field(0.75, ge=0.0, le=1.0, description="how much of init_image is repainted")
    resize_mode: Literal[RESIZE_MODES] = Field("just_resize", description="how init_image and mask are fitted "  # type: ignore
                                               "to width x height: just_resize (stretched), crop_and_resize, "
                                               "resize_and_fill (A1111's img2img resize modes)")
    mask: Any = Field(None, description="inpaint mask (white = repaint); needs init_image")
    width: int = Field(512, ge=64, le=4096, multiple_of=8)
    height: int = Field(512, ge=64, le=4096, multiple_of=8)
    steps: int = Field(20, ge=1, le=500, description="num_inference_steps")
    guidance: float = Field(7.5, ge=0.0, le=50.0, description="guidance_scale (CFG)")
    scheduler: str = Field("dpmpp_2m", json_schema_extra={"enum": list(SCHEDULERS)},
                           description="a sampler id, or A1111's name such as 'DPM++ 2M Karras' (docs/samplers.md); "
                                       "kept as the id")
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="image i uses seed + i; None: a random seed")
    batch: int = Field(1, ge=1, le=16, description="images per call")
    add_trigger_words: bool = Field(False, description="add the LoRAs' trigger words to the prompt")
    memory: Literal[MEMORY_MODES] = Field("auto", description="a memory mode; auto plans for vram "  # type: ignore
                                                                "(docs/memory.md)")
    attention: Literal[ATTENTION_BACKENDS] = "auto"  # type: ignore[valid-type]
    vram: int | str | None = Field(None, description="memory budget, e.g. 4GB; None: what the card has free")
    fast: bool = Field(False, description="compiled UNet/ControlNet replayed as CUDA graphs (CUDA only)")
    clip_skip: int = Field(1, ge=1, le=12, description="A1111's clip skip: 1 = the text encoder's last layer")
    prompt_syntax: Literal[SYNTAXES] = Field("a1111", description="a1111: (emphasis:1.2), BREAK, <lora:name:w> "  # type: ignore
                                                                  "tags; literal: the text as written (docs/prompts.md)")
    hires: Hires | None = Field(None, description="hires fix: a second pass at a larger size; None: one pass")
    ip_adapters: list[IpAdapter] = Field(default_factory=list, max_length=4,
                                         description="image prompts (IP-Adapter), each with its own weight")
    adapters: list[AdapterUse] = Field(default_factory=list, max_length=16,
                                       description="adapters of any kind (loras and ip_adapters are shorthands)")

    def __init__(self, **fields: Any) -> None:
        try:
            super().__init__(**fields)
        except PydanticError as exc:
            raise _ours(exc) from None

    @classmethod
    def model_validate(cls, obj: Any, **kwargs: Any) -> "GenerationRequest":
        try:
            return super().model_validate(obj, **kwargs)
        except PydanticError as exc:
            raise _ours(exc) from None

    @model_validator(mode="before")
    @classmethod
    def _check(cls, data: Any) -> dict[str, Any]:
        return _checked(data)

    @classmethod
    def from_metadata(cls, meta: dict[str, Any], inputs: dict[str, Any] | None = None,
                      runtime: bool = True) -> "GenerationRequest":
        """The request that makes image ``meta["seed"]`` of an sdcompose PNG again, from its metadata and
        embedded inputs (control maps become preprocessed units). ``runtime``: also restore how it ran
        (memory, attention, vram, fast), not only what it made."""
        inputs = inputs or {}
        try:
            r = meta["request"]
            fields = {name: r[name] for name in _RECORDED}
            fields.update({name: r[name] for name in cls.model_fields
                           if name in r and name not in fields and name not in _NOT_RECORDED
                           and (runtime or name not in RUNTIME)})
            fields["controls"] = [{**{k: c[k] for k in _RECORDED_CONTROL}, "image": inputs[f"control-{i}"],
                                   "preprocessed": True} for i, c in enumerate(r["controls"])]
            fields["loras"] = [{"id": x["id"], "weight": x["weight"]} for x in r["loras"]]
            fields["ip_adapters"] = [{**{k: a[k] for k in ("id", "weight", "start", "end")},
                                      "image": [inputs[f"ip-adapter-{i}-{j}"] for j in range(len(a["image"]))]}
                                     for i, a in enumerate(r.get("ip_adapters", ()))]
            fields["adapters"] = [{**{k: a[k] for k in ("id", "weight", "params")},
                                   "image": [inputs[f"adapter-{i}-{j}"] for j in range(len(a["image"]))] or None}
                                  for i, a in enumerate(r.get("adapters", ()))]
            fields.update(seed=meta["seed"], batch=1, init_image=inputs.get("init_image"), mask=inputs.get("mask"))
        except (KeyError, TypeError) as exc:
            raise ValidationError(f"the image's metadata lacks {exc}; it cannot be reproduced") from None
        return cls(**fields)

    @property
    def task(self) -> str:
        if self.mask is not None:
            return "inpaint"
        return "img2img" if self.init_image is not None else "txt2img"

    def with_(self, **changes: Any) -> "GenerationRequest":
        """A copy with ``changes``, checked again when it runs."""
        unknown = [name for name in changes if name not in type(self).model_fields]
        if unknown:
            raise TypeError(f"GenerationRequest has no field {unknown[0]!r}")
        return self.model_copy(update=changes)

    def fields(self) -> dict[str, Any]:
        """The fields as given (no copies, images as they are)."""
        return {name: getattr(self, name) for name in type(self).model_fields}

    def summary(self) -> dict[str, Any]:
        """Every parameter as JSON-ready data (images replaced by a marker)."""
        data = self.fields()
        for key in ("init_image", "mask"):
            data[key] = None if data[key] is None else "<image>"
        data["controls"] = [c.summary() for c in self.controls]
        data["loras"] = [lora.summary() for lora in self.loras]
        data["hires"] = None if self.hires is None else self.hires.summary()
        data["ip_adapters"] = [a.summary() for a in self.ip_adapters]
        data["adapters"] = [a.summary() for a in self.adapters]
        return data


_RECORDED = ("prompt", "negative_prompt", "model", "strength", "width", "height", "steps", "guidance", "scheduler")
_NOT_RECORDED = ("controls", "loras", "init_image", "mask", "seed", "batch", "ip_adapters", "adapters")
_RECORDED_CONTROL = ("id", "weight", "start", "end", "params", "model", "resize_mode", "control_mode")


def limit(model: type[BaseModel], name: str, kind: str) -> Any:
    """A field's constraint (``ge``, ``le``, ``max_length``, ``multiple_of``) as the schema states it."""
    return next(getattr(m, kind) for m in model.model_fields[name].metadata if hasattr(m, kind))


def bounds(model: type[BaseModel], name: str) -> tuple[Any, Any]:
    return limit(model, name, "ge"), limit(model, name, "le")


def default(model: type[BaseModel], name: str) -> Any:
    field = model.model_fields[name]
    # A factory called directly: pydantic's get_default(call_default_factory=True) parses the factory's
    # signature on every call (about a millisecond per request); none of these factories takes arguments.
    return field.default_factory() if field.default_factory is not None else field.get_default()


R = GenerationRequest
LIMITS = dict(size=bounds(R, "width"), size_multiple=limit(R, "width", "multiple_of"), pixels=MAX_PIXELS,
              steps=bounds(R, "steps"), guidance=bounds(R, "guidance"), batch=bounds(R, "batch"),
              prompt_chars=limit(R, "prompt", "max_length"), controls=limit(R, "controls", "max_length"),
              loras=limit(R, "loras", "max_length"), lora_weight=bounds(Lora, "weight"),
              control_weight=bounds(Control, "weight"), seed=bounds(R, "seed"),
              ip_adapters=limit(R, "ip_adapters", "max_length"), references=8,
              adapters=limit(R, "adapters", "max_length"), adapter_weight=bounds(AdapterUse, "weight"))
del R


def validate(req: GenerationRequest) -> GenerationRequest:
    """A checked, normalised copy of ``req`` (changed since it was made, perhaps), or ValidationError."""
    if not isinstance(req, GenerationRequest):
        raise ValidationError(f"expected a GenerationRequest, got {type(req).__name__}")
    return GenerationRequest(**req.fields())


def _ours(exc: PydanticError) -> ValidationError:
    """sdcompose's one-sentence error for a pydantic one (the checks raise ours; pydantic carries it)."""
    first = exc.errors()[0]
    error = first.get("ctx", {}).get("error")
    if isinstance(error, ValidationError):
        return error
    where = ".".join(str(part) for part in first.get("loc", ())) or "request"
    return ValidationError(f"{where}: {first.get('msg', 'invalid')}")


def _checked(data: Any) -> dict[str, Any]:
    """The request's fields normalised (numbers from text, lists from tuples), or ValidationError."""
    if isinstance(data, GenerationRequest):
        data = data.fields()
    if not isinstance(data, dict):
        raise ValidationError(f"expected a GenerationRequest, got {type(data).__name__}")
    R = GenerationRequest
    unknown = [name for name in data if name not in R.model_fields]
    if unknown:
        raise ValidationError(f"a request has no field {_short(unknown[0])}{suggest(str(unknown[0]), R.model_fields)}")
    req = {name: data.get(name, default(R, name)) for name in R.model_fields}
    for name in ("prompt", "negative_prompt"):
        _text(name, req[name], LIMITS["prompt_chars"])
    _id("model (a models.yaml id)", req["model"], optional=True)
    if not isinstance(req["add_trigger_words"], bool):
        raise ValidationError(f"add_trigger_words must be true or false, got {_short(req['add_trigger_words'])}")
    for name in ("controls", "loras", "ip_adapters", "adapters"):
        if not isinstance(req[name], (list, tuple)):
            raise ValidationError(f"{name} must be a list, got {type(req[name]).__name__}")
    low, high = LIMITS["size"]
    multiple = LIMITS["size_multiple"]
    for name in ("width", "height"):
        value = _number(name, req[name], low, high, integer=True)
        if value % multiple:
            raise ValidationError(f"{name} must be a multiple of {multiple}, got {value} "
                                  f"(try {value // multiple * multiple or multiple})")
        req[name] = value
    if req["width"] * req["height"] > LIMITS["pixels"]:
        raise ValidationError(f"{req['width']}x{req['height']} is more than {LIMITS['pixels']} pixels")
    req["steps"] = _number("steps", req["steps"], *LIMITS["steps"], integer=True)
    req["guidance"] = _number("guidance", req["guidance"], *LIMITS["guidance"])
    req["strength"] = _number("strength", req["strength"], *bounds(R, "strength"))
    if req["init_image"] is not None and req["strength"] == 0:
        raise ValidationError("strength must be above 0 for img2img/inpaint (0 would return the input unchanged)")
    if req["resize_mode"] not in RESIZE_MODES:
        raise ValidationError(f"resize_mode {_short(req['resize_mode'])} is not one of {', '.join(RESIZE_MODES)}")
    if req["mask"] is not None and req["init_image"] is None:
        raise ValidationError("a mask needs an init_image to paint into")
    req["batch"] = _number("batch", req["batch"], *LIMITS["batch"], integer=True)
    seed = req["seed"]
    if seed is not None:
        if isinstance(seed, (int, float)) and not isinstance(seed, bool) and seed < 0:
            raise ValidationError(f"seed must be >= 0 (or None for a random seed), got {_short(seed)}")
        req["seed"] = _number("seed", seed, LIMITS["seed"][0], LIMITS["seed"][1] - req["batch"], integer=True)
    req["scheduler"] = canonical_sampler(req["scheduler"])  # an id, or A1111's name ("DPM++ 2M Karras")
    check_steps(req["scheduler"], req["steps"], req["strength"] if req["init_image"] is not None else 1.0)
    if len(req["controls"]) > LIMITS["controls"]:
        raise ValidationError(f"at most {LIMITS['controls']} controls per request, got {len(req['controls'])}")
    if len(req["loras"]) > LIMITS["loras"]:
        raise ValidationError(f"at most {LIMITS['loras']} LoRAs per request, got {len(req['loras'])}")
    req["controls"] = [_control(i, c) for i, c in enumerate(req["controls"])]
    req["loras"] = [_lora(i, lora) for i, lora in enumerate(req["loras"])]
    if len({lora.id for lora in req["loras"]}) != len(req["loras"]):
        raise ValidationError("the same LoRA is listed twice; give it one weight")
    for name, choices in (("memory", MEMORY_MODES), ("attention", ATTENTION_BACKENDS)):
        if not isinstance(req[name], str) or req[name] not in choices:
            raise ValidationError(f"{name} {_short(req[name])} is not one of {', '.join(choices)}")
    if not isinstance(req["fast"], bool):
        raise ValidationError(f"fast must be true or false, got {_short(req['fast'])}")
    req["vram"] = None if req["vram"] is None else parse_size(req["vram"], "vram")
    req["clip_skip"] = _number("clip_skip", req["clip_skip"], *bounds(R, "clip_skip"), integer=True)
    syntax = check_syntax("prompt_syntax", req["prompt_syntax"])
    text, tags = lora_tags(req["prompt"], syntax)
    parse(text, syntax)  # a malformed prompt is refused before any model loads
    parse(req["negative_prompt"], syntax)
    for name, weight in tags:
        _number(f"<lora:{name[:60]}> weight", weight, *LIMITS["lora_weight"])
    req["hires"] = None if req["hires"] is None else _hires(req)
    if len(req["ip_adapters"]) > LIMITS["ip_adapters"]:
        raise ValidationError(f"at most {LIMITS['ip_adapters']} IP-Adapters per request, got {len(req['ip_adapters'])}")
    req["ip_adapters"] = [_ip_adapter(i, a) for i, a in enumerate(req["ip_adapters"])]
    if len(req["adapters"]) > LIMITS["adapters"]:
        raise ValidationError(f"at most {LIMITS['adapters']} adapters per request, got {len(req['adapters'])}")
    req["adapters"] = [_adapter(i, a) for i, a in enumerate(req["adapters"])]
    if (req["ip_adapters"] or any(a.image is not None for a in req["adapters"])) and req["fast"]:
        raise ValidationError("fast mode does not run IP-Adapters (its CUDA graphs are captured without them): drop "
                              "fast or the IP-Adapters")
    return req


def _adapter(i: int, a: Any) -> AdapterUse:
    a = _part(AdapterUse, f"adapters[{i}]", a, "sdcompose.AdapterUse(id, weight, params, image)")
    _id(f"adapters[{i}] id", a.id)
    where = f"adapters[{i}] ({a.id})"
    if not isinstance(a.params, dict) or not all(isinstance(k, str) for k in a.params):
        raise ValidationError(f"{where} params must be a mapping of names to values")
    images = a.images()
    if any(image is None for image in images):
        raise ValidationError(f"{where} has an empty reference image")
    if len(images) > LIMITS["references"]:
        raise ValidationError(f"{where} has {len(images)} reference images; the limit is {LIMITS['references']}")
    weight = _number(f"{where} weight", a.weight, *LIMITS["adapter_weight"])
    return a.with_(image=(images if isinstance(a.image, (list, tuple)) else a.image) if images else None,
                   weight=weight, params=dict(a.params))


def _ip_adapter(i: int, a: Any) -> IpAdapter:
    a = _part(IpAdapter, f"ip_adapters[{i}]", a, "sdcompose.IpAdapter(id, image, weight, start, end)")
    _id(f"ip_adapters[{i}] id", a.id)
    where = f"ip_adapters[{i}] ({a.id})"
    images = a.images()
    if not images or any(image is None for image in images):
        raise ValidationError(f"{where} needs a reference image")
    if len(images) > LIMITS["references"]:
        raise ValidationError(f"{where} has {len(images)} reference images; the limit is {LIMITS['references']}")
    weight = _number(f"{where} weight", a.weight, *bounds(IpAdapter, "weight"))
    start = _number(f"{where} start", a.start, *bounds(IpAdapter, "start"))
    end = _number(f"{where} end", a.end, *bounds(IpAdapter, "end"))
    if start >= end:
        raise ValidationError(f"{where} start ({start}) must be below end ({end})")
    return a.with_(image=images if isinstance(a.image, (list, tuple)) else a.image, weight=weight, start=start, end=end)


def _hires(req: dict[str, Any]) -> Hires:
    hires = _part(Hires, "hires", req["hires"], "sdcompose.Hires(scale, upscaler, steps, denoise)")
    if req["init_image"] is not None:
        raise ValidationError("hires fix is for text to image; drop init_image, or upscale the result instead")
    scale = _number("hires scale", hires.scale, *bounds(Hires, "scale"))
    steps = _number("hires steps", hires.steps, *bounds(Hires, "steps"), integer=True)
    denoise = _number("hires denoise", hires.denoise, *bounds(Hires, "denoise"))
    if denoise == 0:
        raise ValidationError("hires denoise must be above 0 (0 would only resize the first pass)")
    _id("hires upscaler", hires.upscaler)
    check_steps(req["scheduler"], steps or req["steps"], denoise, "hires steps")
    multiple = LIMITS["size_multiple"]
    width, height = (max(multiple, int(req[side] * scale) // multiple * multiple) for side in ("width", "height"))
    high = LIMITS["size"][1]
    if max(width, height) > high or width * height > LIMITS["pixels"]:
        raise ValidationError(f"hires scale {scale:g} makes {req['width']}x{req['height']} into {width}x{height}, "
                              f"more than the limit ({high} a side, {LIMITS['pixels']} pixels): lower the scale or "
                              "the size")
    return hires.with_(scale=scale, steps=steps, denoise=denoise)


def _part(cls: type[_Part], where: str, value: Any, usage: str) -> _Part:
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):  # from JSON or metadata
        try:
            return cls(**value)
        except TypeError as exc:
            raise ValidationError(f"{where}: {exc}") from None
    if not isinstance(value, cls):
        raise ValidationError(f"{where} must be {usage}")
    return value


def _lora(i: int, lora: Any) -> Lora:
    lora = _part(Lora, f"loras[{i}]", lora, "sdcompose.Lora(id, weight)")
    _id(f"loras[{i}] id", lora.id)
    return Lora(lora.id, _number(f"loras[{i}] ({lora.id}) weight", lora.weight, *LIMITS["lora_weight"]))


def _control(i: int, c: Any) -> Control:
    c = _part(Control, f"controls[{i}]", c, "sdcompose.Control(id, image, ...)")
    _id(f"controls[{i}] id", c.id)
    where = f"controls[{i}] ({c.id})"
    _id(f"{where} model", c.model, optional=True)
    if not isinstance(c.preprocessed, bool):
        raise ValidationError(f"{where} preprocessed must be true or false")
    if c.image is None:
        raise ValidationError(f"{where} needs an image (or a pose .json for plugins that read one)")
    weight = _number(f"{where} weight", c.weight, *LIMITS["control_weight"])
    start = _number(f"{where} start", c.start, *bounds(Control, "start"))
    end = _number(f"{where} end", c.end, *bounds(Control, "end"))
    if start >= end:
        raise ValidationError(f"{where} start ({start}) must be below end ({end})")
    if c.resize_mode not in RESIZE_MODES:
        raise ValidationError(f"{where} resize_mode must be one of {', '.join(RESIZE_MODES)}")
    if c.control_mode not in CONTROL_MODES:
        raise ValidationError(f"{where} control_mode must be one of {', '.join(CONTROL_MODES)}")
    if not isinstance(c.params, dict) or not all(isinstance(k, str) for k in c.params):
        raise ValidationError(f"{where} params must be a mapping of names to values")
    return c.with_(weight=weight, start=start, end=end, params=dict(c.params))


def parse_size(value: Any, name: str) -> int:
    """Bytes from ``4GB``, ``4 GiB``, ``512MB``, ``2.5g`` or a whole number of bytes; units are binary (1GB = 2**30)."""
    text = str(value).strip() if isinstance(value, str) else None
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    else:
        match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmgt])i?b?|(\d+)\s*b", text or "", re.IGNORECASE)
        if not match:
            raise ValidationError(f"{name} must be a size such as 4GB or 512MB, got {_short(value)}")
        try:
            size = int(match[3]) if match[3] else int(float(match[1]) * 1024 ** " kmgt".index(match[2].lower()))
        except OverflowError:  # hundreds of digits: a float of them is infinite
            size = 2**51
    if not 256 * 2**20 <= size <= 2**50:
        raise ValidationError(f"{name} must be between 256MB and 1024TB, got {_short(value)}")
    return size


def _number(name: str, value: Any, low: float, high: float, integer: bool = False) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            value = float(value) if not integer else int(str(value), 10)
        except (TypeError, ValueError, OverflowError):
            raise ValidationError(f"{name} must be a number, got {_short(value)}") from None
    try:
        finite = math.isfinite(value)
    except OverflowError:  # an int too large for a float
        digits = int(value.bit_length() * math.log10(2)) + 1
        raise ValidationError(f"{name} must be between {_bound(low)} and {_bound(high)}, got a {digits}-digit number") \
            from None
    if not finite:
        raise ValidationError(f"{name} must be a finite number, got {value!r}")
    if integer and value != int(value):
        raise ValidationError(f"{name} must be a whole number, got {value!r}")
    if not low <= value <= high:
        raise ValidationError(f"{name} must be between {_bound(low)} and {_bound(high)}, got {_short(value)}")
    return int(value) if integer else float(value)


def _bound(limit: float) -> str:
    """A limit as written: every digit of a whole number (a seed's 9223372036854775807, not 9.22337e+18)."""
    return str(limit) if isinstance(limit, int) else f"{limit:g}"


def _short(value: Any) -> str:
    """repr of a bad value, cut short so a huge input cannot flood an error message."""
    try:
        text = repr(value)
    except Exception:  # an int past Python's digit limit, or a broken __repr__
        return f"a {type(value).__name__} that cannot be shown"
    return text if len(text) <= 80 else text[:77] + "..."


def _text(name: str, text: Any, limit: int) -> str:
    if not isinstance(text, str):
        raise ValidationError(f"{name} must be text, got {type(text).__name__}")
    if len(text) > limit:
        raise ValidationError(f"{name} is {len(text)} characters; the limit is {limit}")
    if "\x00" in text:
        raise ValidationError(f"{name} contains a NUL character")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError(f"{name} contains invalid Unicode (a lone surrogate)") from None
    return text


def _id(name: str, value: Any, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value or len(value) > _ID["max_length"]:
        raise ValidationError(f"{name} must be a non-empty id of at most {_ID['max_length']} characters, "
                              f"got {_short(value)}")
    return value
