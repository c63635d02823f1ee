"""Resolve a validated request against the catalogue and the plugin registry, before any weight loads.

Family and test-model mismatches are refused here, in one sentence each.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sdcompose.errors import ModelError, ValidationError
from sdcompose.pipelines import families
from sdcompose.pipelines.catalog import Catalog, Entry
from sdcompose.plugins.api import PluginError
from sdcompose.plugins.registry import Registry
from sdcompose.request import Control, GenerationRequest


@dataclass
class Unit:
    control: Control
    plugin: Any
    controlnet: Entry


@dataclass
class Plan:
    request: GenerationRequest
    base: Entry
    units: list[Unit] = field(default_factory=list)
    loras: list[tuple[Entry, float]] = field(default_factory=list)

    @property
    def family(self) -> str:
        return self.base.family


def _same_family(what: str, entry: Entry, base: Entry, hint: str) -> None:
    if entry.family != base.family:
        raise ModelError(f"{what} {entry.id!r} is {entry.family}; base {base.id!r} is {base.family}: {hint}")
    if entry.tiny != base.tiny:
        raise ModelError(f"{what} {entry.id!r} is {'a tiny test model' if entry.tiny else 'a real model'} and base "
                         f"{base.id!r} is {'a tiny test model' if base.tiny else 'a real model'}: use them with their own kind")


def resolve(req: GenerationRequest, catalog: Catalog, registry: Registry) -> Plan:
    base = catalog.get(req.model, "base")
    family = families.get(base.family)
    for name in ("width", "height"):
        value = getattr(req, name)
        if value % family.size_multiple:
            step = family.size_multiple
            raise ValidationError(f"{name} must be a multiple of {step} for {family.name} models, got {value} "
                                  f"(try {value // step * step or step})")
    if family.schedulers is not None and req.scheduler not in family.schedulers:
        raise ValidationError(f"scheduler {req.scheduler!r} does not fit {family.name} models; "
                              f"pick one of {', '.join(family.schedulers)}")
    plan = Plan(request=req, base=base)
    for control in req.controls:
        plugin = registry.get(control.id, "conditioner")
        if base.family not in plugin.families:
            raise PluginError(f"conditioner {control.id!r} supports {', '.join(sorted(plugin.families))}; "
                              f"base {base.id!r} is {base.family}: pick a base of a supported family")
        model_id = control.model or catalog.stand_in(plugin.controlnets[base.family], base.tiny)
        entry = catalog.get(model_id, "controlnet")
        _same_family("ControlNet", entry, base, f"pick an {base.family} ControlNet or an {entry.family} base")
        plan.units.append(Unit(control, plugin, entry))
    for lora in req.loras:
        entry = catalog.get(lora.id, "lora")
        _same_family("lora", entry, base, f"pick an {entry.family} base or an {base.family} LoRA")
        plan.loras.append((entry, lora.weight))
    return plan
