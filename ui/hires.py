"""The page's hires fix section and its Upscale tab.

The section's fields (``hires_*``, ``form.HIRES_DEFAULTS``) take their ranges and defaults from the request
schema's ``Hires``; the form turns them into the request's ``hires`` for text to image. The Upscale tab
enlarges one image through a models.yaml upscaler, tile by tile (``Pipeline.upscale``), as ``sdcompose
upscale`` does: the result is shown and saved with its metadata as the page's generations are.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Iterator

import gradio as gr

from sdcompose.errors import ValidationError
from sdcompose.pipelines import upscale
from sdcompose.request import LANCZOS

from .form import RANGES, Rejected
from .handlers import error_line, errors_in_page, session_of
from .numbers import schema_slider
from .uploads import checked_image
from .widgets import escape


def upscaler_models(pipeline: Any) -> list[tuple[str, str]]:
    """The catalogue's upscalers as dropdown choices ``(label, id)``."""
    return [(f"{e.id} (test model: its output is noise)" if e.tiny else e.id, e.id)
            for e in pipeline.catalog.entries.values() if e.kind == "upscaler"]


def hires_section(add: Callable[[str, Any], Any], pipeline: Any, defaults: dict[str, Any]) -> None:
    """Hires fix: enable, scale, upscaler (lanczos or a models.yaml upscaler), second-pass steps and denoise."""
    with gr.Accordion("Hires fix", open=False, elem_id="sdc-hires"):
        add("hires_enable", gr.Checkbox(defaults["hires_enable"], elem_id="sdc-hires-enable",
                                        label="Hires fix: a second pass at a larger size (text to image)"))
        with gr.Row():
            add("hires_scale", schema_slider(*RANGES["hires_scale"], value=defaults["hires_scale"], step=0.05,
                                             label="Upscale by", elem_id="sdc-hires-scale"))
            add("hires_upscaler", gr.Dropdown([("lanczos (an image resize)", LANCZOS), *upscaler_models(pipeline)],
                                              value=defaults["hires_upscaler"], label="Upscaler",
                                              elem_id="sdc-hires-upscaler"))
        with gr.Row():
            add("hires_steps", schema_slider(*RANGES["hires_steps"], value=defaults["hires_steps"], step=1,
                                             label="Hires steps (0: the same as Steps)", elem_id="sdc-hires-steps"))
            add("hires_denoise", schema_slider(0.01, RANGES["hires_denoise"][1], value=defaults["hires_denoise"],
                                               step=0.01, label="Denoising strength", elem_id="sdc-hires-denoise"))


def upscale_tab(pipeline: Any, handlers: Any) -> None:
    """The Upscale tab: an image, an upscaler model, a scale; the enlarged image shown and saved."""
    choices = upscaler_models(pipeline)
    gr.Markdown("Enlarge an image with an upscaler model, tile by tile (memory stays bounded at any size). The "
                "result is saved with its metadata.")
    with gr.Row():
        with gr.Column():
            image = checked_image(label="Image to upscale", sources=["upload", "clipboard"],
                                  elem_id="sdc-upscale-image")
            model = gr.Dropdown(choices, value=choices[0][1] if choices else None, label="Upscaler",
                                elem_id="sdc-upscale-model")
            scale = schema_slider(*upscale.SCALES, value=2, step=0.25, label="Scale", elem_id="sdc-upscale-scale")
            run = gr.Button("Upscale", variant="primary", elem_id="sdc-upscale-run")
        with gr.Column():
            status = gr.Markdown(elem_id="sdc-upscale-status")
            result = gr.Image(label="Upscaled", type="filepath", format="png", interactive=False,
                              elem_id="sdc-upscale-result")
    run.click(Upscaling(pipeline, handlers).run, [image, model, scale], [result, status], api_name="upscale",
              concurrency_limit=1, concurrency_id="device")


class Upscaling:
    """The Upscale button: one ``Pipeline.upscale`` through the page's worker (the job queue under ``serve``)."""

    def __init__(self, pipeline: Any, handlers: Any) -> None:
        self.pipeline, self.handlers = pipeline, handlers

    def run(self, request: gr.Request, image: Any, model: str | None, scale: float) -> Iterator[tuple]:
        """Yields (upscaled PNG path, status line); an error stays in the status line, in red."""
        started = time.monotonic()
        session = session_of(request)
        try:
            with errors_in_page():
                if isinstance(image, Rejected):
                    raise ValidationError(f"The image to upscale: {image.reason}")
                if image is None:
                    raise ValidationError("upload an image to upscale first")
                if not model:
                    raise ValidationError("no upscaler in models.yaml: add one (kind: upscaler) to upscale")
                yield gr.skip(), f"Upscaling with {escape(model)}..."
                events = self.handlers.worker(session, lambda cancel, _preview: self.pipeline.upscale(
                    image, model=model, scale=scale, cancel=cancel))
                while True:
                    try:
                        event = next(events)
                    except StopIteration as stop:
                        result = stop.value
                        break
                    if event.status:
                        yield gr.skip(), event.status
                if result is None:
                    return
                path, = self.handlers.keep(session, result)
        except gr.Error as exc:
            yield gr.skip(), error_line(exc)
            return
        width, height = result.images[0].size
        yield str(path), (f"{width}x{height} with {escape(model)} in {time.monotonic() - started:.1f} s. "
                          f"Saved as {escape(path.name)}.")
