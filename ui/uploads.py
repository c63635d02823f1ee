"""Upload components that check what arrives: a file that is not a usable image becomes a ``Rejected`` value
(one sentence, no server path) that the form reports like any other mistake, instead of Gradio's own
multi-line error naming its temp folder."""
from __future__ import annotations

from typing import Any

import gradio as gr

from sdcompose.errors import ValidationError
from sdcompose.images import open_image

from .form import Rejected

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff")


def check_image(path: str) -> str | Rejected:
    """``path`` if it decodes as an image sdcompose accepts (formats, pixel limit, not damaged), else why not."""
    try:
        open_image(path, "this file")
    except ValidationError as exc:
        return Rejected(str(exc).replace(path, "the upload"))
    return path


class CheckedImage(gr.Image):
    """A ``gr.Image`` whose upload is checked by sdcompose's own decoder and passed on as the uploaded file's path
    (a 16-bit map stays 16-bit). Make it with ``checked_image``. (Gradio reads a component's settings from its
    constructor's signature, so this class adds no constructor of its own.)"""

    is_template = True  # drawn by the page as the component it extends

    def preprocess(self, payload: Any) -> Any:
        if payload is None or payload.path is None or (payload.url or "").startswith("data:"):
            return super().preprocess(payload)
        return check_image(str(payload.path))


class CheckedFile(gr.File):
    """A control file: OpenPose JSON (parsed by the form) or an image such as a 16-bit depth map (checked here).
    Make it with ``control_file``."""

    is_template = True

    def preprocess(self, payload: Any) -> Any:
        path = super().preprocess(payload)
        if path is None or str(path).lower().endswith(".json"):
            return path
        return check_image(str(path))


def checked_image(**kwargs: Any) -> CheckedImage:
    return CheckedImage(type="filepath", image_mode=None, **kwargs)


def control_file(**kwargs: Any) -> CheckedFile:
    return CheckedFile(type="filepath", file_count="single", file_types=[".json", *IMAGE_SUFFIXES], **kwargs)
