"""What the page's events do: thin calls into ``Pipeline``, errors turned into messages in the page."""
from __future__ import annotations

import functools
import inspect
import json
import logging
import queue
import re
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import gradio as gr
from PIL import Image

from sdcompose.errors import Cancelled, ModelError, OutOfMemory, PluginError, SdcomposeError, ValidationError
from sdcompose import infotext
from sdcompose.images import pixel_budget
from sdcompose.metadata import a1111_parameters, read_png
from sdcompose.outputs import Outputs
from sdcompose.request import GenerationRequest, validate
from sdcompose.server.jobs import JobQueue

from . import widgets
from .form import EMBEDDED as IMAGE, TASKS, Form
from .sessions import Sessions
from .widgets import escape

log = logging.getLogger("sdcompose.ui")
TITLES = {ValidationError: "Invalid request", OutOfMemory: "Out of memory", ModelError: "Model problem",
          PluginError: "Plugin problem"}
PREVIEW_EVERY_S = 0.25  # at most four preview images a second reach the page


@contextmanager
def errors_in_page(units: list[int] | None = None) -> Iterator[None]:
    """Known errors become a message in the page (and an error for API clients); the session carries on.

    ``units``: the page's unit index of each enabled ControlNet unit, so ``controls[1]`` reads as the
    page's "ControlNet unit 3". Gradio renders error messages as HTML, so the text (which can quote user
    input) is escaped.
    """
    try:
        yield
    except gr.Error:
        raise
    except SdcomposeError as exc:
        title = next((t for cls, t in TITLES.items() if isinstance(exc, cls)), "Error")
        raise gr.Error(escape(page_names(str(exc), units or [])), title=title, print_exception=False) from None
    except (Exception, SystemExit, KeyboardInterrupt) as exc:  # not GeneratorExit: a closed event generator
        # A bug must not end the session, nor a SystemExit or KeyboardInterrupt the server: events run in worker
        # threads, where no signal arrives, so these come from code (plugin code: plugins/contain.py contains it).
        if not isinstance(exc, Exception) and threading.current_thread() is threading.main_thread():
            raise
        log.exception("unexpected error in a UI event")
        message = f"unexpected {type(exc).__name__}: {exc} (the server log has the traceback)"
        raise gr.Error(escape(message), title="Internal error", print_exception=False) from None


def page_names(message: str, units: list[int]) -> str:
    """``controls[k]`` (the request's k-th control) as the page's unit name."""
    def name(match: re.Match) -> str:
        k = int(match[1])
        return f"ControlNet unit {units[k] + 1}" if k < len(units) else match[0]
    return re.sub(r"controls\[(\d+)\]", name, message)


def error_line(exc: gr.Error) -> str:
    """The status line for an error: its title and sentence, in red (the message is already escaped)."""
    return f'<span class="sdc-error">{exc.title}: {exc.message}</span>'


@dataclass
class RunEvent:
    """A step of a generation (``done`` False) or its end."""

    done: bool = False
    step: int = 0
    total: int = 0
    image: Any = None  # a preview, at most four a second
    eta: float | None = None  # seconds left
    status: str = ""
    gallery: Any = None
    info: Any = None
    seed: Any = None


def progress_bar(event: RunEvent) -> str:
    """The page's progress bar: step count, a bar and the time left. Empty when the run is over."""
    if event.done or not event.total:
        return ""
    left = "" if event.eta is None else f" · about {_clock(event.eta)} left"
    percent = 100 * event.step / event.total
    return (f'<div class="sdc-bar"><div class="sdc-bar-fill" style="width:{percent:.1f}%"></div></div>'
            f'<div class="sdc-bar-text">Step {event.step} of {event.total}{left}</div>')


def waiting_line(ahead: int) -> str:
    """The status while a run waits in the job queue: how many run before it."""
    return f"Queued: {ahead} request{'s' if ahead > 1 else ''} ahead of this one."


def _steps(items: Iterator[Any]) -> Iterator[RunEvent]:
    """A run's ``(step, total, image)`` items (or status lines) as events: a preview image at most four times a
    second, and the time left."""
    shown, first = 0.0, None
    for item in items:
        if isinstance(item, str):
            yield RunEvent(status=item)
            continue
        step, total, image = item
        first = first or (time.monotonic(), step)
        due = time.monotonic() - shown >= PREVIEW_EVERY_S or step == total
        shown = time.monotonic() if due else shown
        yield RunEvent(step=step, total=total, image=image if due else None, status=f"Step {step} of {total}",
                       eta=_eta(first, step, total))


def _stopped(error: BaseException | None) -> RunEvent:
    return RunEvent(done=True, status=f"Stopped: {error}.", gallery=gr.skip(), info=gr.skip(), seed=gr.skip())


def _eta(first: tuple[float, int], step: int, total: int) -> float | None:
    """Seconds left, from the pace since the first step reported (None until there is a pace)."""
    since, first_step = first
    if step <= first_step:
        return None
    return (time.monotonic() - since) / (step - first_step) * (total - step)


def _clock(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


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


def test_model_line(result: Any) -> str:
    """The status line's warning for a tiny test model's images (random weights: noise)."""
    model = escape(result.metadata["request"]["model"])
    return (f"**These images are {escape(result.metadata['note'])}** ({model}): they show the pipeline works, not "
            "what a real model draws. ")


def session_of(request: gr.Request | None) -> str | None:
    return getattr(request, "session_hash", None)


class Handlers:
    def __init__(self, pipeline: Any, form: Form, sessions: Sessions, base_ids: list[str],
                 outputs: Outputs | None = None, jobs: Any = None) -> None:
        """``outputs``: where every image is kept (None: only for the session, in ``sessions``' folders); ``jobs``:
        the ``sdcompose.server.jobs.JobQueue`` runs wait in (``sdcompose ui`` and ``serve`` pass the one their HTTP
        APIs use; None: a queue of the page's own, started at its first run)."""
        self.pipeline, self.form, self.sessions, self.base_ids = pipeline, form, sessions, base_ids
        self.outputs, self._jobs = outputs, jobs
        self._jobs_lock = threading.Lock()
        self.names = list(form.defaults())

    @property
    def jobs(self) -> JobQueue:
        with self._jobs_lock:
            if self._jobs is None:
                self._jobs = JobQueue()
            return self._jobs

    # ---- generate and stop -------------------------------------------------------------------
    def generate(self, request: gr.Request, progress: gr.Progress = gr.Progress(), **values: Any) -> Iterator[tuple]:
        """The web API's generate: yields step previews while it runs, then: gallery (saved PNG files with their
        metadata), metadata JSON, status text, first seed. Errors raise (an AppError for API clients)."""
        for event in self._run(session_of(request), values):
            if event.done:
                yield event.gallery, event.info, event.status, event.seed
            elif event.status.startswith("Queued:"):  # waiting in the job queue, its place in the status
                yield gr.skip(), gr.skip(), event.status, gr.skip()
            elif event.total:
                progress((event.step, event.total), desc=f"step {event.step} of {event.total}", unit="steps")
                if event.image is not None:
                    yield [(event.image, f"preview at step {event.step}")], gr.skip(), event.status, gr.skip()

    def generate_in_page(self, request: gr.Request, **values: Any) -> Iterator[tuple]:
        """The page's generate: as ``generate``, plus the progress bar; an error is not raised but stays in the
        status line (red) until the next run. Outputs: gallery, metadata, status, first seed, progress bar, the
        gallery's file paths (what its send-to buttons may send on)."""
        yield from self.in_page(self._run(session_of(request), values))

    def in_page(self, events: Iterator[RunEvent]) -> Iterator[tuple]:
        """A run's events as the page's outputs (see ``generate_in_page``); its error, if any, in the status line."""
        try:
            for event in events:
                bar = progress_bar(event)
                if event.done:
                    paths = [path for path, _ in event.gallery] if isinstance(event.gallery, list) else gr.skip()
                    yield event.gallery, event.info, event.status, event.seed, bar, paths
                else:
                    gallery = gr.skip() if event.image is None else [(event.image, f"preview at step {event.step}")]
                    yield gallery, gr.skip(), event.status, gr.skip(), bar, []
        except gr.Error as exc:
            yield gr.skip(), gr.skip(), error_line(exc), gr.skip(), "", gr.skip()

    def _run(self, session: str | None, values: dict[str, Any]) -> Iterator[RunEvent]:
        """One generation in a worker thread: its steps (a preview image at most four times a second), then the
        saved result. Known errors raise ``gr.Error`` with the page's names (ControlNet unit 2, not controls[1])."""
        started = time.monotonic()
        with errors_in_page(self.form.unit_names(values)):
            kwargs = self.form.to_kwargs(values)
            yield RunEvent(status=self.preparing(kwargs.get("model")))
            result = yield from self.worker(session, lambda cancel, preview: self.pipeline.generate(
                **kwargs, cancel=cancel, preview=preview))
            if result is None:
                return
            paths = self.keep(session, result)
        seeds, note = result.metadata["seeds"], result.metadata.get("note")
        gallery = [(str(path), f"seed {seed}" + (f" · {note}" if note else "")) for path, seed in zip(paths, seeds)]
        status = f"{len(paths)} image(s), seed {', '.join(map(str, seeds))}, in {time.monotonic() - started:.1f} s."
        if self.outputs is not None:
            status += f" Saved as {escape(paths[0].name)}" + (" and the rest of the batch." if len(paths) > 1 else ".")
        if note:
            status = test_model_line(result) + status
        yield RunEvent(done=True, gallery=gallery, info=json.dumps(result.metadata, indent=1, default=str),
                       status=status, seed=seeds[0])

    def keep(self, session: str | None, result: Any) -> list[Path]:
        """Save a result's images: in the outputs folder, else (``--no-save``) for the browser session only."""
        if self.outputs is not None:
            return self.outputs.save(result)
        return result.save(self.sessions.output(session))

    def worker(self, session: str | None, job: Callable[[threading.Event, Callable], Any]) -> Iterator[RunEvent]:
        """``job(cancel, preview)`` run by the job queue's worker, Stop setting ``cancel``: yields its place while it
        waits (behind the HTTP APIs' requests too, under ``sdcompose serve``), then its steps (a preview image at
        most four times a second); returns what the job returns, or None when it was stopped or withdrawn (after
        yielding the "Stopped" event). Errors are raised again here. Stop withdraws a waiting job: it never runs.

        The queue's worker thread runs ``job``; its steps and every change of the queued job (its place, its end)
        reach this generator through one queue."""
        items: queue.Queue = queue.Queue()
        changed = object()
        queued = self.jobs.submit(lambda progress, cancel, preview: job(
            cancel, lambda step, total, image: items.put((step, total, image))), label="ui")

        def withdraw() -> str:
            self.jobs.cancel(queued.id)
            return "withdrawn" if queued.started is None else "stopping"  # never started: it never will

        def listen() -> None:
            items.put(changed)

        def events() -> Iterator[tuple]:
            last = None
            while True:
                if queued.state == "queued":
                    ahead = self.jobs.position(queued)
                    if ahead and ahead != last:  # 0: nothing runs before it, it starts now
                        last = ahead
                        yield waiting_line(ahead)
                item = items.get()
                if item is not changed:
                    yield item
                elif queued.wait(0):  # finished: every step it made is in ``items`` by now
                    while True:
                        try:
                            item = items.get_nowait()
                        except queue.Empty:
                            return
                        if item is not changed:
                            yield item

        queued.subscribe(listen)
        items.put(changed)  # in case it changed before the subscription
        with self.sessions.running(session, withdraw):
            try:
                yield from _steps(events())
            finally:  # the page went away: withdraw the request, or stop it at its next step
                queued.unsubscribe(listen)
                if not queued.wait(0):
                    self.jobs.cancel(queued.id)
        if queued.state == "cancelled":
            yield _stopped(queued.error)
            return None
        if queued.state == "failed":
            raise queued.error
        return queued.result

    def preparing(self, model: str | None) -> str:
        """The status line until the first step: the base model loading (or downloading, on first use)."""
        entry = self.pipeline.catalog.entries.get(model or self.pipeline.settings.default_model)
        if entry is None or entry.id in self.pipeline.loaded():
            return "Starting\u2026"
        if not self.pipeline.loader.is_local(entry):
            return f"Downloading {escape(entry.id)} (first use: several GB, it can take minutes)\u2026"
        return f"Loading {escape(entry.id)}\u2026"

    def stop(self, request: gr.Request) -> str:
        """Stop: a queued run is withdrawn (it never runs), a running one stops at the end of its step."""
        stopped = self.sessions.stop(session_of(request))
        if not stopped:
            return "Nothing is running."
        # a withdrawn run ends at once with this same line: whichever of the two the page gets last, it reads this
        return "Stopping at the end of this step." if "stopping" in stopped else "Stopped: cancelled before it started."

    def forget(self, request: gr.Request) -> None:
        self.sessions.forget(session_of(request))

    # ---- ControlNet units and LoRAs ------------------------------------------------------------
    def add_unit(self, shown: list[int] | None) -> list:
        """Show the first hidden ControlNet unit, enabled; outputs: the shown units, each unit's group, each unit's
        Enable box."""
        shown = list(shown or [])
        hidden = [i for i in range(self.form.units) if i not in shown]
        if not hidden:
            gr.Warning(f"This page offers {self.form.units} ControlNet units.")
            return [gr.skip()] * (1 + 2 * self.form.units)
        shown = sorted([*shown, hidden[0]])
        groups = [gr.update(visible=i in shown) for i in range(self.form.units)]
        enables = [True if i == hidden[0] else gr.skip() for i in range(self.form.units)]
        return [shown, *groups, *enables]

    def remove_unit(self, i: int) -> Callable[[list[int] | None], list]:
        """Hide unit ``i`` and untick its Enable (its settings stay, for when it is added again)."""
        return lambda shown: [[x for x in shown or [] if x != i], gr.update(visible=False), False]

    def show_units(self, task: str | None, *enables: bool) -> list:
        """After the form came back from the browser's storage: show the enabled units and the task's tab.
        Outputs: the shown units, each unit's group, the task tabs."""
        shown = [i for i, enabled in enumerate(enables) if enabled]
        return [shown, *(gr.update(visible=i in shown) for i in range(self.form.units)),
                gr.Tabs(selected=task if task in TASKS else "txt2img")]

    def param_groups(self, plugin_ids: list[str]) -> Callable[[str], list]:
        """For one unit: show the params of the chosen conditioner, hide the others'."""
        return lambda chosen: [gr.update(visible=plugin_id == chosen) for plugin_id in plugin_ids]

    def lora_weights(self, chosen: list[str] | None) -> list:
        return [gr.update(visible=lora_id in (chosen or [])) for lora_id in self.form.loras]

    def follow_conditioners(self, model: str | None, *chosen: str | None) -> list:
        """Each unit's conditioner choices narrowed to those that serve ``model``'s family (all, for a model the
        catalogue lacks); a choice that no longer fits moves to the first that does."""
        family = widgets.family_of(self.pipeline, model)
        offered = widgets.conditioner_choices(self.pipeline, family)
        ids = [value for _, value in offered]
        return [gr.update(choices=offered, value=x if x in ids or not ids else ids[0]) for x in chosen]

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

    def recommended(self, model: str | None, loras: list[str] | None) -> list:
        """Steps, guidance and sampler from the picked model's and LoRAs' models.yaml ``recommended`` hints (a few-step
        LoRA's win), each left as it is where no hint names it; the status line says what was applied."""
        from sdcompose.request import SCHEDULERS
        hints = self.pipeline.catalog.recommended(model or "", loras or [])
        sampler = hints.get("sampler")
        applied = [f"{k} {v}" for k, v in hints.items() if k != "sampler" or v in SCHEDULERS]
        note = f"Applied the recommended {', '.join(applied)}." if applied else ""
        if sampler is not None and sampler not in SCHEDULERS:
            note += f" Recommended sampler {sampler} is not available here; kept the current one."
        return [gr.update(value=hints["steps"]) if "steps" in hints else gr.skip(),
                gr.update(value=hints["guidance"]) if "guidance" in hints else gr.skip(),
                gr.update(value=sampler) if sampler in SCHEDULERS else gr.skip(),
                escape(note.strip()) if note else gr.skip()]

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
        """The parameters text (another tool's raw text as it is), the metadata as JSON (for another tool's
        image: what was read and what was dropped), and the form fields it restores (None for ComfyUI)."""
        if image is None:
            return "", "", None
        with errors_in_page():
            text, shown, meta, inputs, _ = self._settings(image)
            if meta is None:
                return text, json.dumps(shown, indent=1, default=str), None
            values, _ = self.form.from_metadata(meta, inputs, store=None)  # nothing decoded
        values["inpaint"] = IMAGE if values["inpaint"] else None
        return text, json.dumps(shown, indent=1, default=str), values

    def _settings(self, image: Any) -> tuple[str, dict, dict | None, dict, list[str]]:
        """(text to show, JSON to show, sdcompose-style metadata to restore or None, embedded inputs, warnings)."""
        found = infotext.foreign(image)
        if found.tool == "sdcompose":
            meta, inputs = read_png(image)
            GenerationRequest.from_metadata(meta, inputs)  # odd values: one sentence here, nothing decoded
            return a1111_parameters(meta), meta, meta, inputs, []
        if found.tool == "ComfyUI":
            shown = {"tool": "ComfyUI", "note": "made by ComfyUI: its graph cannot be run or restored here",
                     **{key: _json_or_text(found.text[key]) for key in infotext.COMFY_KEYS if key in found.text}}
            return found.raw, shown, None, {}, [shown["note"]]
        restored = self.pipeline.restored(found)
        request = validate(GenerationRequest(**({"model": self.base_ids[0]} | restored.fields))).summary()
        if "model" not in restored.fields:
            request["model"] = None  # the form keeps its own model and says so
        shown = {**restored.describe(), "parameters": infotext.parse(found.text["parameters"]), "request": request}
        meta = {"request": request, "seed": request["seed"], "task": "txt2img"}
        return found.raw, shown, meta, {}, [*restored.dropped, restored.note]

    def restore(self, request: gr.Request, image: str | None) -> list:
        """Every field of the form set from an sdcompose PNG, in ``self.names`` order, then the units shown,
        the units shown, and the tabs to select."""
        if image is None:
            raise gr.Error("Upload a PNG made by sdcompose or AUTOMATIC1111 first.")
        folder = self.sessions.folder(session_of(request), "restored")

        def store(name: str, picture: Image.Image) -> str:
            path = folder / f"{name}-{secrets.token_hex(6)}.png"
            picture.save(path)
            return str(path)

        with errors_in_page(), pixel_budget("this restore"):  # the images it decodes (the PNG has its own budget too)
            _, _, meta, inputs, notes = self._settings(image)
            if meta is None:
                raise ValidationError(notes[0])
            values, warnings = self.form.from_metadata(meta, inputs, store)
            warnings += [f"left out: {note}" for note in notes[:-1]] + notes[-1:]
        if values["model"] not in self.base_ids:
            warnings.append(f"model {values['model']!r} is not in this server's models.yaml; pick one")
            values["model"] = gr.skip()
        for warning in warnings:
            gr.Warning(escape(warning))
        shown = [i for i in range(self.form.units) if values[self.form.unit(i, "enable")]]
        return [*(values[name] for name in self.names), *(gr.update(visible=i in shown) for i in range(self.form.units)),
                shown, gr.Tabs(selected="generate"), gr.Tabs(selected=values["task"])]


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return text
