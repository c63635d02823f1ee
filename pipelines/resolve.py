"""Resolve a validated request against the catalogue and the plugin registry, before any weight loads.

Family and test-model mismatches are refused here, in one sentence each.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sdcompose.errors import ModelError, ValidationError, suggest
from sdcompose.infotext import HR_UPSCALERS
from sdcompose.pipelines import adapter_uses, embeddings, families, t2i
from sdcompose.prompt_syntax import lora_tags
from sdcompose.pipelines.catalog import Catalog, Entry
from sdcompose.pipelines.plugin_models import annotator_ids, default_controlnet
from sdcompose.plugins.api import PluginError
from sdcompose.plugins.registry import Registry
from sdcompose.request import Control, GenerationRequest


@dataclass
class Unit:
    control: Control
    plugin: Any
    controlnet: Entry  # the unit's network: a ControlNet, or a T2I-Adapter (pipelines/t2i.py)
    annotators: dict[str, str] = field(default_factory=dict)  # declared id -> the entry used (a tiny stand-in)


@dataclass
class Plan:
    request: GenerationRequest
    base: Entry
    units: list[Unit] = field(default_factory=list)
    prompt: str = ""  # the prompt to encode: the request's, its <lora:...> tags taken out
    negative: str = ""  # the negative prompt to encode
    embeddings: dict[str, Entry] = field(default_factory=dict)  # textual inversions the prompts name, by name
    adapters: list[adapter_uses.Planned] = field(default_factory=list)  # every adapter use: LoRAs, IP-Adapters...

    @property
    def family(self) -> str:
        return self.base.family

    def final_prompt(self) -> str:
        """The prompt the text encoder gets: its tags taken out, the adapters' trigger words added if asked for."""
        if not self.request.add_trigger_words:
            return self.prompt
        words = [w for use in self.adapters for w in use.entry.trigger_words if w not in self.prompt]
        return ", ".join([self.prompt, *words]) if self.prompt else ", ".join(words)


def _fits(req: GenerationRequest, family: families.Family) -> None:
    """The request's size and scheduler against what ``family`` takes (the schema checks what every family takes)."""
    step = family.size_multiple
    for name in ("width", "height"):
        value = getattr(req, name)
        if value % step:
            raise ValidationError(f"{name} must be a multiple of {step} for {family.name} models, got {value} "
                                  f"(try {value // step * step or step})")
    if family.schedulers is not None and req.scheduler not in family.schedulers:
        raise ValidationError(f"scheduler {req.scheduler!r} does not fit {family.name} models; "
                              f"pick one of {', '.join(family.schedulers)}")


def resolve(req: GenerationRequest, catalog: Catalog, registry: Registry) -> Plan:
    base = catalog.get(req.model, "base")
    _fits(req, families.get(base.family))
    plan = Plan(request=req, base=base)
    for control in req.controls:
        plugin = registry.get(control.id, "conditioner")
        named = catalog.entries.get(control.model) if control.model else None
        kind = t2i.KIND if named is not None and t2i.is_adapter(named) else "controlnet"
        # a plugin's families are those its ControlNets serve; a T2I-Adapter unit's family is the adapter's own
        if kind == "controlnet" and plugin.families and base.family not in plugin.families:
            raise PluginError(f"conditioner {control.id!r} supports {', '.join(sorted(plugin.families))}; "
                              f"base {base.id!r} is {base.family}: pick a base of a supported family")
        what = "T2I-Adapter" if kind == t2i.KIND else "ControlNet"
        entry = catalog.get(control.model or default_controlnet(catalog, plugin, base), kind)
        entry.check_base(what, base)
        plan.units.append(Unit(control, plugin, entry, annotator_ids(catalog, plugin, base.tiny)))
    plan.prompt, tags = lora_tags(req.prompt, req.prompt_syntax)
    plan.negative = req.negative_prompt
    if req.prompt_syntax != "literal":
        (plan.prompt, plan.negative), plan.embeddings = embeddings.used(catalog, base, [plan.prompt, plan.negative])
    tagged = [(lora_by_name(catalog, name), weight) for name, weight in tags]
    plan.adapters = adapter_uses.plan(req, tagged, catalog, registry, base)
    t2i.check(plan)
    return plan


def base_by_name(catalog: Catalog, name: str | None, short_hash: str | None) -> str | None:
    """The base model an A1111 infotext means: by its ``Model hash``, id or file name; or None."""
    entry = (catalog.by_hash(short_hash, "base") if short_hash else None) or named(catalog, name, "base")
    return entry.id if entry is not None else None


def named(catalog: Catalog, name: str | None, kind: str) -> Entry | None:
    """By id or scanned file name (Catalog.find), else a models.yaml ``file:``/``path:`` entry's file name."""
    if not name:
        return None
    found = catalog.find(name, kind)
    if found is not None:
        return found
    return next((e for e in catalog.entries.values() if e.kind == kind and name in e.stems()), None)


def upscaler_by_name(catalog: Catalog, name: str) -> str | None:
    """The upscaler an A1111 hires upscaler name means (``infotext.HR_UPSCALERS``: "lanczos" for its resizes), or
    a models.yaml upscaler by id or file name; None if neither."""
    if name in HR_UPSCALERS:
        return HR_UPSCALERS[name]
    entry = named(catalog, name, "upscaler")
    return entry.id if entry is not None else None


def lora_by_name(catalog: Catalog, name: str) -> Entry:
    """The LoRA a ``<lora:name:w>`` tag means: a models.yaml id, or the file name (with or without extension)."""
    found = named(catalog, name, "lora")
    if found is not None:
        return found
    loras = catalog.ids("lora")
    raise ModelError(f"the prompt's <lora:{name[:80]}> names no LoRA in models.yaml (by id or file name)"
                     f"{suggest(name[:200], loras)}")
