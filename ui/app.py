"""The page: ``build_app(pipeline)`` draws the Blocks from the pipeline's catalogue and plugin registry.

Building starts nothing (no weights, no server); ``sdcompose.ui.serve`` launches it. Every event that
reaches the server has an ``api_name`` and takes the form's field names as keywords, so
``gradio_client`` drives everything the page does.
"""
from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import gradio as gr

from sdcompose.request import (ATTENTION_BACKENDS, CONTROL_MODES, LIMITS, MEMORY_MODES, RESIZE_MODES,
                               SCHEDULERS)

from sdcompose.outputs import Outputs

from . import browser, widgets
from .numbers import schema_slider
from .form import LORA_WEIGHT, RANGES, TASKS, Form
from .assist import Assist
from .handlers import Handlers, with_fields
from .history import History
from .plot import PlotRun, plot_controls
from .sessions import Sessions
from .uploads import checked_image, control_file

INTRO = ("**sdcompose**: Stable Diffusion with ControlNet conditioners and LoRA adapters. Pick a model, write a "
         "prompt, press Generate. Every PNG carries what is needed to make it again: open it in the Image info "
         "tab to restore every setting.")
TAB_NAMES = {"txt2img": "Text to image", "img2img": "Image to image", "inpaint": "Inpaint"}
# A1111's img2img resize modes, by their names there
INPUT_RESIZE_MODES = [(mode.replace("_", " ").capitalize(), mode) for mode in RESIZE_MODES]
WAITING = 16  # page runs in flight at once (each waits in the job queue; more wait in Gradio's queue)
IMAGE_FIELDS = ("init_image", "inpaint", "mask")  # not kept in the browser's storage, as the units' images
Add = Callable[[str, Any], Any]


def build_app(pipeline: Any, workdir: str | Path | None = None, units: int = 3, save: bool = True,
              outputs: str | Path | None = None, model: str | None = None, jobs: Any = None) -> gr.Blocks:
    """The web UI over ``pipeline`` (an ``sdcompose.Pipeline``), with ``units`` ControlNet units, ``model`` picked.

    Every image is kept in ``outputs`` (default ``$SDCOMPOSE_HOME/outputs``, see ``sdcompose.outputs``) and
    listed in the History tab; Gradio serves that folder's PNGs as they are. ``save=False`` keeps images only
    for the browser session, under ``workdir`` (default: a temporary folder removed at exit), deleted when its
    tab closes; Gradio serves them from its own cache, so a ``workdir`` outside the system temp folder must be
    in ``launch(allowed_paths=...)``. ``jobs``: the ``sdcompose.server.jobs.JobQueue`` runs wait in (``sdcompose
    ui`` and ``serve`` pass the one their HTTP APIs use; None: one of the page's own): the page shows a run's
    place in it, and Stop withdraws a waiting run. A ControlNet unit's preview does not wait there: it answers
    while a generation runs.
    """
    units = max(1, min(units, LIMITS["controls"]))
    if workdir is None:
        workdir = tempfile.mkdtemp(prefix="sdcompose-ui-")
        atexit.register(shutil.rmtree, workdir, True)
    kept = Outputs(outputs) if save else None
    if kept is not None:
        kept.root.mkdir(parents=True, exist_ok=True)
        gr.set_static_paths([kept.root])  # served where they lie: written once, never changed
    conditioners, _ = widgets.conditioners(pipeline)
    loras = widgets.lora_models(pipeline)
    form = Form(conditioners, [e.id for e in loras], units)
    model_choices, default_model = widgets.base_models(pipeline, model)
    handlers = Handlers(pipeline, form, Sessions(Path(workdir) / "outputs"), [value for _, value in model_choices],
                        kept, jobs)
    history = History(kept)
    defaults = form.defaults() | {"model": default_model}
    fields: dict[str, Any] = {}
    ui = SimpleNamespace()

    def add(name: str, component: Any) -> Any:
        fields[name] = component
        return component

    with gr.Blocks(title="sdcompose", delete_cache=(3600, 86400), analytics_enabled=False) as demo:
        ui.last_seed, ui.shown = gr.State(None), gr.State([])
        ui.gallery_paths, ui.selected = gr.State([]), gr.State(None)
        ui.history_paths, ui.history_selected, ui.history_page = gr.State([]), gr.State(None), gr.State(1)
        gr.Markdown(INTRO)
        with gr.Row(equal_height=True):
            add("model", gr.Dropdown(model_choices, value=default_model, label="Model", elem_id="sdc-model", scale=8))
            ui.refresh = gr.Button("\U0001F504 Rescan model folders", size="sm", scale=1, min_width=120,
                                   elem_id="sdc-refresh")
        ui.task = add("task", gr.Radio(list(TASKS), value=defaults["task"], label="Task", visible=False))
        with gr.Tabs() as ui.main_tabs:
            with gr.Tab("Generate", id="generate"), gr.Row():
                with gr.Column(scale=3):
                    _form(ui, add, pipeline, form, loras, defaults)
                with gr.Column(scale=2):
                    _results(ui)
            with gr.Tab("History", id="history") as ui.history_tab:
                _history(ui)
            with gr.Tab("Image info", id="info"):
                _image_info(ui)
            with gr.Tab("Plugins", id="plugins"):
                gr.Dataframe(widgets.plugin_table(pipeline), interactive=False,
                             headers=["id", "kind", "families", "version", "package", "status", "error"])
        if set(fields) != set(handlers.names):
            raise RuntimeError(f"the page and the form disagree on fields: {sorted(set(fields) ^ set(handlers.names))}")
        _events(demo, ui, handlers, form, fields, defaults)
        _send_events(ui, history, handlers, form, fields)
        _assist_events(ui, Assist(pipeline), fields)
        demo.unload(handlers.forget)
    return demo


def _form(ui: SimpleNamespace, add: Add, pipeline: Any, form: Form, loras: list[Any],
          defaults: dict[str, Any]) -> None:
    """The left column: prompts, task tabs, settings, ControlNet units, LoRAs, memory and speed."""
    add("prompt", gr.Textbox(value="", label="Prompt", lines=3, elem_id="sdc-prompt",
                             placeholder="a lighthouse on a cliff at dawn"))
    # the tokens each prompt uses of its 75-token chunks, as A1111 shows them ("83/150")
    ui.prompt_tokens = gr.HTML("", elem_id="sdc-prompt-tokens")
    add("negative_prompt", gr.Textbox(value="", label="Negative prompt", lines=2, elem_id="sdc-negative"))
    ui.negative_tokens = gr.HTML("", elem_id="sdc-negative-tokens")
    with gr.Tabs(selected=defaults["task"]) as ui.mode_tabs:
        _mode_tabs(add, ui.task)
    ui.random_seed, ui.reuse_seed, ui.input_settings, ui.input_size = _settings(add, defaults)
    with gr.Accordion("ControlNet", open=False, elem_id="sdc-controlnet"):
        ui.units = [_control_unit(add, i, pipeline, form, defaults) for i in range(form.units)]
        ui.add_unit = gr.Button("Add ControlNet unit", size="sm", elem_id="sdc-add-unit")
        broken = widgets.unusable_plugins(pipeline)
        if broken:
            gr.Markdown("Plugins that could not be used (see the Plugins tab):\n" + broken)
    _loras(add, loras, form)
    _ip_adapter(add, pipeline, defaults)
    ui.plot_fields, ui.plot_run = plot_controls()
    _performance(add, defaults)
    ui.forget_form = gr.Button("Reset the form (it is kept in this browser)", size="sm", variant="secondary",
                               elem_id="sdc-forget-form")


def _results(ui: SimpleNamespace) -> None:
    """The right column: Generate and Stop with the progress bar, the status line, the gallery of saved PNGs
    with its send-to buttons, their metadata."""
    with gr.Column(elem_id="sdc-actions"):
        with gr.Row():
            ui.generate = gr.Button("Generate", variant="primary", elem_id="sdc-generate", scale=3)
            ui.stop = gr.Button("Stop", variant="stop", elem_id="sdc-stop", scale=1)
        ui.progress = gr.HTML("", elem_id="sdc-progress")
    ui.status = gr.Markdown(elem_id="sdc-status")
    ui.gallery = gr.Gallery(label="Images", columns=2, height=520, object_fit="contain", interactive=False,
                            buttons=["download", "fullscreen"], elem_id="sdc-gallery")
    ui.selected_line = gr.Markdown(elem_id="sdc-selected")  # what the send-to buttons send
    ui.send = _send_buttons("sdc-send")
    with gr.Accordion("Generation info", open=False):
        ui.info = gr.Code(language="json", label="Metadata", interactive=False)
    # The web API's generate (raises its errors for API clients); the page's button runs generate_in_page.
    ui.api_generate = gr.Button(visible=False)


def _send_buttons(prefix: str, restore: bool = False) -> dict[str, gr.Button]:
    """Buttons that send the gallery's selected image on: to a task tab, a ControlNet unit, Image info."""
    with gr.Row(elem_id=prefix):
        buttons = {"img2img": gr.Button("To image to image", size="sm", elem_id=f"{prefix}-img2img"),
                   "inpaint": gr.Button("To inpaint", size="sm", elem_id=f"{prefix}-inpaint"),
                   "unit": gr.Button("To ControlNet unit 1", size="sm", elem_id=f"{prefix}-unit"),
                   "info": gr.Button("To Image info", size="sm", elem_id=f"{prefix}-info")}
        if restore:
            buttons["restore"] = gr.Button("Restore its settings", size="sm", variant="primary",
                                           elem_id=f"{prefix}-restore")
    return buttons


def _history(ui: SimpleNamespace) -> None:
    """The kept images, newest first, a page at a time, searchable by prompt."""
    with gr.Row():
        ui.history_search = gr.Textbox(label="Search prompts", placeholder="lighthouse", scale=4,
                                       elem_id="sdc-history-search")
        with gr.Column(scale=1, min_width=160):
            ui.history_newer = gr.Button("Newer", size="sm", elem_id="sdc-history-newer")
            ui.history_older = gr.Button("Older", size="sm", elem_id="sdc-history-older")
    ui.history_where = gr.Markdown(elem_id="sdc-history-where")
    ui.history = gr.Gallery(label="History", columns=6, height=560, object_fit="contain", interactive=False,
                            buttons=["download", "fullscreen"], elem_id="sdc-history")
    ui.history_selected_line = gr.Markdown(elem_id="sdc-history-selected")
    ui.history_send = _send_buttons("sdc-history-send", restore=True)


def _image_info(ui: SimpleNamespace) -> None:
    """Upload a PNG: its parameters and metadata as text, and a button that restores every field."""
    with gr.Row():
        ui.info_image = gr.Image(type="filepath", image_mode=None, label="A PNG made by sdcompose",
                                 sources=["upload", "clipboard"], elem_id="sdc-info-image")
        with gr.Column():
            ui.parameters = gr.Textbox(label="Parameters", lines=4, interactive=False, elem_id="sdc-info-parameters")
            ui.restore = gr.Button("Send to Generate (restores every setting)", variant="primary",
                                   elem_id="sdc-restore")
    ui.metadata = gr.Code(language="json", label="Metadata", interactive=False, elem_id="sdc-info-metadata")
    with gr.Accordion("Form fields it restores", open=False):
        ui.restored = gr.JSON(label="Fields")


def _events(demo: gr.Blocks, ui: SimpleNamespace, handlers: Handlers, form: Form, fields: dict[str, Any],
            defaults: dict[str, Any]) -> None:
    """Every event that reaches the server has an api_name; the web API takes the form's field names."""
    groups = [unit["group"] for unit in ui.units]
    unit_models = [fields[form.unit(i, "model")] for i in range(form.units)]
    # The LoRA and ControlNet-model pickers follow the model: at page load, when the user picks one, after a restore.
    # Unpreprocessed: a restore sets selections before the choices that hold them, which Gradio's check would refuse.
    unit_plugins = [fields[form.unit(i, "plugin")] for i in range(form.units)]
    enables = [fields[form.unit(i, "enable")] for i in range(form.units)]
    # The LoRA, ControlNet-model and conditioner pickers follow the model: at page load (after the form kept in
    # the browser is back), when the user picks one, after a restore.
    follow = dict(fn=handlers.follow_model, inputs=[fields["model"], fields["loras"], *unit_models],
                  outputs=[fields["loras"], *unit_models, ui.status], preprocess=False, api_visibility="undocumented")
    narrow = dict(fn=handlers.follow_conditioners, inputs=[fields["model"], *unit_plugins], outputs=unit_plugins,
                  preprocess=False, api_visibility="undocumented")
    kept = [name for name in fields if name not in IMAGE_FIELDS and not name.endswith(("_image", "_file"))]
    loaded = demo.load(None, None, None, js=browser.on_load())
    loaded = loaded.then(None, [fields[n] for n in kept], [fields[n] for n in kept], js=browser.load_form(kept))
    loaded = loaded.then(handlers.show_units, [ui.task, *enables], [ui.shown, *groups, ui.mode_tabs],
                         api_name="show_units", api_visibility="undocumented")
    loaded = loaded.then(**follow, api_name="follow_model").then(**narrow, api_name="follow_conditioners")
    loaded.then(None, None, None, js=browser.mark_ready())  # the form is back and its pickers follow its model
    fields["model"].input(**follow, api_name="follow_model_picked").then(**narrow,
                                                                         api_name="follow_conditioners_picked")
    rescanned = ui.refresh.click(Assist(handlers.pipeline).refresh, fields["model"], [fields["model"], ui.status],
                                 api_name="refresh_models")  # new files in the model folders: new choices
    rescanned.then(**follow, api_name="follow_rescanned").then(**narrow, api_name="follow_rescanned_conditioners")
    gr.on([fields[n].change for n in kept], None, [fields[n] for n in kept], None, js=browser.save_form(kept),
          queue=False)
    ui.forget_form.click(None, None, None, js=browser.forget_form())
    outputs = [ui.gallery, ui.info, ui.status, ui.last_seed]
    # Runs wait in the job queue (their place shows, Stop withdraws them), not in Gradio's.
    device = dict(concurrency_limit=WAITING, concurrency_id="generate")
    run = dict(inputs_kwargs=fields, **device)
    ui.api_generate.click(with_fields(handlers.generate, list(fields)), outputs=outputs, api_name="generate",
                          show_progress_on=ui.gallery, **run)
    # The page's run: the status line is cleared as it starts; progress has its own bar, the previews show in
    # the gallery unhidden, and an error stays in the status line.
    started = gr.on([ui.generate.click], lambda: ("Waiting for the device\u2026", ""), None, [ui.status, ui.progress],
                    api_name="clear_status", api_visibility="undocumented", queue=False)
    in_page = dict(outputs=[*outputs, ui.progress, ui.gallery_paths], show_progress="minimal",
                   show_progress_on=ui.progress, **device)
    started.then(with_fields(handlers.generate_in_page, list(fields)), inputs_kwargs=fields,
                 api_name="generate_in_page", api_visibility="undocumented", **in_page)
    # The X/Y/Z plot: the form's request over its axes, one job on the same queue, shown and kept as a run is.
    plotted = ui.plot_run.click(lambda: ("Waiting for the device\u2026", ""), None, [ui.status, ui.progress],
                                api_name="clear_status_plot", api_visibility="undocumented", queue=False)
    plotted.then(with_fields(PlotRun(handlers).in_page, [*fields, *ui.plot_fields]),
                 inputs_kwargs=fields | ui.plot_fields, api_name="xyz_plot", **in_page)
    gr.on([fields["model"].input, fields["loras"].input], handlers.recommended, [fields["model"], fields["loras"]],
          [fields["steps"], fields["guidance"], fields["scheduler"], ui.status], api_name="recommended",
          api_visibility="undocumented")  # a few-step model's steps, guidance and sampler, when the user picks it
    # Stop sets the run's cancel flag: the pipeline stops at the end of the step and the run reports it.
    # (Gradio's own `cancels=` would drop the streaming event while its worker still holds the queue.)
    ui.stop.click(handlers.stop, None, ui.status, api_name="stop", concurrency_limit=None)
    ui.random_seed.click(None, None, fields["seed"], js=f"() => {defaults['seed']}")
    ui.add_unit.click(handlers.add_unit, ui.shown, [ui.shown, *groups, *enables], api_name="add_unit",
                      api_visibility="undocumented")
    for i, unit in enumerate(ui.units):
        unit["remove"].click(handlers.remove_unit(i), ui.shown, [ui.shown, unit["group"], enables[i]],
                             api_name=f"remove_unit{i}", api_visibility="undocumented")
        plugin = fields[form.unit(i, "plugin")]
        plugin.change(handlers.param_groups(list(unit["params"])), plugin, list(unit["params"].values()),
                      api_name=f"unit{i}_conditioner", api_visibility="undocumented")
        names = [name for name in fields if name.startswith(form.unit(i, "")) or name in ("width", "height")]
        preview = dict(fn=with_fields(handlers.previewer(i), names), inputs_kwargs={n: fields[n] for n in names},
                       outputs=unit["map"], concurrency_limit=1, concurrency_id="preview")
        unit["preview"].click(**preview, api_name=f"preview_unit{i}")
        # A pose file shows the pose it draws as soon as it arrives.
        fields[form.unit(i, "file")].upload(**preview, api_name=f"preview_file{i}", api_visibility="undocumented")
    fields["loras"].change(handlers.lora_weights, fields["loras"], [fields[form.lora(x)] for x in form.loras],
                           api_name="lora_weights", api_visibility="undocumented")
    ui.info_image.change(handlers.image_info, ui.info_image, [ui.parameters, ui.metadata, ui.restored],
                         api_name="image_info")
    restored_outputs = [*(fields[name] for name in handlers.names), *groups, ui.shown, ui.main_tabs, ui.mode_tabs]
    restored = ui.restore.click(handlers.restore, ui.info_image, restored_outputs, api_name="restore")
    restored.success(**follow, api_name="follow_restored_model").then(**narrow, api_name="follow_restored_conditioners")
    ui.history_restored = ui.history_send["restore"].click(handlers.restore, ui.history_selected, restored_outputs,
                                                           api_name="restore_from_history",
                                                           api_visibility="undocumented")
    ui.history_restored.success(**follow, api_name="follow_history_model").then(
        **narrow, api_name="follow_history_conditioners")


def _send_events(ui: SimpleNamespace, history: History, handlers: Handlers, form: Form,
                 fields: dict[str, Any]) -> None:
    """The galleries' selections, the send-to buttons under both, and the History tab's paging."""
    unit0 = ui.units[0]["group"]
    for gallery, paths, selected, line, send in (
            (ui.gallery, ui.gallery_paths, ui.selected, ui.selected_line, ui.send),
            (ui.history, ui.history_paths, ui.history_selected, ui.history_selected_line, ui.history_send)):
        gallery.select(history.select, paths, [selected, line], api_visibility="private")
        # A new listing has nothing selected.
        gallery.change(lambda: (None, ""), None, [selected, line], api_visibility="private", queue=False)
        send["img2img"].click(history.to_img2img, selected,
                              [fields["init_image"], ui.task, ui.main_tabs, ui.mode_tabs], api_visibility="private")
        send["inpaint"].click(history.to_inpaint, selected, [fields["inpaint"], ui.task, ui.main_tabs, ui.mode_tabs],
                              api_visibility="private")
        send["unit"].click(history.to_unit, [selected, ui.shown],
                           [fields[form.unit(0, "image")], fields[form.unit(0, "enable")], ui.shown, unit0,
                            ui.main_tabs], api_visibility="private")
        send["info"].click(history.to_info, selected, [ui.info_image, ui.main_tabs], api_visibility="private")
    ui.reuse_seed.click(history.seed_of, [ui.selected, ui.last_seed], fields["seed"], api_visibility="private")
    browse = [ui.history_search, ui.history_page]
    shown = [ui.history, ui.history_paths, ui.history_page, ui.history_where]
    # always_last: a search submitted while the tab's own listing runs is listed after it, not dropped
    gr.on([ui.history_tab.select, ui.history_search.submit], history.pager(0), [ui.history_search, gr.State(1)],
          shown, api_name="history", api_visibility="undocumented", trigger_mode="always_last")
    ui.history_newer.click(history.pager(-1), browse, shown, api_visibility="private")
    ui.history_older.click(history.pager(+1), browse, shown, api_visibility="private")
    ui.task.change(lambda task: gr.update(visible=task != "txt2img"), ui.task, ui.input_settings,
                   api_visibility="private", queue=False)


def _assist_events(ui: SimpleNamespace, assist: Assist, fields: dict[str, Any]) -> None:
    """The prompts' token counts, the input image's size."""
    prompt_inputs = [fields[n] for n in ("model", "prompt", "negative_prompt", "loras", "add_trigger_words")]
    gr.on([component.change for component in prompt_inputs], assist.prompt_tokens, prompt_inputs,
          [ui.prompt_tokens, ui.negative_tokens], api_name="prompt_tokens", api_visibility="undocumented",
          trigger_mode="always_last", concurrency_id="tokens", show_progress="hidden")
    ui.input_size.click(assist.input_size, [ui.task, fields["init_image"], fields["inpaint"]],
                        [fields["width"], fields["height"], ui.status], api_name="input_size",
                        api_visibility="undocumented")


def _mode_tabs(add: Add, task_field: Any) -> None:
    """Text to image / image to image / inpaint; selecting a tab sets the hidden ``task`` field in the browser."""
    for task, title in TAB_NAMES.items():
        with gr.Tab(title, id=task, elem_id=f"sdc-tab-{task}") as tab:
            if task == "txt2img":
                gr.Markdown("From the prompt alone (and any ControlNet units below).")
            elif task == "img2img":
                add("init_image", checked_image(label="Input image", sources=["upload", "clipboard"],
                                               elem_id="sdc-init-image"))
            else:
                add("inpaint", gr.ImageEditor(type="pil", label="Image: paint over the area to change",
                                              brush=gr.Brush(colors=[("#ff0066", 0.6)], color_mode="fixed"),
                                              transforms=(), sources=["upload", "clipboard"], elem_id="sdc-inpaint"))
                add("mask", checked_image(label="Or upload a mask (white = change)", sources=["upload"], height=160))
        tab.select(None, None, task_field, js=f"() => {task!r}")


def _settings(add: Add, defaults: dict[str, Any]) -> tuple[gr.Button, gr.Button, gr.Column, gr.Button]:
    """Sampler, steps, size, guidance, batch, seed (with its random / reuse buttons); for the tasks that take an
    input image (shown only there): strength, the resize mode and a button that takes the input image's size.
    Returns the random-seed, reuse-seed buttons, the input image's settings, its size button."""
    with gr.Row():
        add("scheduler", gr.Dropdown(list(SCHEDULERS), value=defaults["scheduler"], label="Sampler"))
        add("steps", schema_slider(*RANGES["steps"], value=defaults["steps"], step=1, label="Steps",
                                   elem_id="sdc-steps"))
    with gr.Row():
        add("width", schema_slider(*RANGES["width"], value=defaults["width"], step=LIMITS["size_multiple"],
                                   label="Width", elem_id="sdc-width"))
        add("height", schema_slider(*RANGES["height"], value=defaults["height"], step=LIMITS["size_multiple"],
                                    label="Height", elem_id="sdc-height"))
    with gr.Row():
        add("guidance", schema_slider(*RANGES["guidance"], value=defaults["guidance"], step=0.5, label="CFG scale",
                                      elem_id="sdc-guidance"))
        add("batch", schema_slider(*RANGES["batch"], value=defaults["batch"], step=1, label="Batch size",
                                   elem_id="sdc-batch"))
    with gr.Row():
        add("seed", gr.Number(value=defaults["seed"], precision=0, label="Seed (-1: random)", scale=3,
                              elem_id="sdc-seed"))
        with gr.Column(scale=1, min_width=120):
            random_seed = gr.Button("Random seed", size="sm")
            reuse_seed = gr.Button("Reuse seed", size="sm", elem_id="sdc-reuse-seed")
    with gr.Column(visible=defaults["task"] != "txt2img", elem_id="sdc-input-settings") as input_settings:
        # the low end is one step above the schema's 0: strength 0 is refused for image to image and inpaint
        add("strength", schema_slider(0.01, RANGES["strength"][1], value=defaults["strength"], step=0.01,
                                      elem_id="sdc-strength",
                                      label="Denoising strength (how much of the input image is repainted)"))
        with gr.Row(equal_height=True):
            add("resize_mode", gr.Radio(INPUT_RESIZE_MODES, value=defaults["resize_mode"], scale=3,
                                        label="Resize mode (the input image to the width and height)",
                                        elem_id="sdc-resize-mode"))
            input_size = gr.Button("Use the input image's size", size="sm", scale=1, elem_id="sdc-input-size")
    return random_seed, reuse_seed, input_settings, input_size


def _control_unit(add: Add, i: int, pipeline: Any, form: Form, defaults: dict[str, Any]) -> dict[str, Any]:
    """One ControlNet unit, its conditioner's params drawn from their ``ParamSpec``s (one group per conditioner,
    shown when chosen). Returns its group, param groups, preview button and preview image."""
    name = lambda field: form.unit(i, field)  # noqa: E731
    with gr.Group(visible=False, elem_id=f"sdc-unit-{i}") as group:
        with gr.Row():
            gr.Markdown(f"**ControlNet unit {i + 1}**")
            remove = gr.Button("Remove", size="sm", scale=0, min_width=90, elem_id=f"sdc-unit-{i}-remove")
        with gr.Row():
            add(name("enable"), gr.Checkbox(defaults[name("enable")], label="Enable", elem_id=f"sdc-unit-{i}-enable"))
            add(name("preprocessed"), gr.Checkbox(defaults[name("preprocessed")],
                                                  label="The image already is a control map"))
        with gr.Row():
            add(name("plugin"), gr.Dropdown(widgets.conditioner_choices(pipeline), value=defaults[name("plugin")],
                                            label="Conditioner", elem_id=f"sdc-unit-{i}-plugin"))
            add(name("model"), gr.Dropdown(widgets.controlnet_models(pipeline), value=defaults[name("model")],
                                           label="ControlNet model", elem_id=f"sdc-unit-{i}-model"))
        with gr.Row():
            add(name("image"), checked_image(label="Control image", height=220, sources=["upload", "clipboard"],
                                            elem_id=f"sdc-unit-{i}-image"))
            control_map = gr.Image(label="Preprocessor preview", interactive=False, format="png", height=220,
                                   elem_id=f"sdc-unit-{i}-map")
        add(name("file"), control_file(label="Or a file: OpenPose JSON, a 16-bit depth map (used when there is no "
                                      "control image)", height=90, elem_id=f"sdc-unit-{i}-file"))
        preview = gr.Button("Preview the preprocessor", size="sm", elem_id=f"sdc-unit-{i}-preview")
        params = {}
        for plugin_id, specs in form.conditioners.items():
            with gr.Group(visible=plugin_id == defaults[name("plugin")]) as params[plugin_id]:
                for spec in specs:
                    key = form.param(i, plugin_id, spec.name)
                    add(key, widgets.param_widget(spec, defaults[key]))
        with gr.Row():
            add(name("weight"), schema_slider(*RANGES["unit_weight"], value=defaults[name("weight")], step=0.05,
                                              label="Weight", elem_id=f"sdc-unit-{i}-weight"))
            add(name("start"), schema_slider(*RANGES["unit_start"], value=defaults[name("start")], step=0.01,
                                             label="Starting step"))
            add(name("end"), schema_slider(*RANGES["unit_end"], value=defaults[name("end")], step=0.01,
                                           label="Ending step"))
        with gr.Row():
            add(name("resize_mode"), gr.Radio(list(RESIZE_MODES), value=defaults[name("resize_mode")],
                                              label="Resize mode"))
            add(name("control_mode"), gr.Radio(list(CONTROL_MODES), value=defaults[name("control_mode")],
                                               label="Control mode"))
    return {"group": group, "params": params, "preview": preview, "map": control_map, "remove": remove}


def _loras(add: Add, loras: list[Any], form: Form) -> None:
    """A multi-select of the catalogue's LoRAs (family and trigger words shown), one weight slider each."""
    with gr.Accordion("LoRA", open=False, elem_id="sdc-lora"):
        add("loras", gr.Dropdown(widgets.lora_choices(loras), value=[], multiselect=True, label="LoRAs",
                                 elem_id="sdc-loras"))
        for entry in loras:
            add(form.lora(entry.id), schema_slider(*RANGES["lora"], value=LORA_WEIGHT, step=0.05,
                                                   label=f"{entry.id} weight",
                                                   info=f"trigger words: {', '.join(entry.trigger_words)}"
                                                   if entry.trigger_words else None, visible=False))
        add("add_trigger_words", gr.Checkbox(False, label="Add the chosen LoRAs' trigger words to the prompt"))


def _ip_adapter(add: Add, pipeline: Any, defaults: dict[str, Any]) -> None:
    """One image prompt: an IP-Adapter of the catalogue (family shown), its reference image, weight, start and end."""
    choices = widgets.ip_adapter_choices(pipeline)
    with gr.Accordion("IP-Adapter", open=False, elem_id="sdc-ip-adapter"):
        add("ip_enable", gr.Checkbox(defaults["ip_enable"], label="Use an image prompt", elem_id="sdc-ip-enable"))
        add("ip_model", gr.Dropdown(choices, value=choices[0][1] if choices else None, label="IP-Adapter",
                                    elem_id="sdc-ip-model"))
        add("ip_image", checked_image(label="Reference image", sources=["upload", "clipboard"], height=200,
                                      elem_id="sdc-ip-image"))
        with gr.Row():
            for name, label in (("weight", "Weight"), ("start", "Start"), ("end", "End")):
                add(f"ip_{name}", gr.Slider(*RANGES[f"ip_{name}"], value=defaults[f"ip_{name}"], step=0.05,
                                            label=label, elem_id=f"sdc-ip-{name}"))


def _performance(add: Add, defaults: dict[str, Any]) -> None:
    """What the pipeline offers for memory and speed: memory mode (with its budget), attention backend, fast mode."""
    with gr.Accordion("Memory and speed", open=False, elem_id="sdc-performance"):
        with gr.Row():
            add("memory", gr.Dropdown(list(MEMORY_MODES), value=defaults["memory"], label="Memory mode",
                                      info="auto: the fastest mode that fits the memory budget"))
            add("vram", gr.Textbox(value=defaults["vram"], label="Memory budget", placeholder="e.g. 6GB",
                                   info="for auto; empty: what the card has free"))
        with gr.Row():
            add("attention", gr.Dropdown(list(ATTENTION_BACKENDS), value=defaults["attention"],
                                         label="Attention backend", info="auto: PyTorch SDPA"))
            add("fast", gr.Checkbox(defaults["fast"], label="Fast mode",
                                    info="compile the UNet and ControlNets and replay them as CUDA graphs (CUDA only)"))
