"""A generation request as typed, pure data, checked before any model loads or GPU work starts."""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from sdcompose.errors import ValidationError
from sdcompose.errors import quote as _short

SCHEDULERS = ("ddim", "euler", "euler_a", "dpmpp_2m", "dpmpp_2m_karras", "unipc")
RESIZE_MODES = ("just_resize", "crop_and_resize", "resize_and_fill")
CONTROL_MODES = ("balanced", "prompt_first", "control_first")
MEMORY_MODES = ("auto", "none", "vae_slicing", "vae_tiling", "model_offload", "group_offload", "sequential_offload")
ATTENTION_BACKENDS = ("auto", "sdpa", "xformers", "sliced")
LIMITS = dict(size=(64, 4096), pixels=4096 * 4096, steps=(1, 500), guidance=(0.0, 50.0), batch=(1, 16),
              prompt_chars=20_000, controls=8, loras=16, lora_weight=(-4.0, 4.0), control_weight=(0.0, 4.0),
              seed=(0, 2**63 - 1))


@dataclass
class Control:
    """One ControlNet unit: a conditioner plugin id, its input, and how strongly and when it acts."""

    id: str
    image: Any = None  # path, PIL image, numpy array, or parsed JSON for plugins that take it
    weight: float = 1.0
    start: float = 0.0
    end: float = 1.0
    params: dict[str, Any] = field(default_factory=dict)
    model: str | None = None  # a models.yaml ControlNet id; default: the plugin's for the base family
    resize_mode: str = "crop_and_resize"
    control_mode: str = "balanced"
    preprocessed: bool = False  # True: ``image`` already is the control map; the preprocessor is skipped


@dataclass
class Lora:
    id: str  # a models.yaml LoRA id
    weight: float = 1.0


@dataclass
class GenerationRequest:
    prompt: str = ""
    negative_prompt: str = ""
    model: str = "tiny-sd15"
    controls: list[Control] = field(default_factory=list)
    loras: list[Lora] = field(default_factory=list)
    init_image: Any = None
    strength: float = 0.75
    mask: Any = None
    width: int = 512
    height: int = 512
    steps: int = 20
    guidance: float = 7.5
    scheduler: str = "dpmpp_2m"
    seed: int | None = None
    batch: int = 1
    add_trigger_words: bool = False
    memory: str = "auto"  # a MEMORY_MODES name; "auto" plans for ``vram`` (docs/memory.md)
    attention: str = "auto"  # an ATTENTION_BACKENDS name
    vram: int | str | None = None  # memory budget, e.g. "4GB"; None: what the card has free
    fast: bool = False  # compiled UNet/ControlNet replayed as CUDA graphs (CUDA only)

    @property
    def task(self) -> str:
        if self.mask is not None:
            return "inpaint"
        return "img2img" if self.init_image is not None else "txt2img"

    def with_(self, **changes: Any) -> "GenerationRequest":
        return replace(self, **changes)

    def summary(self) -> dict[str, Any]:
        """Every parameter as JSON-ready data (images replaced by a marker)."""
        data = asdict(self)
        for key in ("init_image", "mask"):
            data[key] = None if data[key] is None else "<image>"
        for control in data["controls"]:
            control["image"] = None if control["image"] is None else "<image>"
        return data


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
        raise ValidationError(f"{name} must be between {low:g} and {high:g}, got a {digits}-digit number") from None
    if not finite:
        raise ValidationError(f"{name} must be a finite number, got {value!r}")
    if integer and value != int(value):
        raise ValidationError(f"{name} must be a whole number, got {value!r}")
    if not low <= value <= high:
        raise ValidationError(f"{name} must be between {low:g} and {high:g}, got {_short(value)}")
    return int(value) if integer else float(value)


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
    if not isinstance(value, str) or not value or len(value) > 200:
        raise ValidationError(f"{name} must be a non-empty id of at most 200 characters, got {_short(value)}")
    return value


def validate(req: GenerationRequest) -> GenerationRequest:
    """Return a normalised copy of ``req`` or raise ValidationError with one clear sentence."""
    if not isinstance(req, GenerationRequest):
        raise ValidationError(f"expected a GenerationRequest, got {type(req).__name__}")
    for name in ("prompt", "negative_prompt"):
        _text(name, getattr(req, name), LIMITS["prompt_chars"])
    _id("model (a models.yaml id)", req.model)
    if not isinstance(req.add_trigger_words, bool):
        raise ValidationError(f"add_trigger_words must be true or false, got {_short(req.add_trigger_words)}")
    for name in ("controls", "loras"):
        if not isinstance(getattr(req, name), (list, tuple)):
            raise ValidationError(f"{name} must be a list, got {type(getattr(req, name)).__name__}")
    low, high = LIMITS["size"]
    size = {}
    for name in ("width", "height"):
        value = _number(name, getattr(req, name), low, high, integer=True)
        if value % 8:
            raise ValidationError(f"{name} must be a multiple of 8, got {value} (try {value // 8 * 8 or 8})")
        size[name] = value
    if size["width"] * size["height"] > LIMITS["pixels"]:
        raise ValidationError(f"{size['width']}x{size['height']} is more than {LIMITS['pixels']} pixels")
    steps = _number("steps", req.steps, *LIMITS["steps"], integer=True)
    guidance = _number("guidance", req.guidance, *LIMITS["guidance"])
    strength = _number("strength", req.strength, 0.0, 1.0)
    if req.init_image is not None and strength == 0:
        raise ValidationError("strength must be above 0 for img2img/inpaint (0 would return the input unchanged)")
    if req.mask is not None and req.init_image is None:
        raise ValidationError("a mask needs an init_image to paint into")
    batch = _number("batch", req.batch, *LIMITS["batch"], integer=True)
    seed = req.seed
    if seed is not None:
        if isinstance(seed, (int, float)) and not isinstance(seed, bool) and seed < 0:
            raise ValidationError(f"seed must be >= 0 (or None for a random seed), got {_short(seed)}")
        seed = _number("seed", seed, LIMITS["seed"][0], LIMITS["seed"][1] - batch, integer=True)
    if not isinstance(req.scheduler, str) or req.scheduler not in SCHEDULERS:
        from sdcompose.errors import suggest
        raise ValidationError(f"scheduler {_short(req.scheduler)} is not one of {', '.join(SCHEDULERS)}"
                              f"{suggest(req.scheduler if isinstance(req.scheduler, str) else '', SCHEDULERS)}")
    if len(req.controls) > LIMITS["controls"]:
        raise ValidationError(f"at most {LIMITS['controls']} controls per request, got {len(req.controls)}")
    if len(req.loras) > LIMITS["loras"]:
        raise ValidationError(f"at most {LIMITS['loras']} LoRAs per request, got {len(req.loras)}")
    controls = [_control(i, c) for i, c in enumerate(req.controls)]
    loras = []
    for i, lora in enumerate(req.loras):
        if not isinstance(lora, Lora):
            raise ValidationError(f"loras[{i}] must be sdcompose.Lora(id, weight)")
        _id(f"loras[{i}] id", lora.id)
        loras.append(Lora(lora.id, _number(f"loras[{i}] ({lora.id}) weight", lora.weight, *LIMITS["lora_weight"])))
    if len({lora.id for lora in loras}) != len(loras):
        raise ValidationError("the same LoRA is listed twice; give it one weight")
    for name, choices in (("memory", MEMORY_MODES), ("attention", ATTENTION_BACKENDS)):
        if getattr(req, name) not in choices:
            raise ValidationError(f"{name} {_short(getattr(req, name))} is not one of {', '.join(choices)}")
    if not isinstance(req.fast, bool):
        raise ValidationError(f"fast must be true or false, got {_short(req.fast)}")
    vram = None if req.vram is None else parse_size(req.vram, "vram")
    return replace(req, width=size["width"], height=size["height"], steps=steps, guidance=guidance,
                   strength=strength, batch=batch, seed=seed, controls=controls, loras=loras, vram=vram)


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


def _control(i: int, c: Any) -> Control:
    if not isinstance(c, Control):
        raise ValidationError(f"controls[{i}] must be sdcompose.Control(id, image, ...)")
    _id(f"controls[{i}] id", c.id)
    where = f"controls[{i}] ({c.id})"
    _id(f"{where} model", c.model, optional=True)
    if not isinstance(c.preprocessed, bool):
        raise ValidationError(f"{where} preprocessed must be true or false")
    if c.image is None:
        raise ValidationError(f"{where} needs an image (or a pose .json for plugins that read one)")
    weight = _number(f"{where} weight", c.weight, *LIMITS["control_weight"])
    start = _number(f"{where} start", c.start, 0.0, 1.0)
    end = _number(f"{where} end", c.end, 0.0, 1.0)
    if start >= end:
        raise ValidationError(f"{where} start ({start}) must be below end ({end})")
    if c.resize_mode not in RESIZE_MODES:
        raise ValidationError(f"{where} resize_mode must be one of {', '.join(RESIZE_MODES)}")
    if c.control_mode not in CONTROL_MODES:
        raise ValidationError(f"{where} control_mode must be one of {', '.join(CONTROL_MODES)}")
    if not isinstance(c.params, dict) or not all(isinstance(k, str) for k in c.params):
        raise ValidationError(f"{where} params must be a mapping of names to values")
    return replace(c, weight=weight, start=start, end=end, params=dict(c.params))
