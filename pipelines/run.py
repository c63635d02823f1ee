"""One request's denoise over the model cache: the memory plan, attention and fast mode, the adapters (LoRA,
IP-Adapter) applied for this request only (a context manager that always takes them off again), the step callbacks
(progress, preview, cancel, IP-Adapter schedules), and out-of-memory and cancel turned into sdcompose's errors once
the run's tensors are freed."""
from __future__ import annotations

import inspect
import logging
import threading
import warnings
from contextlib import nullcontext
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from sdcompose.errors import Cancelled, OutOfMemory, SdcomposeError, is_out_of_memory
from sdcompose.pipelines import attention, compose, embeddings, families, ip_adapters, memory, schedulers, vae_guard
from sdcompose.pipelines.cache import ModelCache, free
from sdcompose.pipelines.fast import FastMode
from sdcompose.pipelines.loader import Loader
from sdcompose.pipelines.preview import latents_to_image
from sdcompose.pipelines.resolve import Plan
from sdcompose.plugins.api import PluginContext, PluginError
from sdcompose.plugins.contain import plugin_code
from sdcompose.plugins.registry import Registry

log = logging.getLogger("sdcompose")
Progress = Callable[[int, int], None]
Preview = Callable[[int, int, Image.Image], None]


def loaded_adapter(registry: Registry) -> Any:
    """The LoRA plugin if it has been used: it also clears LoRAs it keeps fused between requests."""
    entry = registry.entries.get("lora")
    return entry.plugin if entry is not None and entry.status == "loaded" else None


class Adapters:
    """The request's adapter plugins on ``pipe`` (LoRA's, then IP-Adapter's): ``apply()`` inside the block, always
    taken off when it ends.

    A plugin that fails to apply, or cannot take its weights off, leaves the base dropped from the cache, so
    the next request loads it clean."""

    def __init__(self, adapter: Any, pipe: Any, plan: Plan, cache: ModelCache, loader: Loader,
                 ctx: PluginContext, images: Any = None) -> None:
        self.adapter, self.pipe, self.plan, self.cache, self.loader, self.ctx = adapter, pipe, plan, cache, loader, ctx
        self.images = images  # (ip plugin, references, image encoder) when the request has IP-Adapters
        self.arguments: dict[str, Any] = {}  # extra pipe(...) keywords (the IP-Adapters' reference images)
        self.applied: list[Any] = []  # the plugins whose remove() runs at the end
        self._lora_pipe: Any = None  # a LoRA-capable view of ``pipe`` when it has no LoRA methods (_target)

    def __enter__(self) -> "Adapters":
        return self

    def apply(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The plugins' load reports: (LoRA's, IP-Adapter's); {} for one the request does not use."""
        plan = self.plan
        adapters = [{"id": e.id, "path": self.loader.verified_path(e), "weight": w, "entry": e} for e, w in plan.loras]
        lora = self._apply(self.adapter, adapters, f"adapter plugin {self.adapter.id!r} could not apply "
                           f"{[a['id'] for a in adapters]} (does the file fit this {plan.family} base?)") \
            if self.adapter is not None else {}
        if self.images is None:
            return lora, {}
        plugin, refs, encoder = self.images
        units = ip_adapters.given(plan.ip_adapters, refs, encoder, self.loader.verified_path)
        done = self._apply(plugin, units, f"ip_adapter plugin {plugin.id!r} could not apply "
                           f"{[u['id'] for u in units]}")
        self.arguments = dict(done["arguments"])
        self.scales(0)
        return lora, dict(done["report"])

    def _target(self, plugin: Any) -> Any:
        """The pipeline ``plugin`` works on: the LoRA plugin needs diffusers' LoRA methods, which SD1.5's T2I-Adapter
        pipeline lacks; the family's text-to-image pipeline over the same modules has them (the LoRA layers live in
        the shared UNet and text encoder)."""
        if plugin is not self.adapter or hasattr(self.pipe, "load_lora_weights"):
            return self.pipe
        if self._lora_pipe is None:
            self._lora_pipe = families.get(self.plan.family).pipeline_class("txt2img").from_pipe(self.pipe)
        return self._lora_pipe

    def _apply(self, plugin: Any, given: list[dict[str, Any]], what: str) -> dict[str, Any]:
        self.applied.append(plugin)  # removed at the end even when apply fails half-way
        with plugin_code(what, oom=True):
            try:
                return plugin.apply(self._target(plugin), given, self.ctx)
            except BaseException:  # the base's weights may be half changed: load it afresh next time
                self.cache.drop(self.plan.base.id)
                raise

    def scales(self, step: int) -> None:
        """Each IP-Adapter's scale for ``step`` (0-based): its weight from its start to its end, else 0."""
        if self.images is not None and self.arguments:
            plugin, units = self.images[0], self.plan.ip_adapters
            with plugin_code(f"ip_adapter plugin {plugin.id!r} could not set its scales"):
                plugin.set_scales(self.pipe, ip_adapters.scales(units, step, ip_adapters.steps_run(self.plan.request)))

    def __exit__(self, *exc_info: Any) -> None:
        base_id = self.plan.base.id
        for plugin in reversed(self.applied):
            try:
                with plugin_code(f"{plugin.kind} plugin {plugin.id!r} could not remove its weights"):
                    plugin.remove(self._target(plugin))
            except PluginError as exc:
                self.cache.drop(base_id)
                free()
                warnings.warn(f"{exc}; base {base_id!r} will be loaded again", RuntimeWarning, stacklevel=2)


class Run:
    """The denoise of one resolved request; ``Run(...).denoise(maps, init, mask)`` -> (arrays, adapter report,
    runtime metadata)."""

    def __init__(self, plan: Plan, cache: ModelCache, registry: Registry, fast: FastMode, device: str,
                 dtype: torch.dtype, progress: Progress | None = None, cancel: threading.Event | None = None,
                 preview: Preview | None = None) -> None:
        self.plan, self.cache, self.registry, self.fast, self.device, self.dtype = plan, cache, registry, fast, device, dtype
        self.progress, self.cancel, self.preview = progress, cancel, preview
        self.final: dict[str, Any] = {}  # the last step's latents, for the fp16 VAE guard
        self.adapters: Adapters | None = None

    def on_step(self, _pipe: Any, step: int, _t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        steps = self.plan.request.steps
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled(f"cancelled at step {step + 1} of {steps}")
        if self.progress is not None:
            self.progress(step + 1, steps)
        if self.preview is not None and tensors.get("latents") is not None:
            self.preview(step + 1, steps, latents_to_image(tensors["latents"], self.plan.family))
        self.final["latents"] = tensors.get("latents")
        if self.adapters is not None:  # each IP-Adapter acts from its start to its end
            self.adapters.scales(step + 1)
        return tensors

    def step_callback(self, pipe: Any) -> dict[str, Any]:
        """``on_step`` as the pipeline takes it: ``callback_on_step_end``, or the older ``callback(step, t, latents)``
        (diffusers' SD1.5 T2I-Adapter pipeline has only that one)."""
        if "callback_on_step_end" in inspect.signature(pipe.__call__).parameters:
            return {"callback_on_step_end": self.on_step}
        return {"callback": lambda step, t, latents: self.on_step(pipe, step, t, {"latents": latents}),
                "callback_steps": 1}

    def denoise(self, maps: list[Image.Image], init: Any, mask: Any,
                refs: list[list[Image.Image]] = ()) -> tuple[list[np.ndarray], dict, dict]:
        plan, cache = self.plan, self.cache
        req = plan.request
        backend, backend_reason = attention.choose(req.attention, self.device)
        models = cache.plan_modules(plan)
        pipe = cache.compose(plan, models)
        plan_memory = memory.choose(req.memory, memory.workload(models, req.width, req.height, req.batch,
                                                                 req.guidance, self.dtype, plan.family),
                                    self.device, req.vram)
        log.info("memory plan %s: %s", plan_memory.mode, plan_memory.reason)
        pipe.scheduler = cache.scheduler(plan.base.id, req.scheduler)
        schedulers.seed(pipe.scheduler, req.seed)
        kwargs: dict[str, Any] = {}
        adapter = self.registry.get("lora", "adapter") if plan.loras else loaded_adapter(self.registry)
        report: dict[str, Any] = {}
        ip_given = (self.registry.get(ip_adapters.PLUGIN, "ip_adapter"), list(refs), models["image_encoder"]) \
            if plan.ip_adapters else None
        ip_report: dict[str, Any] = {}
        stopped: str | None = None  # OOM or cancel: raised after this block, once its frames (tensors) are freed
        adapter_code = nullcontext() if adapter is None else plugin_code(  # an adapter's hooks run inside the call
            f"adapter plugin {adapter.id!r} failed during generation", module=type(adapter).__module__, oom=True)
        try:
            with Adapters(adapter, pipe, plan, cache, cache.loader, PluginContext(device=self.device, dtype=self.dtype),
                          ip_given) as self.adapters, adapter_code:
                cache.placement.prepare(models, plan_memory, self.device, cache.besides(models))
                attention.apply(list(models.values()), backend)
                report, ip_report = self.adapters.apply()
                cache.placement.attach(pipe, models, plan_memory, self.device)
                denoiser = families.get(plan.family).denoiser
                graphed = [m for name, m in models.items() if name == denoiser or name.startswith("controlnet")]
                with torch.inference_mode(), \
                        self.fast.session(graphed, req.fast, self.device, plan_memory.placement) as fast_report:
                    kwargs = self.call_arguments(pipe, maps, init, mask)  # encodes prompts: after placement, LoRAs
                    kwargs.update(self.adapters.arguments)
                    with vae_guard.Watch(pipe.vae) as watch:
                        output = pipe(**kwargs, **self.step_callback(pipe))
                    images, vae_decode = vae_guard.checked(pipe, watch, output.images, self.final.get("latents"))
        except torch.OutOfMemoryError:
            stopped = "oom"
        except Cancelled as exc:
            stopped = str(exc)
        except SdcomposeError:
            raise
        except Exception as exc:
            if not is_out_of_memory(exc):  # the CPU's out of memory is a MemoryError or a RuntimeError
                raise
            stopped = "oom"
        if stopped == "oom":
            del pipe, kwargs
            self.final.clear()
            free()
            raise OutOfMemory(f"out of {self.device} memory at {req.width}x{req.height}, batch {req.batch}, "
                              f"{len(plan.units)} ControlNet(s): lower the size or batch, or use a memory-saving "
                              "mode; nothing from this request stays loaded")
        if stopped is not None:
            raise Cancelled(stopped)
        arrays = [np.asarray(a, dtype=np.float32) for a in images]
        runtime = {"memory_plan": plan_memory.describe(), "attention": {"backend": backend, "reason": backend_reason},
                   "fast": fast_report, "vae_decode": vae_decode}
        if ip_report:
            runtime["ip_adapter_report"] = ip_report
        return arrays, report, runtime

    def call_arguments(self, pipe: Any, maps: list[Image.Image], init: Any, mask: Any) -> dict[str, Any]:
        plan = self.plan
        req = plan.request
        generators = [torch.Generator("cpu").manual_seed(req.seed + i) for i in range(req.batch)]
        vectors = embeddings.load(pipe, plan.embeddings, self.cache.loader.verified_path)
        return compose.call_arguments(pipe, req, maps, init, mask, generators, [u.control for u in plan.units],
                                      plan.final_prompt(), family=plan.family, negative=plan.negative,
                                      embeddings=vectors)

