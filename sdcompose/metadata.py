"""PNG metadata: every image carries what is needed to make it again.

Three text chunks: ``sdcompose`` (JSON: parameters, model ids and file hashes, plugin
versions, library versions, device and dtype), ``sdcompose-inputs`` (compressed: the
control maps, init image and mask as PNG, so reproducing needs no other file) and
``parameters`` (the AUTOMATIC1111-style summary other tools read).
"""
from __future__ import annotations

import base64
import io
import json
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin

from sdcompose.errors import ValidationError
from sdcompose.images import open_image

KEY, INPUTS_KEY = "sdcompose", "sdcompose-inputs"
FORMAT = 1
MAX_TEXT = 32 * 1024 * 1024
LIBRARIES = ("sdcompose", "torch", "diffusers", "transformers", "peft", "safetensors", "controlnet-aux", "numpy", "pillow")


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def encode_image(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def a1111_parameters(meta: dict[str, Any]) -> str:
    req = meta["request"]
    lines = [req["prompt"]]
    if req["negative_prompt"]:
        lines.append(f"Negative prompt: {req['negative_prompt']}")
    fields = [f"Steps: {req['steps']}", f"Sampler: {req['scheduler']}", f"CFG scale: {req['guidance']}",
              f"Seed: {meta['seed']}", f"Size: {req['width']}x{req['height']}", f"Model: {req['model']}"]
    fields += [f"Lora: {lora['id']}:{lora['weight']}" for lora in req["loras"]]
    fields += [f"ControlNet {i}: {c['id']} weight {c['weight']}" for i, c in enumerate(req["controls"])]
    return "\n".join(lines + [", ".join(fields)])


def save_png(image: Image.Image, meta: dict[str, Any], inputs: dict[str, Image.Image], path: Path) -> Path:
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", a1111_parameters(meta))
    info.add_itxt(KEY, json.dumps(meta, sort_keys=True), zip=True)
    if inputs:
        info.add_itxt(INPUTS_KEY, json.dumps({k: encode_image(v) for k, v in inputs.items()}), zip=True)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    image.save(tmp, format="PNG", pnginfo=info)
    tmp.replace(path)
    return path


def read_png(source: Any) -> tuple[dict[str, Any], dict[str, Image.Image]]:
    """The metadata and embedded input images of a PNG made by sdcompose; ValidationError otherwise."""
    image = open_image(source, "PNG")
    text = getattr(image, "text", None) or image.info
    raw = text.get(KEY)
    if not isinstance(raw, str):
        raise ValidationError("this image carries no sdcompose metadata (was it made by sdcompose, "
                              "and saved without stripping its PNG text?)")
    if len(raw) > MAX_TEXT:
        raise ValidationError("the sdcompose metadata in this image is too large")
    try:
        meta = json.loads(raw)
    except ValueError:
        raise ValidationError("the sdcompose metadata in this image is not valid JSON") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("request"), dict):
        raise ValidationError(f"unsupported sdcompose metadata (format {meta.get('format') if isinstance(meta, dict) else '?'})")
    inputs = {}
    blob = text.get(INPUTS_KEY)
    if isinstance(blob, str) and len(blob) <= MAX_TEXT:
        try:
            encoded = json.loads(blob)
        except ValueError:
            raise ValidationError("the embedded inputs in this image are not valid JSON") from None
        if not isinstance(encoded, dict):
            raise ValidationError("the embedded inputs in this image are malformed")
        for name, data in encoded.items():
            try:
                inputs[str(name)] = open_image(base64.b64decode(str(data), validate=True), f"embedded {name}")
            except ValueError:
                raise ValidationError(f"embedded {name} in this image is not valid base64") from None
    return meta, inputs
