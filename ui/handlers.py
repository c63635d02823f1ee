"""What the page's events do: thin calls into ``Pipeline``, errors turned into messages in the page."""
from __future__ import annotations

import functools
import inspect
import json
import logging
import queue
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Callable

import gradio as gr
from PIL import Image

from sdcompose.errors import Cancelled, ModelError, OutOfMemory, SdcomposeError, ValidationError
from sdcompose.metadata import a1111_parameters, read_png
from sdcompose.pipelines.reproduce import recorded_request
from sdcompose.plugins.api import PluginError

from . import widgets
from .form import Form
from .sessions import Sessions
from .widgets import escape

log = logging.getLogger("sdcompose.ui")
TITLES = {ValidationError: "Invalid request", OutOfMemory: "Out of memory", ModelError: "Model problem",
          PluginError: "Plugin problem"}
IMAGE = "<image>"
PREVIEW_EVERY_S = 0.25  # at most four preview images a second reach the page


@contextmanager
def errors_in_page() -> Iterator[None]:
    """Known errors become a message in the page (and an error for API clients); the session carries on.

    Gradio renders error messages as HTML, so the text (which can quote user input) is escaped.
    """
    try:
        yield
    except gr.Error:
        raise
    except (SdcomposeError, PluginError) as exc:
        title = next((t for cls, t in TITLES.items() if isinstance(exc, cls)), "Error")
        raise gr.Error(escape(str(exc)), title=title, print_exception=False) from None
    except (Exception, SystemExit, KeyboardInterrupt) as exc:
        # A bug must not end the session, nor a SystemExit or KeyboardInterrupt the server: events run in worker
        # threads, where no signal arrives, so these come from code (plugin code is contained by plugins/contain.py).
        if not isinstance(exc, Exception) and threading.current_thread() is threading.main_thread():
            raise
        log.exception("unexpected error in a UI event")
        message = f"unexpected {type(exc).__name__}: {exc} (the server log has the traceback)"
        raise gr.Error(escape(message), title="Internal error", print_exception=False) from None


def with_fields(fn: Callable[..., Any], names: list[str]) -> Callable[..., Any]:
    """``fn(..., **values)`` with a signature that lists ``names`` as optional keywords, so Gradio's web API
    takes every form field by name and none is required (an image left out is no image)."""
    if inspect.isgeneratorfunction(fn):  # Gradio streams only what it sees is a generator function
        @functools.wraps(fn)
        def call(*args: Any, **values: Any) -> Any:
            yield from fn(*args, **values)
    else:
        @functools.wraps(fn)
        def call(*args: Any, **values: Any) -> Any:
            return fn(*args, **values)

    signature = inspect.signature(fn)
    fixed = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    extra = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None) for name in names]
    call.__signature__ = signature.replace(parameters=[*fixed, *extra])  # type: ignore[attr-defined]
    return call


def session_of(request: gr.Request | None) -> str | None:
    return getattr(request, "session_hash", None)


class Handlers:
    def __init__(self, pipeline: Any, form: Form, sessions: Sessions, base_ids: list[str]) -> None:
        self.pipeline, self.form, self.sessions, self.base_ids = pipeline, form, sessions, base_ids
        self.names = list(form.defaults())

    # ---- generate and stop -------------------------------------------------------------------
    def generate(self, request: gr.Request, progress: gr.Progress = gr.Progress(), **values: Any) -> Iterator[tuple]:
        """Yields step previews while it runs, then: gallery (saved PNG files with their metadata), metadata JSON,
        status text, first seed. The pipeline runs in a worker thread; this generator relays its steps."""
        session = session_of(request)
        with errors_in_page():
            kwargs = self.form.to_kwargs(values)
            with self.sessions.cancel_flag(session) as cancel:
                steps: queue.Queue = queue.Queue()
                outcome: dict[str, Any] = {}

                def work() -> None:
                    try:
                        outcome["result"] = self.pipeline.generate(
                            **kwargs, cancel=cancel, preview=lambda step, total, image: steps.put((step, total, image)))
                    except BaseException as exc:  # re-raised below, in the event's own thread
                        outcome["error"] = exc
                    finally:
                        steps.put(None)

                worker = threading.Thread(target=work, name="sdcompose-generate", daemon=True)
                worker.start()
                shown = 0.0
                try:
                    while (item := steps.get()) is not None:
                        step, total, image = item
                        progress((step, total), desc=f"step {step} of {total}", unit="steps")
                        if time.monotonic() - shown >= PREVIEW_EVERY_S or step == total:
                            shown = time.monotonic()
                            yield [(image, f"preview at step {step}")], gr.skip(), f"Step {step} of {total}", \
                                gr.skip()
                finally:  # the page went away mid-run: stop the worker at its next step
                    if worker.is_alive():
                        cancel.set()
                if isinstance(outcome.get("error"), Cancelled):
                    yield gr.skip(), gr.skip(), f"Stopped: {outcome['error']}.", gr.skip()
                    return
                if "error" in outcome:
                    raise outcome["error"]
            result = outcome["result"]
            paths = result.save(self.sessions.output(session))
        seeds, note = result.metadata["seeds"], result.metadata.get("note")
        gallery = [(str(path), f"seed {seed}" + (f" · {note}" if note else "")) for path, seed in zip(paths, seeds)]
        status = f"{len(paths)} image(s), seed {', '.join(map(str, seeds))}."
        if note:
            model = escape(result.metadata["request"]["model"])
            status = (f"**These images are {escape(note)}** ({model}): they show the pipeline works, not what a "
                      "real model draws. " + status)
        yield gallery, json.dumps(result.metadata, indent=1, default=str), status, seeds[0]

    def stop(self, request: gr.Request) -> str:
        stopped = self.sessions.stop(session_of(request))
        return "Stopping at the end of this step." if stopped else "Nothing is running."

    def forget(self, request: gr.Request) -> None:
        self.sessions.forget(session_of(request))

    @staticmethod
    def reuse_seed(last: int | None) -> Any:
        if last is None:
            gr.Info("No image yet: generate one first.")
            return gr.skip()
        return last

    # ---- ControlNet units and LoRAs ------------------------------------------------------------
    def add_unit(self, shown: int) -> list:
        """Show the next ControlNet unit, enabled; outputs: count, each unit's group, each unit's Enable box."""
        if shown >= self.form.units:
            gr.Warning(f"This page offers {self.form.units} ControlNet units.")
            return [gr.skip()] * (1 + 2 * self.form.units)
        groups = [gr.update(visible=i <= shown) for i in range(self.form.units)]
        enables = [True if i == shown else gr.skip() for i in range(self.form.units)]
        return [shown + 1, *groups, *enables]

    def param_groups(self, plugin_ids: list[str]) -> Callable[[str], list]:
        """For one unit: show the params of the chosen conditioner, hide the others'."""
        return lambda chosen: [gr.update(visible=plugin_id == chosen) for plugin_id in plugin_ids]

    def lora_weights(self, chosen: list[str] | None) -> list:
        return [gr.update(visible=lora_id in (chosen or [])) for lora_id in self.form.loras]

    def follow_model(self, model: str | None, loras: list[str] | None, *unit_models: str | None) -> list:
        """The LoRA and each unit's ControlNet-model choices narrowed to ``model``'s family (all, for a model the
        catalogue lacks). Selections that no longer fit are cleared (a unit's model back to auto), with a note in the
        status line. Outputs: the LoRA picker, each unit's model picker, the status."""
        family = widgets.family_of(self.pipeline, model)
        lora_choices = widgets.lora_choices(widgets.lora_models(self.pipeline, family))
        model_choices = widgets.controlnet_models(self.pipeline, family)
        lora_ids, model_ids = [value for _, value in lora_choices], [value for _, value in model_choices]
        loras = loras or []
        notes = [f"{self._misfit('LoRA', lora_id)}; cleared" for lora_id in loras if lora_id not in lora_ids]
        notes += [f"{self._misfit(f'ControlNet unit {i + 1}: model', model_id)}; set to auto"
                  for i, model_id in enumerate(unit_models) if model_id and model_id not in model_ids]
        return [gr.update(choices=lora_choices, value=[x for x in loras if x in lora_ids]),
                *(gr.update(choices=model_choices, value=x if x in model_ids else "auto") for x in unit_models),
                escape(". ".join(notes) + ".") if notes else gr.skip()]

    def _misfit(self, what: str, model_id: str) -> str:
        family = widgets.family_of(self.pipeline, model_id)
        return f"{what} {model_id} is " + (f"for {family}" if family else "not in this server's models.yaml")

    def previewer(self, i: int) -> Callable[..., Any]:
        """The preprocessor preview of unit ``i``: the control map its conditioner makes at the chosen size."""
        def preview(**values: Any) -> Image.Image | str:
            with errors_in_page():
                control = self.form.control(i, values)
                if control.preprocessed:
                    return control.image
                return self.pipeline.preprocess(control.id, control.image, width=values.get("width"),
                                                height=values.get("height"), resize_mode=control.resize_mode,
                                                **control.params)
        return preview

    # ---- image info ------------------------------------------------------------------------------
    def image_info(self, image: str | None) -> tuple[str, str, dict | None]:
        """The A1111-style parameters text, the full metadata as JSON, and the form fields it restores."""
        if image is None:
            return "", "", None
        with errors_in_page():
            meta, inputs = read_png(image)
            recorded_request(meta, inputs)  # odd values: one sentence here, never a KeyError, nothing decoded
            values, _ = self.form.from_metadata(meta, inputs, store=lambda name, picture: IMAGE)
            parameters = a1111_parameters(meta)
        values["inpaint"] = IMAGE if values["inpaint"] else None
        return parameters, json.dumps(meta, indent=1, default=str), values

    def restore(self, request: gr.Request, image: str | None) -> list:
        """Every field of the form set from an sdcompose PNG, in ``self.names`` order, then the units shown,
        the unit count, and the tabs to select."""
        if image is None:
            raise gr.Error("Upload a PNG made by sdcompose first.")
        folder = self.sessions.folder(session_of(request), "restored")

        def store(name: str, picture: Image.Image) -> str:
            path = folder / f"{name}-{secrets.token_hex(6)}.png"
            picture.save(path)
            return str(path)

        with errors_in_page():
            meta, inputs = read_png(image)
            recorded_request(meta, inputs)  # only values a request accepts reach the form
            values, warnings = self.form.from_metadata(meta, inputs, store)
        if values["model"] not in self.base_ids:
            warnings.append(f"model {values['model']!r} is not in this server's models.yaml; pick one")
            values["model"] = gr.skip()
        for warning in warnings:
            gr.Warning(escape(warning))
        enabled = [i for i in range(self.form.units) if values[self.form.unit(i, "enable")]]
        shown = max(enabled) + 1 if enabled else 0
        return [*(values[name] for name in self.names), *(gr.update(visible=i < shown) for i in range(self.form.units)),
                shown, gr.Tabs(selected="generate"), gr.Tabs(selected=values["task"])]
