"""Sliders whose typed values reach the request schema as typed: 99999 as a width is refused with the schema's
own sentence ("width must be between 64 and 4096, got 99999") in the status line, never clamped to 4096 without
a word. The page's script (``browser.KEEP_TYPED``) stops the browser's clamp; this component stops Gradio's."""
from __future__ import annotations

from typing import Any

import gradio as gr


class SchemaSlider(gr.Slider):
    """A ``gr.Slider`` whose value goes on unchecked: the form's request checks it against the schema's limits.
    Make it with ``schema_slider``. (Gradio reads a component's settings from its constructor's signature, so
    this class adds no constructor of its own.)"""

    is_template = True  # drawn by the page as the component it extends

    def preprocess(self, payload: Any) -> Any:
        if isinstance(payload, (int, float)) and not isinstance(payload, bool):
            return payload
        return super().preprocess(payload)


def schema_slider(*args: Any, **kwargs: Any) -> SchemaSlider:
    return SchemaSlider(*args, **kwargs)
