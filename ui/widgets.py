"""Widgets drawn from data: a plugin's ``ParamSpec``s, the models.yaml catalogue, the plugin registry."""
from __future__ import annotations

import html
import os
from typing import Any

import gradio as gr

from sdcompose.errors import ValidationError, quote, suggest
from sdcompose.plugins.api import ParamSpec

TEST_MODEL = "test model: its images are noise"


def escape(text: str) -> str:
    """Text for places Gradio renders as HTML (error and warning messages, Markdown)."""
    return html.escape(text, quote=False)


def param_widget(spec: ParamSpec, value: Any = None) -> gr.components.Component:
    """The input for one plugin parameter: a slider when bounded, else a number, checkbox, dropdown or textbox."""
    label, info = spec.name.replace("_", " "), spec.help or None
    value = spec.default if value is None else value
    if spec.type in ("int", "float"):
        if spec.min is not None and spec.max is not None:
            step = spec.step or (1 if spec.type == "int" else (spec.max - spec.min) / 100)
            return gr.Slider(spec.min, spec.max, value=value, step=step, label=label, info=info)
        return gr.Number(value=value, precision=0 if spec.type == "int" else None, label=label, info=info,
                         minimum=spec.min, maximum=spec.max)
    if spec.type == "bool":
        return gr.Checkbox(value=value, label=label, info=info)
    if spec.type == "choice":
        return gr.Dropdown(list(spec.choices), value=value, label=label, info=info)
    return gr.Textbox(value=value, label=label, info=info)


def base_models(pipeline: Any, wanted: str | None = None) -> tuple[list[tuple[str, str]], str]:
    """Dropdown choices ``(label, id)`` for the base models, families shown, and the default pick.

    The default: ``wanted`` (``sdcompose ui --model``; ValidationError if it is not a base model), else
    ``SDCOMPOSE_MODEL`` if set, else the first real model already downloaded, else the first test model,
    so the page works offline out of the box.
    """
    entries = [e for e in pipeline.catalog.entries.values() if e.kind == "base"]
    local = {e.id: pipeline.loader.is_local(e) for e in entries}
    choices = [(f"{e.id} ({e.family}, {TEST_MODEL})" if e.tiny else
                f"{e.id} ({e.family}{'' if local[e.id] else ', downloads on first use'})", e.id) for e in entries]
    ids = [e.id for e in entries]
    if wanted is not None and wanted not in ids:
        raise ValidationError(f"--model {quote(wanted)} is not a base model in models.yaml{suggest(wanted, ids)}")
    wanted = wanted or os.environ.get("SDCOMPOSE_MODEL")
    if wanted in ids:
        return choices, wanted
    real = [e.id for e in entries if local[e.id] and not e.tiny]
    tiny = [e.id for e in entries if e.tiny]
    return choices, (real or tiny or ids or [""])[0]


def family_of(pipeline: Any, model_id: str | None) -> str | None:
    """The models.yaml family of a catalogue entry; None for an id the catalogue lacks."""
    entry = pipeline.catalog.entries.get(model_id)
    return entry.family if entry else None


def controlnet_models(pipeline: Any, family: str | None = None) -> list[tuple[str, str]]:
    """A unit's model choices ``(label, id)``: auto, then the catalogue's ControlNets of ``family`` (all: None), then
    its T2I-Adapters (a unit whose model is one runs through it instead of a ControlNet)."""
    def of(kind: str) -> list[Any]:
        return [e for e in pipeline.catalog.entries.values() if e.kind == kind and family in (None, e.family)]
    return [("auto (the conditioner's own for the base)", "auto")] + [(f"{e.id} ({e.family})", e.id) for e in
                                                                       of("controlnet")] + \
        [(f"{e.id} ({e.family}, T2I-Adapter)", e.id) for e in of("t2i_adapter")]


def lora_models(pipeline: Any, family: str | None = None) -> list[Any]:
    """The catalogue's LoRAs of ``family`` (all: None)."""
    return [e for e in pipeline.catalog.entries.values() if e.kind == "lora" and family in (None, e.family)]


def ip_adapter_choices(pipeline: Any) -> list[tuple[str, str]]:
    """Dropdown choices ``(label, id)`` for the catalogue's IP-Adapters, family shown."""
    return [(f"{e.id} ({e.family})", e.id) for e in pipeline.catalog.entries.values() if e.kind == "ip_adapter"]


def lora_choices(loras: list[Any]) -> list[tuple[str, str]]:
    """Dropdown choices ``(label, id)`` for LoRA entries, family and trigger words shown."""
    def label(entry: Any) -> str:
        words = f"; trigger words: {', '.join(entry.trigger_words)}" if entry.trigger_words else ""
        return f"{entry.id} ({entry.family}{words})"
    return [(label(e), e.id) for e in loras]


def conditioners(pipeline: Any) -> tuple[dict[str, tuple[ParamSpec, ...]], dict[str, str]]:
    """Loaded conditioner plugins (id -> ParamSpecs, id -> help) from the registry, third-party ones included."""
    params, helps = {}, {}
    for row in pipeline.plugins():
        if row["kind"] == "conditioner" and row["status"] == "loaded":
            plugin = pipeline.registry.get(row["id"], "conditioner")
            params[row["id"]] = tuple(plugin.params)
            helps[row["id"]] = row["help"]
    return params, helps


def conditioner_choices(pipeline: Any, family: str | None = None) -> list[tuple[str, str]]:
    """Dropdown choices ``(label, id)`` for the loaded conditioners that serve ``family`` (all: None)."""
    rows = [r for r in pipeline.plugins() if r["kind"] == "conditioner" and r["status"] == "loaded"
            and (family is None or family in r["families"])]
    return [(f"{r['id']}: {r['help']}" if r["help"] else r["id"], r["id"]) for r in rows]


def unusable_plugins(pipeline: Any) -> str:
    """Markdown listing plugins that failed to load or are disabled, each with its error, escaped."""
    rows = [r for r in pipeline.plugins() if r["status"] not in ("loaded", "available")]
    return "\n".join(f"- {escape(r['id'])} ({escape(r['package'])}): {r['status']}: {escape(r['error'])}"
                     for r in rows)


def plugin_table(pipeline: Any) -> list[list[str]]:
    return [[r["id"], r["kind"] or "?", ",".join(r["families"]) or "-", r["version"], r["package"], r["status"],
             r["error"]] for r in pipeline.plugins()]
