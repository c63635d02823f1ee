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

from . import widgets
from .form import TASKS, Form
from .handlers import Handlers, with_fields
from .sessions import Sessions

INTRO = ("**sdcompose**: Stable Diffusion with ControlNet conditioners and LoRA adapters. Pick a model, write a "
         "prompt, press Generate. Every PNG carries what is needed to make it again: open it in the Image info "
         "tab to restore every setting.")
TAB_NAMES = {"txt2img": "Text to image", "img2img": "Image to image", "inpaint": "Inpaint"}
Add = Callable[[str, Any], Any]


def build_app(pipeline: Any, workdir: str | Path | None = None, units: int = 3, model: str | None = None) -> gr.Blocks:
    """The web UI over ``pipeline`` (an ``sdcompose.Pipeline``), with ``units`` ControlNet units, ``model`` first.

    Generated PNGs go under ``workdir`` (default: a temporary folder removed at exit), one folder per
    browser session, deleted when its tab closes. Gradio serves them from its own cache; a ``workdir``
    outside the system temp folder must be in ``launch(allowed_paths=...)`` for Gradio to take them.
    """
    units = max(1, min(units, LIMITS["controls"]))
    if workdir is None:
        workdir = tempfile.mkdtemp(prefix="sdcompose-ui-")
        atexit.register(shutil.rmtree, workdir, True)
    conditioners, helps = widgets.conditioners(pipeline)
    loras = widgets.lora_models(pipeline)
    form = Form(conditioners, [e.id for e in loras], units)
    model_choices, default_model = widgets.base_models(pipeline, model)
    handlers = Handlers(pipeline, form, Sessions(Path(workdir) / "outputs"), [value for _, value in model_choices])
    defaults = form.defaults() | {"model": default_model}
    fields: dict[str, Any] = {}
    ui = SimpleNamespace()

    def add(name: str, component: Any) -> Any:
        fields[name] = component
        return component

    with gr.Blocks(title="sdcompose", delete_cache=(3600, 86400), analytics_enabled=False) as demo:
        ui.last_seed, ui.shown = gr.State(None), gr.State(0)
        gr.Markdown(INTRO)
        add("model", gr.Dropdown(model_choices, value=default_model, label="Model", elem_id="sdc-model"))
        ui.task = add("task", gr.Radio(list(TASKS), value=defaults["task"], label="Task", visible=False))
        with gr.Tabs() as ui.main_tabs:
            with gr.Tab("Generate", id="generate"), gr.Row():
                with gr.Column(scale=3):
                    _form(ui, add, pipeline, form, helps, loras, defaults)
                with gr.Column(scale=2):
                    _results(ui)
            with gr.Tab("Image info", id="info"):
                _image_info(ui)
            with gr.Tab("Plugins", id="plugins"):
                gr.Dataframe(widgets.plugin_table(pipeline), interactive=False,
                             headers=["id", "kind", "families", "version", "package", "status", "error"])
        if set(fields) != set(handlers.names):
            raise RuntimeError(f"the page and the form disagree on fields: {sorted(set(fields) ^ set(handlers.names))}")
        _events(demo, ui, handlers, form, fields, defaults)
        demo.unload(handlers.forget)
    return demo


def _form(ui: SimpleNamespace, add: Add, pipeline: Any, form: Form, helps: dict[str, str], loras: list[Any],
          defaults: dict[str, Any]) -> None:
    """The left column: prompts, task tabs, settings, ControlNet units, LoRAs, memory and speed."""
    add("prompt", gr.Textbox(value="", label="Prompt", lines=3, elem_id="sdc-prompt",
                             placeholder="a lighthouse on a cliff at dawn"))
    add("negative_prompt", gr.Textbox(value="", label="Negative prompt", lines=2))
    with gr.Tabs(selected=defaults["task"]) as ui.mode_tabs:
        _mode_tabs(add, ui.task)
    ui.random_seed, ui.reuse_seed = _settings(add, defaults)
    with gr.Accordion("ControlNet", open=False, elem_id="sdc-controlnet"):
        ui.units = [_control_unit(add, i, pipeline, form, helps, defaults) for i in range(form.units)]
        ui.add_unit = gr.Button("Add ControlNet unit", size="sm", elem_id="sdc-add-unit")
        broken = widgets.unusable_plugins(pipeline)
        if broken:
            gr.Markdown("Plugins that could not be used (see the Plugins tab):\n" + broken)
    _loras(add, loras, form)
    _performance(add, defaults)


def _results(ui: SimpleNamespace) -> None:
    """The right column: Generate and Stop, the status line, the gallery of saved PNGs, their metadata."""
    with gr.Row():
        ui.generate = gr.Button("Generate", variant="primary", elem_id="sdc-generate", scale=3)
        ui.stop = gr.Button("Stop", variant="stop", elem_id="sdc-stop", scale=1)
    ui.status = gr.Markdown(elem_id="sdc-status")
    ui.gallery = gr.Gallery(label="Images", columns=2, height=520, object_fit="contain", interactive=False,
                            buttons=["download", "fullscreen"], elem_id="sdc-gallery")
    with gr.Accordion("Generation info", open=False):
        ui.info = gr.Code(language="json", label="Metadata", interactive=False)


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
    follow = dict(fn=handlers.follow_model, inputs=[fields["model"], fields["loras"], *unit_models],
                  outputs=[fields["loras"], *unit_models, ui.status], preprocess=False, api_visibility="undocumented")
    gr.on([demo.load, fields["model"].input], **follow, api_name="follow_model")
    ui.generate.click(with_fields(handlers.generate, list(fields)), inputs_kwargs=fields,
                      outputs=[ui.gallery, ui.info, ui.status, ui.last_seed], api_name="generate",
                      concurrency_limit=1, concurrency_id="device", show_progress_on=ui.gallery)
    # Stop sets the run's cancel flag: the pipeline stops at the end of the step and the run reports it.
    # (Gradio's own `cancels=` would drop the streaming event while its worker still holds the queue.)
    ui.stop.click(handlers.stop, None, ui.status, api_name="stop", concurrency_limit=None)
    ui.random_seed.click(None, None, fields["seed"], js=f"() => {defaults['seed']}")
    ui.reuse_seed.click(handlers.reuse_seed, ui.last_seed, fields["seed"], api_name="reuse_seed",
                        api_visibility="undocumented")
    enables = [fields[form.unit(i, "enable")] for i in range(form.units)]
    ui.add_unit.click(handlers.add_unit, ui.shown, [ui.shown, *groups, *enables], api_name="add_unit",
                      api_visibility="undocumented")
    for i, unit in enumerate(ui.units):
        plugin = fields[form.unit(i, "plugin")]
        plugin.change(handlers.param_groups(list(unit["params"])), plugin, list(unit["params"].values()),
                      api_name=f"unit{i}_conditioner", api_visibility="undocumented")
        names = [name for name in fields if name.startswith(form.unit(i, "")) or name in ("width", "height")]
        unit["preview"].click(with_fields(handlers.previewer(i), names), inputs_kwargs={n: fields[n] for n in names},
                              outputs=unit["map"], api_name=f"preview_unit{i}", concurrency_limit=1,
                              concurrency_id="device")
    fields["loras"].change(handlers.lora_weights, fields["loras"], [fields[form.lora(x)] for x in form.loras],
                           api_name="lora_weights", api_visibility="undocumented")
    ui.info_image.change(handlers.image_info, ui.info_image, [ui.parameters, ui.metadata, ui.restored],
                         api_name="image_info")
    restored = ui.restore.click(handlers.restore, ui.info_image,
                                [*(fields[name] for name in handlers.names), *groups, ui.shown, ui.main_tabs,
                                 ui.mode_tabs], api_name="restore")
    restored.success(**follow, api_name="follow_restored_model")


def _mode_tabs(add: Add, task_field: Any) -> None:
    """Text to image / image to image / inpaint; selecting a tab sets the hidden ``task`` field in the browser."""
    for task, title in TAB_NAMES.items():
        with gr.Tab(title, id=task, elem_id=f"sdc-tab-{task}") as tab:
            if task == "txt2img":
                gr.Markdown("From the prompt alone (and any ControlNet units below).")
            elif task == "img2img":
                add("init_image", gr.Image(type="filepath", image_mode=None, label="Input image",
                                           sources=["upload", "clipboard"], elem_id="sdc-init-image"))
            else:
                add("inpaint", gr.ImageEditor(type="pil", label="Image: paint over the area to change",
                                              brush=gr.Brush(colors=[("#ff0066", 0.6)], color_mode="fixed"),
                                              transforms=(), sources=["upload", "clipboard"], elem_id="sdc-inpaint"))
                add("mask", gr.Image(type="filepath", image_mode=None, label="Or upload a mask (white = change)",
                                     sources=["upload"], height=160))
        tab.select(None, None, task_field, js=f"() => {task!r}")


def _settings(add: Add, defaults: dict[str, Any]) -> tuple[gr.Button, gr.Button]:
    """Sampler, steps, size, guidance, batch, seed (with its random / reuse-last buttons), strength."""
    with gr.Row():
        add("scheduler", gr.Dropdown(list(SCHEDULERS), value=defaults["scheduler"], label="Sampler"))
        add("steps", gr.Slider(1, 150, value=defaults["steps"], step=1, label="Steps", elem_id="sdc-steps"))
    with gr.Row():
        add("width", gr.Slider(64, 2048, value=defaults["width"], step=8, label="Width", elem_id="sdc-width"))
        add("height", gr.Slider(64, 2048, value=defaults["height"], step=8, label="Height", elem_id="sdc-height"))
    with gr.Row():
        add("guidance", gr.Slider(0, 30, value=defaults["guidance"], step=0.5, label="CFG scale"))
        add("batch", gr.Slider(1, 8, value=defaults["batch"], step=1, label="Batch size"))
    with gr.Row():
        add("seed", gr.Number(value=defaults["seed"], precision=0, label="Seed (-1: random)", scale=3,
                              elem_id="sdc-seed"))
        with gr.Column(scale=1, min_width=120):
            random_seed = gr.Button("Random seed", size="sm")
            reuse_seed = gr.Button("Reuse last seed", size="sm")
    add("strength", gr.Slider(0.01, 1.0, value=defaults["strength"], step=0.01,
                              label="Denoising strength (image to image and inpaint)"))
    return random_seed, reuse_seed


def _control_unit(add: Add, i: int, pipeline: Any, form: Form, helps: dict[str, str],
                  defaults: dict[str, Any]) -> dict[str, Any]:
    """One ControlNet unit, its conditioner's params drawn from their ``ParamSpec``s (one group per conditioner,
    shown when chosen). Returns its group, param groups, preview button and preview image."""
    name = lambda field: form.unit(i, field)  # noqa: E731
    with gr.Group(visible=False, elem_id=f"sdc-unit-{i}") as group:
        gr.Markdown(f"**ControlNet unit {i + 1}**")
        with gr.Row():
            add(name("enable"), gr.Checkbox(defaults[name("enable")], label="Enable", elem_id=f"sdc-unit-{i}-enable"))
            add(name("preprocessed"), gr.Checkbox(defaults[name("preprocessed")],
                                                  label="The image already is a control map"))
        with gr.Row():
            add(name("plugin"), gr.Dropdown([(f"{pid}: {helps[pid]}" if helps[pid] else pid, pid) for pid in helps],
                                            value=defaults[name("plugin")], label="Conditioner"))
            add(name("model"), gr.Dropdown(widgets.controlnet_models(pipeline), value=defaults[name("model")],
                                           label="ControlNet model", elem_id=f"sdc-unit-{i}-model"))
        with gr.Row():
            add(name("image"), gr.Image(type="filepath", image_mode=None, label="Control image", height=220,
                                        sources=["upload", "clipboard"], elem_id=f"sdc-unit-{i}-image"))
            control_map = gr.Image(label="Preprocessor preview", interactive=False, format="png", height=220,
                                   elem_id=f"sdc-unit-{i}-map")
        preview = gr.Button("Preview the preprocessor", size="sm", elem_id=f"sdc-unit-{i}-preview")
        params = {}
        for plugin_id, specs in form.conditioners.items():
            with gr.Group(visible=plugin_id == defaults[name("plugin")]) as params[plugin_id]:
                for spec in specs:
                    key = form.param(i, plugin_id, spec.name)
                    add(key, widgets.param_widget(spec, defaults[key]))
        with gr.Row():
            add(name("weight"), gr.Slider(0, 2, value=defaults[name("weight")], step=0.05, label="Weight"))
            add(name("start"), gr.Slider(0, 1, value=defaults[name("start")], step=0.01, label="Starting step"))
            add(name("end"), gr.Slider(0, 1, value=defaults[name("end")], step=0.01, label="Ending step"))
        with gr.Row():
            add(name("resize_mode"), gr.Radio(list(RESIZE_MODES), value=defaults[name("resize_mode")],
                                              label="Resize mode"))
            add(name("control_mode"), gr.Radio(list(CONTROL_MODES), value=defaults[name("control_mode")],
                                               label="Control mode"))
    return {"group": group, "params": params, "preview": preview, "map": control_map}


def _loras(add: Add, loras: list[Any], form: Form) -> None:
    """A multi-select of the catalogue's LoRAs (family and trigger words shown), one weight slider each."""
    with gr.Accordion("LoRA", open=False, elem_id="sdc-lora"):
        add("loras", gr.Dropdown(widgets.lora_choices(loras), value=[], multiselect=True, label="LoRAs",
                                 elem_id="sdc-loras"))
        for entry in loras:
            add(form.lora(entry.id), gr.Slider(-2, 2, value=1.0, step=0.05, label=f"{entry.id} weight",
                                               info=f"trigger words: {', '.join(entry.trigger_words)}"
                                               if entry.trigger_words else None, visible=False))
        add("add_trigger_words", gr.Checkbox(False, label="Add the chosen LoRAs' trigger words to the prompt"))


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
