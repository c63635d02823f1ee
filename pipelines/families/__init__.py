"""Model families: one file each (``sd15.py``, ``sdxl.py``), each exposing one :class:`Family` that answers
everything the rest of sdcompose asks about a family. No other module branches on a family's name.

Families are found through entry points, group ``sdcompose.families`` (``name = "module:OBJECT"``), read
by the plugin registry's discovery, and listed by ``sdcompose plugins list`` with kind ``family``. A new
family is one file like ``sd15.py``, its entry point, and its models.yaml entries. Importing a family
file costs nothing: diffusers' classes are named, and imported when a pipeline is built.
"""
from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdcompose.errors import ModelError, describe

GROUP = "sdcompose.families"
# sdcompose's own, registered in its pyproject.toml; also loaded from here when an install predates them
OWN = {"sd15": "sdcompose.pipelines.families.sd15:SD15", "sdxl": "sdcompose.pipelines.families.sdxl:SDXL"}
TASKS = ("txt2img", "img2img", "inpaint")
CONTROL_IMAGE = {"txt2img": "image", "img2img": "control_image", "inpaint": "control_image"}


@dataclass(frozen=True)
class Family:
    """What differs between model families, as data (and the tiny-model builder, as a function)."""

    name: str  # the models.yaml ``family:`` value
    label: str  # for people: "Stable Diffusion 1.5"
    pipelines: Mapping[tuple[str, bool], str]  # (task, with ControlNets) -> diffusers pipeline class name
    preview: tuple[tuple[tuple[float, ...], ...], tuple[float, ...]]  # latent-to-RGB (weights per channel, bias)
    hub_patterns: tuple[str, ...]  # the files of a base model's hub snapshot
    vae_scaling: float  # the VAE's scaling_factor
    vae_shift: float | None = None  # the VAE's shift_factor (None: no shift)
    vae_may_upcast: bool = False  # the VAE may ask to decode in float32 (``force_upcast``): the memory plan counts it
    controlnet_class: str = "ControlNetModel"
    multi_controlnet_class: str = "MultiControlNetModel"
    adapter_pipelines: Mapping[str, str] = field(default_factory=dict)  # task -> pipeline class with T2I-Adapters
    adapter_class: str = "T2IAdapter"
    multi_adapter_class: str = "MultiAdapter"
    control_image_args: Mapping[str, str] = field(default_factory=lambda: dict(CONTROL_IMAGE))  # task -> argument
    denoiser: str = "unet"  # the component that denoises (and that CUDA graphs replay)
    latent_channels: int = 4
    size_multiple: int = 8  # width and height must be multiples of this
    schedulers: tuple[str, ...] | None = None  # the request's scheduler names that fit; None: all of them
    # the memory planner's calibration, GiB at 2-byte activations per 512x512 image (docs/memory.md)
    memory: Mapping[str, float] = field(default_factory=lambda: dict(unet=0.1467, controlnet=0.0250, decode=0.4750))
    lora_targets: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")  # the denoiser's LoRA target modules
    load_kwargs: Mapping[str, Any] = field(default_factory=dict)  # extra from_pretrained/from_single_file arguments
    config: str | None = None  # the shipped diffusers config folder for single-file models (pipelines/configs/)
    tiny_denoiser: Mapping[str, Any] | None = None  # the tiny test model's UNet config
    tiny_base: Callable[[Path, dict[str, Any], int], tuple[Any, dict[str, Any]]] | None = None
    version: str = "1"

    def pipeline_class(self, task: str, controlnets: bool = False) -> Any:
        """The diffusers pipeline class for ``task`` (with or without ControlNets)."""
        key = (task, bool(controlnets))
        if key not in self.pipelines:
            with_ = " with ControlNets" if controlnets else ""
            raise ModelError(f"the {self.name} family has no {task} pipeline{with_}")
        return _diffusers(self.pipelines[key])

    def adapter_pipeline_class(self, task: str) -> Any:
        """The diffusers pipeline class for ``task`` with T2I-Adapters; ModelError if diffusers has none."""
        if task not in self.adapter_pipelines:
            raise ModelError(f"T2I-Adapters run text-to-image only: diffusers has no {self.name} {task} pipeline "
                             "with T2I-Adapters (use a ControlNet for this unit instead)")
        return _diffusers(self.adapter_pipelines[task])

    def adapter_model(self) -> Any:
        return _diffusers(self.adapter_class)

    def multi_adapter(self) -> Any:
        return _diffusers(self.multi_adapter_class)

    def controlnet_model(self) -> Any:
        return _diffusers(self.controlnet_class)

    def multi_controlnet(self) -> Any:
        return _diffusers(self.multi_controlnet_class)


_importing = threading.Lock()


def _diffusers(name: str) -> Any:
    """A diffusers class by name, imported one thread at a time: diffusers' lazy modules are not safe to import from
    two threads at once (two batch workers asking for the SDXL pipeline both failed inside its import)."""
    import diffusers
    with _importing:
        return getattr(diffusers, name, None) or getattr(diffusers.models.controlnets, name)


@dataclass
class _Found:
    name: str
    target: str
    package: str
    family: Family | None = None
    error: str = ""


_lock = threading.Lock()
_found: dict[str, _Found] | None = None


def _all() -> dict[str, _Found]:
    """Every family entry point, imported once per process; a broken one keeps its error."""
    global _found
    with _lock:
        if _found is None:
            from sdcompose.plugins.registry import PluginEntry, _discover
            entries, broken = _discover(GROUP)
            listed = {entry.id for entry in entries}
            entries += [PluginEntry(id=name, target=target, package="sdcompose")
                        for name, target in OWN.items() if name not in listed]
            found: dict[str, _Found] = {}
            for entry in entries:
                item = _Found(entry.id, entry.target, entry.package)
                if entry.id in found:
                    found[entry.id].error = item.error = (f"family {entry.id!r} is registered by both "
                                                          f"{found[entry.id].package!r} and {entry.package!r}")
                    found[entry.id].family = None
                    continue
                try:
                    module, _, attr = entry.target.partition(":")
                    obj = getattr(importlib.import_module(module), attr)
                    if not isinstance(obj, Family) or obj.name != entry.id:
                        raise TypeError(f"{entry.target} is not a Family named {entry.id!r}")
                    item.family = obj
                except Exception as exc:  # a broken family must not hide the others
                    item.error = describe(exc)
                found[entry.id] = item
            for entry in broken:
                found[entry.id] = _Found(entry.id, "", entry.package, error=entry.error)
            _found = found
        return _found


def names() -> tuple[str, ...]:
    """The usable families' names, sorted."""
    return tuple(sorted(name for name, item in _all().items() if item.family is not None))


def get(name: str | Family) -> Family:
    """The family called ``name``; ModelError naming the installed ones if there is none."""
    if isinstance(name, Family):
        return name
    item = _all().get(name)
    if item is None or item.family is None:
        why = f": {item.error}" if item is not None else ""
        raise ModelError(f"no model family {name!r}{why} (installed: {', '.join(names()) or 'none'})")
    return item.family


def shipped_configs() -> dict[str, Family]:
    """Config folder name -> family, for single-file models' ``config:``."""
    return {f.config: f for f in (get(n) for n in names()) if f.config}


def describe_all() -> list[dict[str, Any]]:
    """Rows as ``sdcompose plugins list`` shows them (kind ``family``)."""
    rows = []
    for item in _all().values():
        rows.append({"id": item.name, "kind": "family", "families": [item.name], "package": item.package,
                     "version": item.family.version if item.family else "", "target": item.target,
                     "status": "loaded" if item.family else "broken", "error": item.error,
                     "help": item.family.label if item.family else "", "params": []})
    return rows
