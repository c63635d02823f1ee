"""A request from its JSON form (the HTTP API's body, a batch file's line): one reader for every JSON source.

Each key is checked against the request schema (an unknown one is refused naming it and the nearest known
name), each image field (``init_image``, ``mask``, ``controls[N].image``, ``ip_adapters[N].image``,
``adapters[N].image``, one or a list) goes through the caller's ``image``
function (base64 decoding over HTTP, a path next to the batch file), and ``GenerationRequest.model_validate``
checks the rest. Every error is a ``FieldError`` naming its field, or the request's own one-sentence error.
"""
from __future__ import annotations

from typing import Any, Callable

from sdcompose.errors import FieldError, suggest
from sdcompose.request import AdapterUse, Control, GenerationRequest, IpAdapter, Lora

IMAGE_FIELDS = ("init_image", "mask")
PARTS = (("controls", Control, "a conditioner plugin id such as canny"), ("loras", Lora, "a models.yaml LoRA id"),
         ("ip_adapters", IpAdapter, "a models.yaml IP-Adapter id"),
         ("adapters", AdapterUse, "a models.yaml LoRA or IP-Adapter id"))
Image = Callable[[Any, str], Any]  # (the JSON value, its field name) -> what the request takes


def request_from_json(data: Any, image: Image) -> GenerationRequest:
    """The ``GenerationRequest`` ``data`` (parsed JSON) describes; ``image(value, field)`` makes each image input
    that is given (parsed JSON such as an OpenPose pose is passed on as it is)."""
    values = _known(data, GenerationRequest, "")
    for name in IMAGE_FIELDS:
        if values.get(name) is not None:
            values[name] = image(values[name], name)
    for name, kind, what in PARTS:
        items = values.get(name, [])
        if not isinstance(items, list):
            raise FieldError(name, f"{name} must be a list, got {type(items).__name__}")
        values[name] = [_part(kind, item, f"{name}[{i}]", what, image) for i, item in enumerate(items)]
    return GenerationRequest.model_validate(values)


def _part(kind: type, item: Any, where: str, what: str, image: Image) -> dict[str, Any]:
    values = _known(item, kind, where)
    if "id" not in values:
        raise FieldError(f"{where}.id", f"{where} needs an id ({what})")
    if kind is Control:
        if values.get("image") is None:
            raise FieldError(f"{where}.image", f"{where} needs an image (or, for a plugin that reads one, JSON "
                                               "such as an OpenPose pose)")
        if not isinstance(values["image"], (dict, list)):
            values["image"] = image(values["image"], f"{where}.image")
    given = values.get("image")
    if kind is IpAdapter and (given is None or given == []):
        raise FieldError(f"{where}.image", f"{where} needs a reference image (or a list of them)")
    if kind in (IpAdapter, AdapterUse) and given is not None:
        values["image"] = [image(v, f"{where}.image[{j}]") for j, v in enumerate(given)] if isinstance(given, list) \
            else image(given, f"{where}.image")
    return values


def _known(data: Any, kind: type, where: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise FieldError(where or "body", f"{where or 'a request'} must be a JSON object, got {type(data).__name__}")
    for key in data:
        if key not in kind.model_fields:
            path = f"{where}.{key}" if where else str(key)
            raise FieldError(path, f"{where or 'request'} has an unknown field {str(key)[:60]!r}"
                                   f"{suggest(str(key), kind.model_fields)}")
    return dict(data)
