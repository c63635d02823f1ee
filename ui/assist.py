"""The form's helpers: each prompt's token count (and the prompt the model gets), the input image's size as the
width and height, and rescanning the model folders."""
from __future__ import annotations

import math
from typing import Any

import gradio as gr

from sdcompose.errors import SdcomposeError
from sdcompose.images import open_image
from sdcompose.request import LIMITS, GenerationRequest, Lora

from . import widgets
from .form import Rejected
from .widgets import escape


class Assist:
    def __init__(self, pipeline: Any) -> None:
        self.pipeline = pipeline

    # ---- the prompts' tokens --------------------------------------------------------------------
    def prompt_tokens(self, model: str | None, prompt: str | None, negative: str | None, loras: list[str] | None,
                      add_trigger_words: bool | None) -> list[str]:
        """Outputs: the prompt's line (the tokens it uses of its 75-token chunks, "83/150" as in A1111, and, when the
        LoRAs' trigger words are added, the prompt the model gets), the negative prompt's line."""
        try:
            final = self.final_prompt(model, prompt or "", loras or [], bool(add_trigger_words))
        except SdcomposeError as exc:
            return [_line(escape(str(exc)), error=True), self._count(model, negative or "")]
        line = self._count(model, final)
        if final != (prompt or "") and bool(add_trigger_words):
            line = _line(f"{self._label(model, final)} · the model gets: {escape(final)}")
        return [line, self._count(model, negative or "")]

    def final_prompt(self, model: str | None, prompt: str, loras: list[str], add_trigger_words: bool) -> str:
        """The prompt as the text encoder gets it: ``<lora:...>`` tags out, trigger words in if asked for."""
        from sdcompose.pipelines.resolve import resolve  # planning only: no weights, no torch
        request = GenerationRequest(prompt=prompt, model=model or None, add_trigger_words=add_trigger_words,
                                    loras=[Lora(x) for x in loras])
        return resolve(request, self.pipeline.catalog, self.pipeline.registry).final_prompt()

    def _label(self, model: str | None, text: str) -> str:
        return self.pipeline.token_counts(text, model or None)["label"]

    def _count(self, model: str | None, text: str) -> str:
        if not text.strip():
            return ""
        try:
            return _line(self._label(model, text))
        except SdcomposeError as exc:
            return _line(escape(str(exc)), error=True)

    # ---- the input image's size -----------------------------------------------------------------
    def input_size(self, task: str | None, init_image: Any, editor: Any) -> list:
        """Width and height from the task's input image (multiples of 8, scaled down to the limits if larger).
        Outputs: width, height, status."""
        image = editor.get("background") if task == "inpaint" and isinstance(editor, dict) else init_image
        if task not in ("img2img", "inpaint") or image is None or isinstance(image, Rejected):
            gr.Warning("Upload an input image first (Image to image or Inpaint tab).")
            return [gr.skip()] * 3
        try:
            size = open_image(image, "the input image").size if isinstance(image, str) else image.size
        except SdcomposeError as exc:
            return [gr.skip(), gr.skip(), f'<span class="sdc-error">{escape(str(exc))}</span>']
        width, height = fitted_size(*size)
        note = "" if (width, height) == size else f" (the image is {size[0]}x{size[1]})"
        return [width, height, f"Width and height set to the input image's size: {width}x{height}{note}."]

    # ---- the model folders ----------------------------------------------------------------------
    def refresh(self, model: str | None) -> list:
        """Scan the model folders again. Outputs: the model picker (its choices), the status line."""
        changes = self.pipeline.refresh()
        choices, default_model = widgets.base_models(self.pipeline)
        ids = [value for _, value in choices]
        said = "; ".join(f"{what}: {', '.join(changes[what])}" for what in ("added", "removed") if changes[what])
        status = f"Model folders scanned: {escape(said)}." if said else "Model folders scanned: nothing new."
        return [gr.update(choices=choices, value=model if model in ids else default_model), status]


def fitted_size(width: int, height: int) -> tuple[int, int]:
    """``width`` x ``height`` in multiples of 8 within the request's limits (side and pixel count), aspect kept."""
    low, high = LIMITS["size"]
    multiple = LIMITS["size_multiple"]
    scale = min(1.0, high / max(width, height), math.sqrt(LIMITS["pixels"] / (width * height)))
    return tuple(min(high, max(low, int(side * scale) // multiple * multiple)) for side in (width, height))


def _line(text: str, error: bool = False) -> str:
    return f'<span class="{"sdc-error" if error else "sdc-tokens"}">{text}</span>'
