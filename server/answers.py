"""What the APIs answer: errors as ``{"error": {"type", "message", "field"}}`` with a fitting status, and
results as base64 PNGs that carry sdcompose's metadata."""
from __future__ import annotations

import base64
import logging
from typing import Any

from fastapi.responses import JSONResponse

from sdcompose.errors import Cancelled, ModelError, OutOfMemory, SdcomposeError, Unavailable, ValidationError, first_line
from sdcompose.metadata import png_bytes
from sdcompose.plugins.api import PluginError

from .inputs import field_of
from .jobs import QueueFull

log = logging.getLogger("sdcompose.server")


def status_of(exc: BaseException) -> int:
    if isinstance(exc, QueueFull):
        return 429
    if isinstance(exc, ValidationError):
        return 413 if "larger than" in str(exc) else 422
    if isinstance(exc, (OutOfMemory, Unavailable)):
        return 503
    if isinstance(exc, Cancelled):
        return 409
    if isinstance(exc, (ModelError, PluginError, SdcomposeError)):
        return 400
    return 500


def error_body(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, (SdcomposeError, PluginError)):
        kind = "ValidationError" if isinstance(exc, ValidationError) else type(exc).__name__
        message = str(exc)
    else:  # a bug: one sentence here, the traceback in the server log
        log.error("unexpected error in a request", exc_info=exc)
        kind, message = "InternalError", f"unexpected {type(exc).__name__}: {first_line(exc)} (see the server log)"
    return {"error": {"type": kind, "message": message, "field": field_of(exc)}}


def error_response(exc: BaseException) -> JSONResponse:
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, QueueFull) else None
    return JSONResponse(error_body(exc), status_code=status_of(exc), headers=headers)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def result_pngs(result: Any) -> list[bytes]:
    """Each image of a ``Result`` as PNG bytes with its metadata and embedded inputs, as ``Result.save`` writes."""
    return [png_bytes(image, meta, result.inputs) for image, meta in zip(result.images, result.per_image)]


def preview_png(image: Any) -> str | None:
    if image is None:
        return None
    import io
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)
    return "data:image/png;base64," + b64(buf.getvalue())
