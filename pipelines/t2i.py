"""T2I-Adapters: a ControlNet unit whose ``model`` names a models.yaml ``kind: t2i_adapter`` entry runs through
diffusers' adapter pipelines (``StableDiffusionAdapterPipeline``, ``StableDiffusionXLAdapterPipeline``) instead of
a ControlNet; the unit's conditioner plugin still makes the map.

What those pipelines cannot express is refused here, one sentence each, before any map is made or weight loads:
image-to-image and inpainting (and so a hires fix's second pass), T2I-Adapter and ControlNet units in one request,
a guidance start above 0 (an adapter acts from the first step), units ending at different points (one
``adapter_conditioning_factor`` for all), an end below 1 where the family's pipeline has no such factor, control
modes (a ControlNet feature), and IP-Adapters where the family's adapter pipeline takes no image prompt (SD1.5's;
SDXL's takes them, so T2I-Adapter units and IP-Adapters run together there).
"""
from __future__ import annotations

import inspect
from typing import Any

from sdcompose.errors import ValidationError
from sdcompose.pipelines import families

KIND = "t2i_adapter"
FACTOR = "adapter_conditioning_factor"


def is_adapter(entry: Any) -> bool:
    return entry.kind == KIND


def check(plan: Any) -> None:
    """Refuse what diffusers' T2I-Adapter pipelines cannot run for ``plan`` (a resolve.Plan); nothing if it has no
    T2I-Adapter unit."""
    req = plan.request
    units = [u for u in plan.units if is_adapter(u.controlnet)]
    if not units:
        return
    if len(units) != len(plan.units):
        raise ValidationError("T2I-Adapter units and ControlNet units cannot run in one request (diffusers has no "
                              "pipeline with both): make every unit's model a T2I-Adapter, or every one a ControlNet")
    if req.hires is not None:
        raise ValidationError("hires fix cannot run with T2I-Adapter units: its second pass is image-to-image, which "
                              "diffusers' T2I-Adapter pipelines do not do; use ControlNet units with hires")
    cls = families.get(plan.family).adapter_pipeline_class(req.task)  # refuses img2img and inpaint
    takes = inspect.signature(cls.__call__).parameters
    for plugin in {u.plugin.id: u.plugin for u in plan.adapters}.values():  # what each adapter adds to the call
        missing = [name for name in plugin.arguments if name not in takes]
        if missing:
            raise ValidationError(f"{plugin.noun}s cannot run with T2I-Adapter units on a {plan.family} base: "
                                  f"diffusers' {cls.__name__} takes no {missing[0]}; drop the {plugin.noun}s or use "
                                  "ControlNet units")
    for unit in units:
        control = unit.control
        if control.start > 0:
            raise ValidationError(f"T2I-Adapter {unit.controlnet.id!r} cannot start at {control.start:g}: an adapter "
                                  "acts from the first step (diffusers can only stop it early); set start to 0")
        if control.control_mode != "balanced":
            raise ValidationError(f"T2I-Adapter {unit.controlnet.id!r} has no control modes (a ControlNet feature); "
                                  "set control_mode to balanced")
    ends = sorted({u.control.end for u in units})
    if len(ends) > 1:
        raise ValidationError(f"T2I-Adapter units end at {', '.join(f'{e:g}' for e in ends)}; diffusers stops them "
                              "together (one adapter_conditioning_factor): give every unit the same end")
    if ends[0] < 1 and FACTOR not in inspect.signature(cls.__call__).parameters:
        raise ValidationError(f"the {plan.family} T2I-Adapter pipeline ({cls.__name__}) applies adapters at every "
                              f"step (it has no {FACTOR}): set end to 1")


def call_arguments(pipe: Any, maps: list[Any], controls: list[Any]) -> dict[str, Any]:
    """``pipe(...)``'s adapter arguments, with diffusers' names."""
    single = len(maps) == 1
    kw: dict[str, Any] = {"image": maps[0] if single else list(maps),
                          "adapter_conditioning_scale": controls[0].weight if single else [c.weight for c in controls]}
    if FACTOR in inspect.signature(pipe.__call__).parameters:
        kw[FACTOR] = controls[0].end
    return kw
