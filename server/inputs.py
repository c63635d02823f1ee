"""What arrives over HTTP becomes data: base64 images decoded to bytes, JSON to a request. Never a server path.

``FieldError`` carries the name of the field at fault, so every error answer can name it.
"""
from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from sdcompose.errors import ValidationError
from sdcompose.images import MAX_BYTES
from sdcompose.request import Control, GenerationRequest, IpAdapter, Lora

DATA_URL = re.compile(r"data:(?P<type>[\w.+-]+/[\w.+-]+)?(?:;[\w-]+=[^;,]*)*;base64,", re.ASCII)
JSON_DEPTH = 32  # deeper JSON is refused before it is looked at (pose JSON is about five levels deep)
IMAGE_FIELDS = ("init_image", "mask")


class FieldError(ValidationError):
    """A ValidationError that names its field (``controls[0].image``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


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


def _fields(cls: type, data: Any, where: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise FieldError(where or "body", f"{where or 'the body'} must be a JSON object, got {type(data).__name__}")
    names = set(cls.model_fields)
    for key in data:
        if key not in names:
            from sdcompose.errors import suggest
            path = f"{where}.{key}" if where else str(key)
            raise FieldError(path, f"unknown field {path!r}{suggest(str(key), names)}")
    return dict(data)


def request_from_json(data: Any, files: dict[str, bytes] | None = None) -> GenerationRequest:
    """A ``GenerationRequest`` from the native API's JSON body; images come as base64 or as ``files``
    (multipart parts named ``init_image``, ``mask``, ``controls[N].image``)."""
    check_depth(data)
    files = files or {}
    values = _fields(GenerationRequest, data, "")
    for name in IMAGE_FIELDS:
        if name in files:
            values[name] = files[name]
        elif values.get(name) is not None:
            values[name] = image_bytes(values[name], name)
    controls = values.get("controls", [])
    if not isinstance(controls, list):
        raise FieldError("controls", f"controls must be a list, got {type(controls).__name__}")
    values["controls"] = [_control(i, c, files) for i, c in enumerate(controls)]
    loras = values.get("loras", [])
    if not isinstance(loras, list):
        raise FieldError("loras", f"loras must be a list, got {type(loras).__name__}")
    values["loras"] = [_lora(i, x) for i, x in enumerate(loras)]
    adapters = values.get("ip_adapters", [])
    if not isinstance(adapters, list):
        raise FieldError("ip_adapters", f"ip_adapters must be a list, got {type(adapters).__name__}")
    values["ip_adapters"] = [_ip_adapter(i, a, files) for i, a in enumerate(adapters)]
    return GenerationRequest(**values)


def _ip_adapter(i: int, data: Any, files: dict[str, bytes]) -> IpAdapter:
    """An image prompt whose references are base64 images (one, or a list) or a multipart part each
    (``ip_adapters[N].image``, or ``ip_adapters[N].image[J]`` for a list): never a server path."""
    where = f"ip_adapters[{i}]"
    values = _fields(IpAdapter, data, where)
    if "id" not in values:
        raise FieldError(f"{where}.id", f"{where}.id is missing (a models.yaml IP-Adapter id)")
    image = files.get(f"{where}.image", values.get("image"))
    if image is None:
        parts = [files[f"{where}.image[{j}]"] for j in range(8) if f"{where}.image[{j}]" in files]
        image = parts or None
    if image is None:
        raise FieldError(f"{where}.image", f"{where}.image is missing (a base64 reference image, or a list of them)")
    if isinstance(image, list):
        values["image"] = [image_bytes(item, f"{where}.image[{j}]") for j, item in enumerate(image)]
    else:
        values["image"] = image_bytes(image, f"{where}.image")
    return IpAdapter(**values)


def _control(i: int, data: Any, files: dict[str, bytes]) -> Control:
    where = f"controls[{i}]"
    values = _fields(Control, data, where)
    if "id" not in values:
        raise FieldError(f"{where}.id", f"{where}.id is missing (a conditioner plugin id such as canny)")
    image = files.get(f"{where}.image", values.get("image"))
    if image is None:
        raise FieldError(f"{where}.image", f"{where}.image is missing (a base64 image, or a pose as JSON)")
    if isinstance(image, (dict, list)):  # parsed JSON for plugins that read it (an OpenPose pose)
        values["image"] = image
    else:
        values["image"] = image_bytes(image, f"{where}.image")
    return Control(**values)


def _lora(i: int, data: Any) -> Lora:
    values = _fields(Lora, data, f"loras[{i}]")
    if "id" not in values:
        raise FieldError(f"loras[{i}].id", f"loras[{i}].id is missing (a models.yaml LoRA id)")
    return Lora(**values)


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
