"""One request's denoise over the model cache: the memory plan, attention and fast mode, the adapters (LoRA,
IP-Adapter) applied for this request only (a context manager that always takes them off again), the step callbacks
(progress, preview, cancel, IP-Adapter schedules), and out-of-memory and cancel turned into sdcompose's errors once
the run's tensors are freed."""
from __future__ import annotations

import inspect
import logging
import threading
import warnings
from contextlib import ExitStack
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from sdcompose.errors import Cancelled, OutOfMemory, SdcomposeError, is_out_of_memory
from sdcompose.pipelines import adapter_uses, attention, compose, embeddings, families, memory, schedulers, vae_guard
from sdcompose.pipelines.cache import ModelCache, free
from sdcompose.pipelines.fast import FastMode
from sdcompose.pipelines.loader import Loader
from sdcompose.pipelines.preview import latents_to_image
from sdcompose.pipelines.resolve import Plan
from sdcompose.plugins import compat
from sdcompose.plugins.api import Adapter, Contribution, PluginContext, PluginError
from sdcompose.plugins.contain import plugin_code
from sdcompose.plugins.registry import Registry

log = logging.getLogger("sdcompose")
Progress = Callable[[int, int], None]
Preview = Callable[[int, int, Image.Image], None]


def kept(registry: Registry) -> list[Any]:
    """The loaded adapter plugins: each is given the uses of every request, none included, so it can take off
    what it keeps between requests (LoRA's fused weights)."""
    return [e.plugin for e in registry.entries.values() if e.status == "loaded" and isinstance(e.plugin, Adapter)]


class Adapters:
    """The composer of a run's adapters: every adapter plugin's uses given to it, what each contributes merged
    (call keywords, reports), the scheduled ones' weights set before every step, and every plugin's ``remove``
    when the block ends, whatever happened.

    A plugin that fails to apply, or cannot take its weights off, leaves the base dropped from the cache, so
    the next request loads it clean."""

    def __init__(self, plugins: list[Any], pipe: Any, plan: Plan, cache: ModelCache, ctx: PluginContext) -> None:
        self.pipe, self.plan, self.cache, self.ctx = pipe, plan, cache, ctx
        self.groups = [(p, [u for u in plan.adapters if u.plugin is p]) for p in plugins]
        self.arguments: dict[str, Any] = {}  # the pipe(...) keywords the adapters add
        self.applied: list[Any] = []  # the plugins whose remove() runs at the end
        self._views: dict[str, Any] = {}  # a view of ``pipe`` with the methods a plugin needs (_target)

    def __enter__(self) -> "Adapters":
        return self

    def apply(self, refs: list[list[Any]], modules: dict[str, Any]) -> dict[str, Any]:
        """Every plugin's contribution merged; returns their reports by plugin id (the ones with uses)."""
        reports: dict[str, Any] = {}
        by_use = dict(zip(map(id, self.plan.adapters), refs))
        for plugin, uses in self.groups:
            given = adapter_uses.given(uses, [by_use[id(u)] for u in uses], modules, self.cache.loader.verified_path)
            done = self._apply(plugin, given, f"{plugin.kind} plugin {plugin.id!r} could not apply "
                               f"{[u.id for u in given]}" + (f" (does the file fit this {self.plan.family} base?)"
                                                             if given else ""))
            clash = sorted(set(done.arguments) & set(self.arguments))
            if clash:
                raise PluginError(f"{plugin.kind} plugin {plugin.id!r} sets pipeline argument {clash[0]!r}, which "
                                  "another adapter already set: use one of them per request")
            self.arguments.update(done.arguments)
            if uses:
                reports[plugin.id] = dict(done.report)
        self.weights(0)
        return reports

    def _target(self, plugin: Any) -> Any:
        """The pipeline ``plugin`` works on: one with the methods it needs; SD1.5's T2I-Adapter pipeline lacks
        diffusers' LoRA methods, which the family's text-to-image pipeline over the same modules has (the LoRA
        layers live in the shared UNet and text encoder)."""
        if all(hasattr(self.pipe, name) for name in plugin.needs):
            return self.pipe
        if "txt2img" not in self._views:
            self._views["txt2img"] = families.get(self.plan.family).pipeline_class("txt2img").from_pipe(self.pipe)
        return self._views["txt2img"]

    def _apply(self, plugin: Any, given: list[Any], what: str) -> Contribution:
        self.applied.append(plugin)  # removed at the end even when apply fails half-way
        with plugin_code(what, oom=True):
            try:
                return compat.contribute(plugin, self._target(plugin), given, self.ctx)
            except BaseException:  # the base's weights may be half changed: load it afresh next time
                self.cache.drop(self.plan.base.id)
                raise

    def weights(self, step: int) -> None:
        """Each scheduled plugin's weights for ``step`` (0-based): a use's weight from its start to its end, else 0."""
        total = adapter_uses.steps_run(self.plan.request)
        for plugin, uses in self.groups:
            if plugin.scheduled and uses and plugin in self.applied:
                with plugin_code(f"{plugin.kind} plugin {plugin.id!r} could not set its weights"):
                    compat.set_weights(plugin, self._target(plugin), adapter_uses.weights(uses, step, total))

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
        if self.adapters is not None:  # a scheduled adapter (IP-Adapter) acts from its start to its end
            self.adapters.weights(step + 1)
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
        plugins = list({p.id: p for p in [*(u.plugin for u in plan.adapters), *kept(self.registry)]}.values())
        reports: dict[str, Any] = {}
        stopped: str | None = None  # OOM or cancel: raised after this block, once its frames (tensors) are freed
        hooks = [plugin_code(f"{p.kind} plugin {p.id!r} failed during generation", module=type(p).__module__, oom=True)
                 for p in plugins if any(u.plugin is p for u in plan.adapters)]  # its hooks run inside the call
        try:
            with Adapters(plugins, pipe, plan, cache, PluginContext(device=self.device, dtype=self.dtype)) \
                    as self.adapters, ExitStack() as inside:
                for hook in hooks:
                    inside.enter_context(hook)
                cache.placement.prepare(models, plan_memory, self.device, cache.besides(models))
                attention.apply(list(models.values()), backend)
                reports = self.adapters.apply(list(refs), models)
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
        return arrays, reports, runtime

    def call_arguments(self, pipe: Any, maps: list[Image.Image], init: Any, mask: Any) -> dict[str, Any]:
        plan = self.plan
        req = plan.request
        generators = [torch.Generator("cpu").manual_seed(req.seed + i) for i in range(req.batch)]
        vectors = embeddings.load(pipe, plan.embeddings, self.cache.loader.verified_path)
        return compose.call_arguments(pipe, req, maps, init, mask, generators, [u.control for u in plan.units],
                                      plan.final_prompt(), family=plan.family, negative=plan.negative,
                                      embeddings=vectors)

