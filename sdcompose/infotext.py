"""AUTOMATIC1111's infotext (the ``parameters`` text): written for sdcompose's own images, read from others'.

``write(meta)`` follows A1111's format exactly: the prompt (LoRAs as ``<lora:name:weight>`` tags), a
``Negative prompt:`` line, then one line of ``Key: value`` fields (a value holding a comma, colon or newline
is JSON-quoted, as A1111 quotes it), with A1111's sampler names, ``Schedule type``, ``Model hash`` and
sd-webui-controlnet's ``ControlNet N`` unit format. The ``sdcompose`` JSON chunk stays the source of truth.

``parse(text)`` is A1111's own reading of such text; ``to_request`` turns it into sdcompose request
fields and lists every field it could not use. ``read_text`` finds the text in a PNG (tEXt, zTXt, iTXt),
or a JPEG's or WebP's EXIF UserComment, without decoding pixels; ``foreign`` tells what made an image.
"""
from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Collection

from sdcompose import samplers
from sdcompose.errors import ValidationError, suggest
from sdcompose.prompt_syntax import TAG
from sdcompose.request import LANCZOS, LIMITS

MAX_PARAMETERS = 100_000  # characters of parameters text read (A1111 prompts are a few thousand at most)
_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_SIZE = re.compile(r"^(\d+)x(\d+)$")
# sd-webui-controlnet's names for sdcompose's conditioners, resize and control modes
MODULES = {"canny": "canny", "depth": "depth_anything_v2", "pose": "openpose", "softedge": "softedge_pidinet",
           "lineart": "lineart_realistic"}
RESIZE = {"just_resize": "Just Resize", "crop_and_resize": "Crop and Resize", "resize_and_fill": "Resize and Fill"}
CONTROL = {"balanced": "Balanced", "prompt_first": "My prompt is more important",
           "control_first": "ControlNet is more important"}
# A1111's hires-fix upscaler names -> sdcompose's: "lanczos" or a models.yaml upscaler id. Latent upscaling is
# not in sdcompose: the Latent names resize the decoded image (Lanczos) before the second pass.
HR_UPSCALERS = {"Latent": LANCZOS, "Latent (antialiased)": LANCZOS, "Latent (bicubic)": LANCZOS,
                "Latent (bicubic antialiased)": LANCZOS, "Latent (nearest)": LANCZOS,
                "Latent (nearest-exact)": LANCZOS, "None": LANCZOS, "Lanczos": LANCZOS,
                "R-ESRGAN 4x+": "realesrgan-x4plus", "R-ESRGAN 4x+ Anime6B": "realesrgan-x4plus-anime",
                "R-ESRGAN 2x+": "realesrgan-x2plus"}
HIRES_FIELDS = ("Hires upscale", "Hires resize", "Hires steps", "Hires upscaler")
USED = ("Steps", "Sampler", "Schedule type", "CFG scale", "Seed", "Size", "Model hash", "Model", "Clip skip",
        "Denoising strength", *HIRES_FIELDS)  # Denoising strength without hires fields: dropped, with why
NOT_SETTINGS = ("Version", "Lora hashes", "Emphasis")  # describe the image; nothing to restore


def quote(text: str) -> str:
    """A1111's quoting of a field value."""
    text = str(text)
    return text if not any(c in text for c in ",\n:") else json.dumps(text, ensure_ascii=False)


def unquote(text: str) -> str:
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def short_hash(sha256: str | None, length: int = 10) -> str | None:
    """A1111's short hash: the first 10 hex digits of the file's sha256 (12 for LoRAs)."""
    return sha256[:length] if sha256 else None


def write(meta: dict[str, Any]) -> str:
    """The A1111 infotext of one image's sdcompose metadata."""
    req = meta["request"]
    prompt = req["prompt"]
    if req.get("prompt_syntax", "a1111") == "literal":  # A1111 would read brackets as emphasis
        prompt = re.sub(r"([\\()\[\]])", r"\\\1", prompt)
    tags = "".join(f" <lora:{lora['id']}:{lora['weight']:g}>" for lora in req["loras"])
    lines = [(prompt + tags).strip() if tags else prompt]
    if req["negative_prompt"]:
        lines.append(f"Negative prompt: {req['negative_prompt']}")
    models = meta.get("models", {})
    sampler, schedule = samplers.to_a1111(req["scheduler"])
    fields: dict[str, Any] = {"Steps": req["steps"], "Sampler": sampler, "Schedule type": schedule,
                              "CFG scale": req["guidance"], "Seed": meta["seed"], "Size": f"{req['width']}x{req['height']}",
                              "Model hash": short_hash(_single_hash(models.get(req["model"]))), "Model": req["model"]}
    if meta.get("task", "txt2img") != "txt2img":
        fields["Denoising strength"] = req["strength"]
    if req.get("clip_skip", 1) > 1:
        fields["Clip skip"] = req["clip_skip"]
    hires = req.get("hires")
    if hires:  # A1111's hires fix fields; Hires steps 0 (the first pass's count) is left out, as A1111 does
        fields |= {"Denoising strength": hires["denoise"], "Hires upscale": hires["scale"],
                   "Hires steps": hires["steps"] or None,
                   "Hires upscaler": "Lanczos" if hires["upscaler"] == LANCZOS else hires["upscaler"]}
    controlnets = [model_id for model_id, info in models.items() if info.get("kind") == "controlnet"]
    for i, control in enumerate(req["controls"]):
        used = controlnets[i] if len(controlnets) == len(req["controls"]) else None
        fields[f"ControlNet {i}"] = _unit(control, models, used)
    lora_hashes = [f"{model_id}: {short_hash(_single_hash(info), 12)}" for model_id, info in models.items()
                   if info.get("kind") == "lora" and _single_hash(info)]
    if lora_hashes:
        fields["Lora hashes"] = ", ".join(lora_hashes)
    ti_hashes = [f"{model_id}: {short_hash(_single_hash(info), 12)}" for model_id, info in models.items()
                 if info.get("kind") == "embedding" and _single_hash(info)]
    if ti_hashes:
        fields["TI hashes"] = ", ".join(ti_hashes)
    fields["Version"] = f"sdcompose {meta.get('versions', {}).get('sdcompose', '')}".strip()
    lines.append(", ".join(f"{key}: {quote(value)}" for key, value in fields.items() if value is not None))
    return "\n".join(lines)


def _single_hash(info: dict[str, Any] | None) -> str | None:
    hashes = (info or {}).get("sha256") or {}
    return next(iter(hashes.values())) if len(hashes) == 1 else None


def _unit(control: dict[str, Any], models: dict[str, Any], model_id: str | None) -> str:
    """One ControlNet unit in sd-webui-controlnet's infotext format."""
    model = control.get("model") or model_id or "None"
    digest = short_hash(_single_hash(models.get(model)), 8)
    params = control.get("params", {})
    parts = {"Module": "none" if control.get("preprocessed") else MODULES.get(control["id"], control["id"]),
             "Model": f"{model} [{digest}]" if digest else model, "Weight": control["weight"],
             "Resize Mode": RESIZE.get(control["resize_mode"], control["resize_mode"]),
             "Processor Res": params.get("resolution", 512),
             "Threshold A": params.get("low_threshold"), "Threshold B": params.get("high_threshold"),
             "Guidance Start": control["start"], "Guidance End": control["end"], "Pixel Perfect": False,
             "Control Mode": CONTROL.get(control["control_mode"], control["control_mode"])}
    return ", ".join(f"{k}: {v}" for k, v in parts.items() if v is not None)


def parse(text: str) -> dict[str, str]:
    """A1111's reading of an infotext: ``Prompt``, ``Negative prompt`` and each field (``Size-1``/``Size-2``)."""
    if not isinstance(text, str):
        raise ValidationError("the image's parameters text is not text")
    if len(text) > MAX_PARAMETERS:
        raise ValidationError(f"the image's parameters text is {len(text)} characters, more than the "
                              f"{MAX_PARAMETERS} read as A1111 settings")
    *lines, last = text.strip().split("\n")
    if len(_PARAM.findall(last)) < 3:
        lines.append(last)
        last = ""
    prompt, negative, in_negative = [], [], False
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            in_negative, line = True, line[16:].strip()
        (negative if in_negative else prompt).append(line)
    out = {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative)}
    for key, value in _PARAM.findall(last):
        value = unquote(value.strip())
        size = _SIZE.match(value)
        if size:
            out[f"{key}-1"], out[f"{key}-2"] = size.group(1), size.group(2)
        out[key] = value
    return out


@dataclass
class Restored:
    """Request fields restored from another tool's settings, and what could not be used."""

    fields: dict[str, Any]
    dropped: list[str] = field(default_factory=list)
    tool: str = "AUTOMATIC1111"
    note: str = ("best effort: A1111's samplers and noise are not diffusers', so the image is similar, not the "
                 "same")

    def describe(self) -> dict[str, Any]:
        return {"tool": self.tool, "dropped": self.dropped, "note": self.note}

    def require_model(self) -> None:
        if "model" not in self.fields:
            raise ValidationError(f"this image was made with a model that is not here ({self.dropped[-1]}): name one "
                                  "(reproduce --model ID, or model=)")


def to_request(params: dict[str, str], find_model: Callable[[str | None, str | None], str | None],
               find_lora: Callable[[str], bool], model: str | None = None,
               embeddings: Collection[str] = (), find_upscaler: Callable[[str], str | None] = HR_UPSCALERS.get
               ) -> Restored:
    """Request fields from parsed A1111 parameters (``parse``).

    ``find_model(name, short_hash)``: a base model id here, or None; ``find_lora(name)``: whether a
    ``<lora:name>`` tag resolves; ``model``: use this base whatever the text says; ``embeddings``: the
    textual-inversion names known here (``TI hashes`` naming others are listed as dropped);
    ``find_upscaler(name)``: the upscaler a ``Hires upscaler`` name means here, or None.
    """
    if not any(key in params for key in ("Steps", "Sampler", "Seed")):
        raise ValidationError("the image's parameters text is not A1111 settings (no 'Steps: ..., Sampler: ...' line)")
    out: dict[str, Any] = {"negative_prompt": params.get("Negative prompt", "")}
    dropped: list[str] = []

    def tag(match: re.Match) -> str:
        kind, name = match.group(1), match.group(2).split(":")[0]
        if kind.lower() in ("lora", "lyco") and find_lora(name):
            return match.group(0)
        dropped.append(f"{match.group(0)} (no such LoRA here)" if kind.lower() in ("lora", "lyco")
                       else f"{match.group(0)} (not supported here)")
        return ""

    out["prompt"] = TAG.sub(tag, params.get("Prompt", ""))
    number = _numbers(params, out, dropped)
    sampler = params.get("Sampler")
    if sampler:
        try:
            out["scheduler"] = samplers.canonical(sampler, params.get("Schedule type", "Automatic"))
        except ValidationError:
            dropped.append(f"Sampler: {sampler} (no such sampler here; used {samplers.SAMPLERS['dpmpp_2m'][0]})")
    number("Steps", "steps", int)
    number("CFG scale", "guidance", float)
    number("Seed", "seed", int)
    number("Size-1", "width", int)
    number("Size-2", "height", int)
    number("Clip skip", "clip_skip", int)
    if any(key in params for key in HIRES_FIELDS):
        out["hires"] = _hires(params, out, find_upscaler, dropped)
    elif "Denoising strength" in params:
        dropped.append(f"Denoising strength: {params['Denoising strength'][:20]} (img2img: the source image is not "
                       "in the file)")
    for name in ("width", "height"):
        step = LIMITS["size_multiple"]
        if name in out and out[name] % step:
            dropped.append(f"{name} {out[name]} (sdcompose needs a multiple of {step}: used {out[name] // step * step})")
            out[name] = max(LIMITS["size"][0], out[name] // step * step)
    found = model or find_model(params.get("Model"), params.get("Model hash"))
    if found:
        out["model"] = found
    else:
        dropped.append(f"Model: {params.get('Model', '?')[:80]} (hash {params.get('Model hash', '?')[:12]}): no base "
                       "model here matches its hash or name")
    dropped += _missing_embeddings(params.get("TI hashes", ""), embeddings)
    for key, value in params.items():
        if key in ("Prompt", "Negative prompt", "TI hashes") or key in USED or key in NOT_SETTINGS or re.fullmatch(r".+-[12]", key):
            continue
        if key.startswith("ControlNet"):
            dropped.append(f"{key} ({value[:80]}): the unit's input image is not in the file")
        else:
            dropped.append(f"{key}: {value[:80]}")
    return Restored(out, dropped)


def _hires(params: dict[str, str], out: dict[str, Any], find_upscaler: Callable[[str], str | None],
           dropped: list[str]) -> dict[str, Any]:
    """The request's ``hires`` from A1111's hires fix fields (its ``Denoising strength`` is the second pass's); the
    scale from ``Hires upscale``, or from ``Hires resize: WxH`` over the first pass's size."""
    hires: dict[str, Any] = {}
    number = _numbers(params, hires, dropped)
    number("Hires upscale", "scale", float)
    number("Hires steps", "steps", int)
    number("Denoising strength", "denoise", float)
    resize = _SIZE.match(params.get("Hires resize", ""))
    if resize and "scale" not in hires and out.get("width") and out.get("height"):
        hires["scale"] = max(int(resize[1]) / out["width"], int(resize[2]) / out["height"])
    name = params.get("Hires upscaler", "Latent")
    found = find_upscaler(name)
    if found is None:
        dropped.append(f"Hires upscaler: {name[:80]} (no such upscaler here; used lanczos)")
    elif name.startswith("Latent"):
        dropped.append(f"Hires upscaler: {name[:80]} (sdcompose has no latent upscale: the first pass is resized "
                       "with lanczos)")
    hires["upscaler"] = found or LANCZOS
    return hires


def _missing_embeddings(ti_hashes: str, known: Collection[str]) -> list[str]:
    """One dropped line per embedding a ``TI hashes`` field names that is not here (its name is in the prompt,
    where it stays as text)."""
    lowered = {name.lower() for name in known}
    out = []
    for item in ti_hashes.split(",")[:100]:
        name = item.rsplit(":", 1)[0].strip()[:80]
        if name and name.lower() not in lowered:
            hint = suggest(name, known).strip()[1:-1]
            out.append(f"TI hashes: {name} (no such embedding here{'; ' + hint if hint else ''})")
    return out


def _numbers(params: dict[str, str], out: dict[str, Any], dropped: list[str]) -> Callable[..., None]:
    def number(key: str, name: str, kind: type) -> None:
        if key not in params:
            return
        try:
            value = kind(float(params[key])) if kind is int else kind(params[key])
        except (ValueError, OverflowError):
            dropped.append(f"{key}: {params[key][:40]} (not a number)")
            return
        out[name] = value
    return number


# ---- reading the text from a file ------------------------------------------------------------------------
COMFY_KEYS = ("prompt", "workflow")


@dataclass
class Found:
    """What an image says about how it was made."""

    tool: str | None  # "sdcompose", "AUTOMATIC1111", "ComfyUI" or None
    text: dict[str, str]  # the raw text chunks / EXIF comment, by key

    @property
    def raw(self) -> str:
        """Every text found, as it is (shown in Image info whatever happens next)."""
        return "\n\n".join(f"[{key}]\n{value}" for key, value in self.text.items() if key != "sdcompose-inputs")


def foreign(source: Any) -> Found:
    """The text an image carries and the tool that wrote it."""
    text = read_text(source)
    if "sdcompose" in text:
        tool = "sdcompose"
    elif "parameters" in text:
        tool = "AUTOMATIC1111"
    elif any(key in text for key in COMFY_KEYS):
        tool = "ComfyUI"
    else:
        tool = None
    return Found(tool, text)


def read_text(source: Any) -> dict[str, str]:
    """Text chunks of a PNG, or the EXIF UserComment of a JPEG/WebP (as ``parameters``); pixels are not decoded."""
    from sdcompose.images import _read_bytes
    from sdcompose.metadata import PNG_SIGNATURE, png_text
    if hasattr(source, "info") and hasattr(source, "getexif"):  # a PIL image
        info = getattr(source, "text", None) or source.info
        text = {k: v for k, v in info.items() if isinstance(v, str)}
        comment = _user_comment(source)
        return text | ({"parameters": comment} if comment and "parameters" not in text else {})
    data = _read_bytes(source, "image")
    if data.startswith(PNG_SIGNATURE):
        return png_text(data)
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(io.BytesIO(data)) as image:
            comment = _user_comment(image)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError):
        raise ValidationError("this file is not a PNG, JPEG or WebP image sdcompose can read settings from") from None
    return {"parameters": comment} if comment else {}


def _user_comment(image: Any) -> str | None:
    """EXIF UserComment as A1111 writes it (piexif's "UNICODE" prefix, UTF-16 big-endian) or ASCII."""
    try:
        raw = image.getexif().get_ifd(0x8769).get(0x9286)
    except Exception:  # a damaged EXIF block: nothing to read
        return None
    if isinstance(raw, str):
        return raw.strip("\0") or None
    if not isinstance(raw, bytes) or len(raw) <= 8:
        return None
    prefix, body = raw[:8], raw[8:]
    if prefix.startswith(b"UNICODE"):
        encoding = "utf-16-be" if body[:1] == b"\0" else "utf-16-le"
    else:
        encoding = "utf-8"
    return body.decode(encoding, errors="replace").strip("\0") or None
