"""PNG metadata: every image carries what is needed to make it again.

Three text chunks: ``sdcompose`` (JSON: parameters, model ids and file hashes, plugin
versions, library versions, device and dtype), ``sdcompose-inputs`` (compressed: the
control maps, init image and mask as PNG, so reproducing needs no other file) and
``parameters`` (the AUTOMATIC1111-style summary other tools read).
"""
from __future__ import annotations

import base64
import functools
import io
import json
import os
import platform
import re
import struct
import tempfile
import zlib
from collections.abc import Iterator, Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin

from sdcompose.errors import ValidationError
from sdcompose.images import Deferred, PixelBudget, _read_bytes, open_image, pixel_budget

KEY, INPUTS_KEY = "sdcompose", "sdcompose-inputs"
FORMAT = 1
PARTIAL = ".partial"  # the suffix of a file still being written
MAX_TEXT = 32 * 1024 * 1024
LIBRARIES = ("sdcompose", "torch", "diffusers", "transformers", "peft", "safetensors", "controlnet-aux", "numpy", "pillow")


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape an image (read once per process: a lookup costs milliseconds)."""
    return dict(_versions())


@functools.cache
def _versions() -> dict[str, str]:
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
    """The ``parameters`` chunk: A1111's infotext (sdcompose/infotext.py)."""
    from sdcompose.infotext import write
    return write(meta)


def png_info(meta: dict[str, Any], inputs: dict[str, Image.Image]) -> PngImagePlugin.PngInfo:
    """The three text chunks of an sdcompose PNG."""
    info = PngImagePlugin.PngInfo()
    if "request" in meta:  # a generation (an upscale has no prompt to tell)
        info.add_text("parameters", a1111_parameters(meta))
    info.add_itxt(KEY, json.dumps(meta, sort_keys=True), zip=True)
    if inputs:
        info.add_itxt(INPUTS_KEY, json.dumps({k: encode_image(v) for k, v in inputs.items()}), zip=True)
    return info


def png_bytes(image: Image.Image, meta: dict[str, Any], inputs: dict[str, Image.Image]) -> bytes:
    """The PNG ``save_png`` writes, as bytes (what the HTTP API answers)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=png_info(meta, inputs))
    return buf.getvalue()


def save_png(image: Image.Image, meta: dict[str, Any], inputs: dict[str, Image.Image], path: Path) -> Path:
    return write_atomic(Path(path), png_bytes(image, meta, inputs))


def write_atomic(path: Path, data: bytes) -> Path:
    """Write ``path`` whole or not at all: a unique temp file beside it, flushed to disk, then renamed over it.

    A process killed meanwhile leaves at most a hidden ``.NAME.*.partial`` file, never a truncated ``path``.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=PARTIAL)
    try:
        with os.fdopen(fd, "wb") as file:
            os.fchmod(file.fileno(), 0o666 & ~_umask())  # mkstemp makes 0600; a saved image is an ordinary file
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@functools.cache
def _umask() -> int:
    mask = os.umask(0o22)
    os.umask(mask)
    return mask


def read_png(source: Any) -> tuple[dict[str, Any], "EmbeddedInputs"]:
    """The metadata and embedded input images of a PNG made by sdcompose; ValidationError otherwise.

    The text chunks are read straight from the file (each inflated to at most MAX_TEXT), so large
    embedded inputs work and a hostile file cannot make the reader allocate more than that. The embedded
    images are not decoded here: each is a ``Deferred``, decoded when a request uses it (EmbeddedInputs).
    """
    if isinstance(source, Image.Image):
        text = getattr(source, "text", None) or source.info
    else:
        text = png_text(_read_bytes(source, "PNG"))
    raw = text.get(KEY)
    if not isinstance(raw, str):
        raise ValidationError("this image carries no sdcompose metadata (was it made by sdcompose, "
                              "and saved without stripping its PNG text?)")
    meta = _json(raw, "the sdcompose metadata in this image")
    _check_meta(meta)
    encoded: dict[str, Any] = {}
    blob = text.get(INPUTS_KEY)
    if isinstance(blob, str):
        encoded = _json(blob, "the embedded inputs in this image")
        if not isinstance(encoded, dict):
            raise ValidationError("the embedded inputs in this image are malformed")
    return meta, EmbeddedInputs(encoded)


class EmbeddedInputs(Mapping):
    """A PNG's embedded input images by name (``control-N``, ``ip-adapter-N-J``, ``adapter-N-J``, ``init_image``, ``mask``), each a ``Deferred``.

    Listing them decodes nothing. Each one a request opens is decoded then, as an untrusted image, and
    charged to this PNG's pixel budget as well as to the request's: a PNG of a hundred 8192x8192 maps
    costs what the few its request uses cost, and no more than the budget in all."""

    def __init__(self, encoded: dict[str, Any]) -> None:
        self._encoded = {str(k): v for k, v in encoded.items() if INPUT_NAMES.fullmatch(str(k))}  # only ours
        self._budget = PixelBudget("this PNG's embedded inputs")

    def __getitem__(self, name: str) -> Deferred:
        if name not in self._encoded:
            raise KeyError(name)
        return Deferred(lambda: self._decode(name), f"embedded {name}")

    def __iter__(self) -> Iterator[str]:
        return iter(self._encoded)

    def __len__(self) -> int:
        return len(self._encoded)

    def _decode(self, name: str) -> Image.Image:
        data = self._encoded[name]
        if not isinstance(data, str):
            raise ValidationError(f"embedded {name} in this image is not base64 text")
        try:
            decoded = base64.b64decode(data, validate=True)
        except ValueError:
            raise ValidationError(f"embedded {name} in this image is not valid base64") from None
        with pixel_budget(self._budget):
            return open_image(decoded, f"embedded {name}")


INPUT_NAMES = re.compile(r"control-\d{1,2}|ip-adapter-\d-\d|adapter-\d{1,2}-\d|init_image|mask")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TEXT_KEYS = (KEY, INPUTS_KEY, "parameters", "prompt", "workflow")  # sdcompose's, A1111's and ComfyUI's


def _json(raw: str, what: str) -> Any:
    if len(raw) > MAX_TEXT:
        raise ValidationError(f"{what} is too large")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        raise ValidationError(f"{what} is not valid JSON") from None


def _check_meta(meta: Any) -> None:
    """The shape ``Pipeline.reproduce`` relies on; values are checked again as a GenerationRequest."""
    if isinstance(meta, dict) and isinstance(meta.get("xyz"), dict) and "request" not in meta:
        raise ValidationError("this PNG is an X/Y/Z plot's grid, not one generation: open one of its cells (each "
                              "kept as a PNG of its own) to restore or reproduce it")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("request"), dict):
        found = meta.get("format") if isinstance(meta, dict) else "?"
        raise ValidationError(f"unsupported sdcompose metadata (format {repr(found)[:20]}, expected {FORMAT})")
    request = meta["request"]
    for name in ("controls", "loras"):
        items = request.get(name, [])
        if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
            raise ValidationError(f"the image's metadata has a malformed request.{name}")
    seed = meta.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ValidationError("the image's metadata has no valid seed")
    models = meta.get("models", {})
    if not isinstance(models, dict) or not all(
            isinstance(model_id, str) and isinstance(info, dict) and isinstance(info.get("sha256"), dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in info["sha256"].items())
            for model_id, info in models.items()):
        raise ValidationError("the image's metadata has a malformed `models` record")


def png_text(data: bytes) -> dict[str, str]:
    """The text chunks of PNG bytes that sdcompose reads (``TEXT_KEYS``: its own, A1111's ``parameters``,
    ComfyUI's), from tEXt, zTXt and iTXt, first of each key, without decoding pixels, each inflated to at most
    MAX_TEXT; ValidationError if the bytes are not a PNG."""
    if not data.startswith(PNG_SIGNATURE):
        raise ValidationError("this file is not a PNG")
    out: dict[str, str] = {}
    pos = len(PNG_SIGNATURE)
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if len(body) != length:
            raise ValidationError("this PNG is truncated")
        if kind == b"IEND":
            break
        if kind not in (b"tEXt", b"zTXt", b"iTXt"):
            continue
        key, sep, rest = body.partition(b"\0")
        name = key.decode("latin-1")
        if not sep or name not in TEXT_KEYS or name in out:
            continue
        try:
            if kind == b"tEXt":
                out[name] = rest.decode("latin-1")
            elif kind == b"zTXt":
                out[name] = _inflate(rest[1:]).decode("latin-1")
            else:  # iTXt: compressed flag, method, language\0, translated keyword\0, text
                compressed = rest[:1] == b"\x01"
                _, _, rest = rest[2:].partition(b"\0")
                _, _, payload = rest.partition(b"\0")
                out[name] = (_inflate(payload) if compressed else payload).decode("utf-8")
        except (zlib.error, UnicodeDecodeError):
            raise ValidationError(f"the {name!r} text in this PNG is damaged") from None
    return out


def _inflate(data: bytes) -> bytes:
    inflater = zlib.decompressobj()
    out = inflater.decompress(data, MAX_TEXT + 1)
    if len(out) > MAX_TEXT or inflater.unconsumed_tail:
        raise ValidationError(f"a text chunk in this PNG inflates to more than {MAX_TEXT // 2**20} MB")
    return out
