"""What arrives over HTTP becomes data: base64 images decoded to bytes, JSON to a request. Never a server path.

``FieldError`` carries the name of the field at fault, so every error answer can name it.
"""
from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from sdcompose.errors import FieldError
from sdcompose.images import MAX_BYTES
from sdcompose.request import Control, GenerationRequest, Hires
from sdcompose.request_json import IMAGE_FIELDS, request_from_json as from_json

DATA_URL = re.compile(r"data:(?P<type>[\w.+-]+/[\w.+-]+)?(?:;[\w-]+=[^;,]*)*;base64,", re.ASCII)
JSON_DEPTH = 32  # deeper JSON is refused before it is looked at (pose JSON is about five levels deep)
PART = re.compile(r"(?P<list>controls|ip_adapters|adapters)\[(?P<i>\d{1,2})\]\.image(?:\[(?P<j>\d)\])?")


def image_bytes(value: Any, field: str) -> bytes:
    """The bytes of a base64 image (a ``data:image/...;base64,`` URL or bare base64); refuses anything else."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if not isinstance(value, str) or not value:
        raise FieldError(field, f"{field} must be a base64 image (a data:image/png;base64,... URL), "
                                f"got {type(value).__name__}")
    match = DATA_URL.match(value)
    text = value[match.end():] if match else value
    if len(text) > MAX_BYTES * 4 // 3 + 4:
        raise FieldError(field, f"{field} is larger than {MAX_BYTES // 2**20} MB")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        hint = " (server file paths are not read over HTTP: send the image itself)" if "/" in value[:200] \
            or "\\" in value[:200] else ""
        raise FieldError(field, f"{field} is not valid base64 image data{hint}") from None


def check_depth(value: Any, field: str = "body", depth: int = 0) -> None:
    if depth > JSON_DEPTH:
        raise FieldError(field, f"{field} is nested more than {JSON_DEPTH} levels deep")
    if isinstance(value, dict):
        for key, item in value.items():
            check_depth(item, field, depth + 1)
    elif isinstance(value, list):
        for item in value:
            check_depth(item, field, depth + 1)


def request_from_json(data: Any, files: dict[str, bytes] | None = None) -> GenerationRequest:
    """A ``GenerationRequest`` from the native API's JSON body (``sdcompose.request_json``); images come as base64
    or as ``files`` (multipart parts named ``init_image``, ``mask``, ``controls[N].image``, ``ip_adapters[N].image``
    or ``ip_adapters[N].image[J]``, and the same under ``adapters``)."""
    check_depth(data)
    if files and isinstance(data, dict):
        data = dict(data)
        for name, content in files.items():
            part = PART.fullmatch(name)
            items, i = (data.get(part["list"]), int(part["i"])) if part else (None, 0)
            if name in IMAGE_FIELDS:
                data[name] = content
            elif isinstance(items, list) and i < len(items) and isinstance(items[i], dict) \
                    and (part["j"] is None or part["list"] != "controls"):
                data[part["list"]] = items = list(items)
                unit = items[i] = dict(items[i])
                if part["j"] is None:
                    unit["image"] = content
                else:  # one reference of a list: ip_adapters[N].image[J], adapters[N].image[J]
                    refs = list(unit["image"]) if isinstance(unit.get("image"), list) else []
                    refs += [None] * (int(part["j"]) + 1 - len(refs))
                    refs[int(part["j"])] = content
                    unit["image"] = refs
            else:
                raise FieldError(name, f"multipart part {name[:60]!r} is not an image field of the request "
                                       "(init_image, mask, controls[N].image of a listed control, or "
                                       "ip_adapters[N].image / ip_adapters[N].image[J] of a listed IP-Adapter, or "
                                       "adapters[N].image / adapters[N].image[J] of a listed adapter)")
    return from_json(data, image_bytes)


FIELD_AT_START = re.compile(r"(?:unknown field ')?(?P<name>[a-z_]+(?:\[\d+\])?)(?: \([^)]*\))?(?: (?P<sub>[a-z_]+))?")


def field_of(exc: BaseException) -> str | None:
    """The field a validation message is about: its own, or the name it starts with, when that is a field."""
    if isinstance(exc, FieldError):
        return exc.field
    match = FIELD_AT_START.match(str(exc))
    if not match:
        return None
    name = match["name"]
    base = name.split("[")[0]
    if base not in GenerationRequest.model_fields:
        return None
    sub = match["sub"]
    if "[" in name and sub in set(Control.model_fields) | {"id", "weight"}:
        return f"{name}.{sub}"
    if name == "hires" and sub in Hires.model_fields:
        return f"hires.{sub}"
    return name


def request_schema() -> dict[str, Any]:
    """The JSON schema of the request, every ``$ref`` inlined (OpenAPI documents keep their own ``$defs``)."""
    schema = GenerationRequest.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return inline(defs[node["$ref"].rsplit("/", 1)[1]])
            return {key: inline(value) for key, value in node.items()}
        if isinstance(node, list):
            return [inline(item) for item in node]
        return node
    return inline(schema)
