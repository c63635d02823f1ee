"""The page's X/Y/Z plot: the form's request over up to three axes (``sdcompose.xyz``), run as one job with the
page's progress bar and Stop, every cell kept with its own metadata and each grid beside them."""
from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import gradio as gr

from sdcompose.errors import ValidationError
from sdcompose.metadata import save_png
from sdcompose.request import GenerationRequest
from sdcompose.xyz import AXES, Axis, plot

from .handlers import Handlers, RunEvent, errors_in_page, session_of, test_model_line
from .widgets import escape

NAMES = ("x", "y", "z")
FIELDS = [f"xyz_{axis}_{part}" for axis in NAMES for part in ("kind", "values")]
CHOICES = [("none", "")] + [(title, kind) for kind, title in AXES.items()]
EXAMPLES = {"seed": "1, 2, 3", "steps": "10, 20, 30", "guidance": "4, 7.5, 10", "scheduler": "Euler, DPM++ 2M",
            "lora_weight": "0, 0.5, 1", "control_weight": "0.5, 1", "prompt_sr": "dog, cat, fox"}


def axes_of(values: dict[str, Any]) -> list[Axis]:
    """The axes the page's X, Y, Z rows set, in order (rows left at "none" are skipped)."""
    axes = [Axis.parse(values[f"xyz_{name}_kind"], values.get(f"xyz_{name}_values") or "")
            for name in NAMES if values.get(f"xyz_{name}_kind")]
    if not axes:
        raise ValidationError("X/Y/Z plot: pick what at least one axis varies, and its values")
    return axes


class PlotRun:
    def __init__(self, handlers: Handlers) -> None:
        self.handlers = handlers

    def in_page(self, request: gr.Request, **values: Any) -> Iterator[tuple]:
        """Outputs as the page's generate: gallery (the grids, then the cells), metadata, status, first seed,
        progress bar, the gallery's file paths."""
        yield from self.handlers.in_page(self._run(session_of(request), values))

    def _run(self, session: str | None, values: dict[str, Any]) -> Iterator[RunEvent]:
        started, h = time.monotonic(), self.handlers
        with errors_in_page(h.form.unit_names(values)):
            kwargs = h.form.to_kwargs(values)
            request = GenerationRequest(**kwargs | {"model": kwargs.get("model") or h.pipeline.settings.default_model})
            axes = axes_of(values)
            yield RunEvent(status=h.preparing(request.model))
            made = yield from h.worker(session, lambda cancel, preview: plot(
                h.pipeline, request, axes, progress=lambda step, total: preview(step, total, None), cancel=cancel))
            if made is None:
                return
            cells = [h.keep(session, cell.result)[0] for cell in made.cells]
            grids = [self._keep_grid(session, grid, meta) for grid, meta in zip(made.grids, made.grid_metadata)]
        gallery = [(str(path), f"X/Y/Z grid {i + 1} of {len(grids)}") for i, path in enumerate(grids)]
        gallery += [(str(path), ", ".join(axis.label(axis.values[i]) for axis, i in zip(axes, cell.index)))
                    for path, cell in zip(cells, made.cells)]
        status = (f"X/Y/Z plot: {len(cells)} image(s) and {len(grids)} grid(s), in {time.monotonic() - started:.1f} s."
                  + (f" Grid saved as grids/{escape(grids[0].name)}." if h.outputs is not None else ""))
        if made.cells[0].result.metadata.get("note"):
            status = test_model_line(made.cells[0].result) + status
        yield RunEvent(done=True, gallery=gallery, info=json.dumps(made.grid_metadata[0], indent=1, default=str),
                       status=status, seed=made.cells[0].request.seed)

    def _keep_grid(self, session: str | None, grid: Any, meta: dict[str, Any]) -> Any:
        if self.handlers.outputs is not None:
            return self.handlers.outputs.save_grid(grid, meta)
        path = self.handlers.sessions.output(session)
        return save_png(grid, meta, {}, path.with_name(f"{path.stem}-grid.png"))


def plot_controls() -> tuple[dict[str, Any], gr.Button]:
    """The X/Y/Z accordion: per axis what it varies and its values; the run button. Returns the fields by name
    (``FIELDS``) and the button."""
    fields: dict[str, Any] = {}
    with gr.Accordion("X/Y/Z plot", open=False, elem_id="sdc-xyz"):
        gr.Markdown("The request above over up to three axes, one image per cell (batch 1), values separated by "
                    "commas; Prompt S/R replaces its first value in the prompt by each. Every cell is kept with its "
                    "own metadata, and a labelled grid per Z value beside them.")
        for name in NAMES:
            with gr.Row(equal_height=True):
                fields[f"xyz_{name}_kind"] = gr.Dropdown(CHOICES, value="", label=f"{name.upper()} axis", scale=1,
                                                         elem_id=f"sdc-xyz-{name}-kind")
                fields[f"xyz_{name}_values"] = gr.Textbox(label=f"{name.upper()} values", scale=3, max_length=2000,
                                                          placeholder=EXAMPLES["steps"],
                                                          elem_id=f"sdc-xyz-{name}-values")
        run = gr.Button("Run the X/Y/Z plot", variant="primary", size="sm", elem_id="sdc-xyz-run")
    return fields, run
