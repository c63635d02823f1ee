"""The weights one ``Pipeline`` keeps loaded between requests: base models' components, ControlNets and
T2I-Adapters, schedulers, and where the memory plan last put them.

Bases are kept least recently used first, ``keep_models`` of them; ControlNets and T2I-Adapters together up to
``CONTROLNETS_KEPT`` (more while one request needs more). ``loaded()`` says what is in memory, by id, for tests, benchmarks and
a router choosing a worker.
"""
from __future__ import annotations

import gc
from collections import OrderedDict
from typing import Any

import torch

from sdcompose.pipelines import compose, memory, schedulers, t2i
from sdcompose.pipelines.catalog import Entry
from sdcompose.pipelines.loader import Loader
from sdcompose.pipelines.resolve import Plan

from sdcompose.errors import ValidationError

CONTROLNETS_KEPT = 4  # ControlNets cached between requests (more while one request needs more)


class ModelCache:
    def __init__(self, loader: Loader, dtype: torch.dtype, keep_models: int = 1) -> None:
        self.loader, self.dtype, self.keep_models = loader, dtype, keep_models
        self.placement = memory.Placement()  # where each cached module is now (device, offload hooks)
        self._bases: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._controlnets: OrderedDict[str, Any] = OrderedDict()  # ControlNets and T2I-Adapters, by id
        self._adapter_ids: set[str] = set()  # which of them are T2I-Adapters
        self._schedulers: dict[tuple[str, str], Any] = {}
        self._encoders: OrderedDict[str, Any] = OrderedDict()  # IP-Adapter image encoders: the last one used

    # ---- what is loaded ------------------------------------------------------------------------
    def loaded(self) -> dict[str, list[str]]:
        """The ids in memory by kind, least recently used first: ``{"base": [...], "controlnet": [...],
        "t2i_adapter": [...]}``."""
        return {"base": list(self._bases), "controlnet": [i for i in self._controlnets if i not in self._adapter_ids],
                t2i.KIND: [i for i in self._controlnets if i in self._adapter_ids]}

    def components(self, base_id: str) -> dict[str, Any]:
        """A loaded base's diffusers components by name (``unet``, ``vae``, ``scheduler``, ...); KeyError if not loaded."""
        return self._bases[base_id]

    def controlnet_module(self, controlnet_id: str) -> torch.nn.Module:
        """A loaded ControlNet or T2I-Adapter; KeyError if not loaded."""
        return self._controlnets[controlnet_id]

    def modules(self) -> list[torch.nn.Module]:
        """Every loaded module: the bases' networks, then the ControlNets and image encoders."""
        cached = [m for c in self._bases.values() for m in c.values() if isinstance(m, torch.nn.Module)]
        return cached + list(self._controlnets.values()) + list(self._encoders.values())

    # ---- loading -------------------------------------------------------------------------------
    def base(self, entry: Entry) -> dict[str, Any]:
        if entry.id not in self._bases:
            while len(self._bases) >= max(1, self.keep_models):
                self._bases.popitem(last=False)
                free()
            components = self.loader.base(entry, self.dtype)  # on the CPU: the memory plan places them
            for module in components.values():
                if isinstance(module, torch.nn.Module):
                    module.eval().requires_grad_(False)
            self._bases[entry.id] = components
        self._bases.move_to_end(entry.id)
        return self._bases[entry.id]

    def controlnet(self, entry: Entry, keep: int = CONTROLNETS_KEPT):
        if entry.id not in self._controlnets:
            while len(self._controlnets) >= keep:
                self._adapter_ids.discard(self._controlnets.popitem(last=False)[0])
                free()
            adapter = t2i.is_adapter(entry)
            load = self.loader.adapter if adapter else self.loader.controlnet
            self._controlnets[entry.id] = load(entry, self.dtype).eval().requires_grad_(False)
            if adapter:
                self._adapter_ids.add(entry.id)
        self._controlnets.move_to_end(entry.id)
        return self._controlnets[entry.id]

    def image_encoder(self, entry: Entry):
        """An IP-Adapter's CLIP vision encoder; one is kept (ViT-H alone has 632M parameters)."""
        if entry.id not in self._encoders:
            self._encoders.clear()
            free()
            self._encoders[entry.id] = self.loader.image_encoder(entry, self.dtype).eval().requires_grad_(False)
        return self._encoders[entry.id]

    def plan_modules(self, plan: Plan) -> dict[str, torch.nn.Module]:
        """The cached modules a composition runs, by name (``controlnet:0``, ... for its units; ``adapter:0``, ... for
        T2I-Adapter units), loaded if needed.

        The ControlNet cache grows to hold every ControlNet of the plan, so none of them is evicted while
        the plan loads the next."""
        components = self.base(plan.base)
        modules = {name: m for name, m in components.items() if isinstance(m, torch.nn.Module)}
        keep = max(CONTROLNETS_KEPT, len({u.controlnet.id for u in plan.units}))
        modules.update({f"{unit_module(u)}:{i}": self.controlnet(u.controlnet, keep) for i, u in enumerate(plan.units)})
        shared = {name: entry for use in plan.adapters for name, entry in use.modules.items()}  # one per name
        if "image_encoder" in shared:  # adapter_uses.MODULES: the shared modules adapters' entries name
            modules["image_encoder"] = self.image_encoder(shared["image_encoder"])
        return modules

    def compose(self, plan: Plan, modules: dict[str, torch.nn.Module]):
        """The diffusers pipeline over ``modules`` (from ``plan_modules(plan)``): the very modules the memory plan places."""
        nets = [modules[f"{unit_module(u)}:{i}"] for i, u in enumerate(plan.units)]
        return compose.build(plan.family, plan.request.task, self._bases[plan.base.id], nets,
                             [unit.control.control_mode for unit in plan.units],
                             adapters=any(t2i.is_adapter(u.controlnet) for u in plan.units))

    def besides(self, modules: dict[str, torch.nn.Module]) -> list[torch.nn.Module]:
        """The cached modules a composition does not use (the memory plan moves them off the device)."""
        used = {id(m) for m in modules.values()}
        return [m for m in self.modules() if id(m) not in used]

    def scheduler(self, base_id: str, name: str) -> Any:
        """One scheduler per base and name, reused as diffusers reuses its own: requests run one at a time, and
        set_timesteps resets a run's state (building costs ms)."""
        key = (base_id, name)
        if key not in self._schedulers:
            self._schedulers[key] = schedulers.make(name, self._bases[base_id]["scheduler"].config)
        return self._schedulers[key]

    def drop(self, base_id: str) -> None:
        """Forget a base whose weights may have been changed: the next request loads it afresh."""
        self._bases.pop(base_id, None)


def unit_module(unit: Any) -> str:
    """A unit's module name in a composition, before its index: ``controlnet`` or ``adapter``."""
    return "adapter" if t2i.is_adapter(unit.controlnet) else "controlnet"


def free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def dtype_for(dtype: torch.dtype | str | None, device: str) -> torch.dtype:
    """The dtype asked for (a torch dtype or its name), else fp16 on CUDA and fp32 elsewhere."""
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
        if not isinstance(dtype, torch.dtype):
            raise ValidationError("dtype must be float16, bfloat16 or float32")
    return dtype or (torch.float16 if device.startswith("cuda") else torch.float32)


def best_device() -> str:
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"
