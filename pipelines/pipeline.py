"""``sdcompose.Pipeline``: the public Python API over catalogue, registry, loader and composer."""
from __future__ import annotations

import gc
import hashlib
import json
import logging
import secrets
import threading
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from sdcompose.errors import Cancelled, ModelError, OutOfMemory, SdcomposeError, ValidationError, is_out_of_memory
from sdcompose.images import MAX_BYTES, MAX_PIXELS, fit, load_mask, load_rgb, open_image, pixel_budget, to_rgb
from sdcompose import infotext
from sdcompose.metadata import FORMAT, library_versions, read_png
from sdcompose.pipelines import (attention, compose, families, hires, ip_adapters, memory, prompt_encode, schedulers,
                                 upscale, vae_guard)
from sdcompose.pipelines import reproduce as reproduction
from sdcompose.pipelines.catalog import Catalog, Entry, home
from sdcompose.pipelines.fast import FastMode
from sdcompose.pipelines.loader import Loader
from sdcompose.pipelines.preview import latents_to_image
from sdcompose.pipelines.resolve import Plan, Unit, base_by_name, lora_by_name, resolve
from sdcompose.plugins.api import ControlSource, PluginContext, PluginError, check_params
from sdcompose.plugins.contain import plugin_code
from sdcompose.plugins.registry import Registry
from sdcompose.prompt_syntax import check_syntax
from sdcompose.request import LIMITS, Control, GenerationRequest, validate
from sdcompose.result import Result
from sdcompose.settings import Settings

log = logging.getLogger("sdcompose")
TEST_MODEL_NOTE = "noise from a random-weight test model"
CONTROLNETS_KEPT = 4  # ControlNets cached between requests (more while one request needs more)


def best_device() -> str:
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


class Pipeline:
    """Compose Stable Diffusion with conditioner and adapter plugins, from models.yaml ids.

    ``models``: extra models.yaml file(s) overlaying the shipped and user ones.
    ``folders``: model folders (an AUTOMATIC1111 or ComfyUI tree) indexed in place; ``refresh()`` rescans.
    ``device`` / ``dtype``: default the best device, fp16 on CUDA and fp32 elsewhere.
    One generation runs at a time per Pipeline; loaded weights are cached between requests.
    """

    def __init__(self, models: Any = None, device: str | None = None, dtype: torch.dtype | str | None = None,
                 plugins_allow: str | None = None, plugins_deny: str | None = None, keep_models: int = 1,
                 folders: Any = None) -> None:
        self.settings = Settings.from_env()
        self.catalog = Catalog(models, folders=folders)
        self.loader = Loader(self.catalog)
        self.registry = Registry(plugins_allow, plugins_deny)
        self.device = str(device or best_device())
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype, None)
            if not isinstance(dtype, torch.dtype):
                raise ValidationError("dtype must be float16, bfloat16 or float32")
        self.dtype = dtype or (torch.float16 if self.device.startswith("cuda") else torch.float32)
        self.keep_models = keep_models
        self._lock = threading.Lock()
        self._bases: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._controlnets: OrderedDict[str, Any] = OrderedDict()
        self._schedulers: dict[tuple[str, str], Any] = {}
        self._maps: OrderedDict[str, Image.Image] = OrderedDict()
        self._placement = memory.Placement()
        self._fast = FastMode(home() / "compile")
        self._encoders = ip_adapters.Encoders()

    # ---- public API ------------------------------------------------------------------------
    def generate(self, prompt: str | None = None, /, progress: Callable[[int, int], None] | None = None,
                 cancel: threading.Event | None = None,
                 preview: Callable[[int, int, Image.Image], None] | None = None, **fields: Any) -> Result:
        """``run(GenerationRequest(prompt, **fields))``: the fields, their defaults and limits are in
        sdcompose/request.py (docs/api.md). ``progress(step, total)`` after every step; ``cancel``: set it
        to stop; ``preview(step, total, image)``: a cheap RGB preview of the first image after every step."""
        if prompt is not None:
            fields["prompt"] = prompt
        return self.run(GenerationRequest(**fields), progress=progress, cancel=cancel, preview=preview)

    def run(self, request: GenerationRequest, progress: Callable[[int, int], None] | None = None,
            cancel: threading.Event | None = None,
            preview: Callable[[int, int, Image.Image], None] | None = None) -> Result:
        req = validate(request)
        if req.model is None:
            req = req.with_(model=self.settings.default_model)
        if req.seed is None:
            req = req.with_(seed=secrets.randbelow(2**32))
        if req.hires is not None:  # two passes, each a run of its own over the same model cache
            return hires.run(self, req, progress, cancel, preview)
        plan = resolve(req, self.catalog, self.registry)
        with pixel_budget("this request"):  # every image this request decodes, together
            maps = [self._control_map(unit, req.width, req.height) for unit in plan.units]
            init = fit(load_rgb(req.init_image, "init_image"), req.width, req.height, req.resize_mode) \
                if req.init_image is not None else None
            mask = fit(load_mask(req.mask), req.width, req.height, req.resize_mode) if req.mask is not None else None
            refs = ip_adapters.references(plan.ip_adapters)
        with self._lock:
            arrays, report, runtime = self._denoise(plan, maps, init, mask, progress, cancel, preview, refs)
        inputs = {f"control-{i}": m for i, m in enumerate(maps)}
        inputs.update(ip_adapters.inputs(refs))
        inputs.update({k: v for k, v in (("init_image", init), ("mask", mask)) if v is not None})
        return self._result(plan, arrays, report, inputs, runtime)

    def reproduce(self, png: Any, strict: bool = True, model: str | None = None) -> Result:
        """Make an sdcompose PNG again from its own metadata and embedded inputs.

        With ``strict``, a model whose files changed since (sha256) is refused before any work.
        An AUTOMATIC1111 image (PNG, JPEG or WebP) is made again from its ``parameters`` text, best effort:
        ``result.metadata["reproduced_from"]`` lists what was dropped; ``model`` overrides its base model.
        """
        found = infotext.foreign(png)
        if found.tool != "sdcompose":
            return self._reproduce_foreign(found, model)
        meta, inputs = read_png(png)  # its embedded inputs: decoded by run(), only those the request uses
        request = GenerationRequest.from_metadata(meta, inputs, runtime=False)  # validated before anything is hashed
        if request.model is None:
            request = request.with_(model=self.settings.default_model)
        if strict:
            reproduction.check_models(meta, resolve(request, self.catalog, self.registry), self.catalog,
                                      self.loader.hashes)
        return self.run(request)

    def _reproduce_foreign(self, found: infotext.Found, model: str | None) -> Result:
        restored = self.restored(found, model)
        restored.require_model()
        result = self.run(GenerationRequest(**restored.fields))
        for meta in (result.metadata, *result.per_image):
            meta["reproduced_from"] = restored.describe()
        return result

    def restored(self, found: infotext.Found, model: str | None = None) -> infotext.Restored:
        """Request fields from another tool's image (``infotext.foreign(image)``), and what they leave out."""
        if found.tool == "ComfyUI":
            raise ValidationError("this image was made by ComfyUI: its prompt and workflow are shown in Image info, "
                                  "but sdcompose cannot run a ComfyUI graph")
        if found.tool is None:
            raise ValidationError("this image carries no sdcompose metadata, A1111 parameters or ComfyUI workflow "
                                  "(in its text chunks or EXIF): was it saved without them?")
        return infotext.to_request(
            infotext.parse(found.text["parameters"]), lambda name, digest: base_by_name(self.catalog, name, digest),
            lambda name: _resolves(self.catalog, name), model)

    def preprocess(self, plugin_id: str, image: Any, width: int | None = None, height: int | None = None,
                   resize_mode: str = "crop_and_resize", **params: Any) -> Image.Image:
        """The control map a conditioner makes from ``image`` (cached by content and params)."""
        plugin = self.registry.get(plugin_id, "conditioner")
        control = GenerationRequest(controls=[Control(plugin_id, image, params=params,
                                                      resize_mode=resize_mode)]).controls[0]
        unit = Unit(control, plugin, None)  # type: ignore[arg-type]
        image = self._control_map(unit, None, None)
        if width is None and height is None:
            return image.copy()
        width, height = _target_size(image.size, width, height)
        return fit(image, width, height, control.resize_mode).copy()

    def diffusers_pipeline(self, model: str | None = None, controls: list[Control] | tuple = (),
                           task: str = "txt2img"):
        """The diffusers pipeline this composition runs (modules shared with sdcompose's cache)."""
        stub = Image.new("RGB", (8, 8)) if task != "txt2img" else None
        req = GenerationRequest(model=model or self.settings.default_model, controls=list(controls or ()),
                                init_image=stub, mask=stub if task == "inpaint" else None)
        plan = resolve(req, self.catalog, self.registry)
        with self._lock:
            models = self._modules(plan)
            pipe = self._compose(plan, models)
            self._placement.prepare(models, memory.MemoryPlan(), self.device)  # all on the device
            adapter = self._loaded_adapter()
            if adapter is not None:  # LoRAs kept fused for the next request come off: the plain base is handed out
                with plugin_code(f"adapter plugin {adapter.id!r} could not take its LoRAs off"):
                    adapter.apply(pipe, [], PluginContext(device=self.device, dtype=self.dtype))
            return pipe

    def upscale(self, image: Any, model: str, scale: float | None = None, tile: int = upscale.TILE,
                cancel: threading.Event | None = None) -> Result:
        """``image`` enlarged ``scale`` times (default: the network's own) by a models.yaml upscaler, tile by tile."""
        source = load_rgb(image, "image to upscale")
        entry = self.catalog.get(model, "upscaler")
        if scale is not None:
            upscale.target_size(source.size, scale)  # a size over the limits is refused before anything loads
        with self._lock:
            net = self._upscaler(entry)
            out, report = upscale.upscale(net, source, net.scale if scale is None else scale, self.device, tile, cancel)
        meta = {"format": FORMAT, "task": "upscale", "upscale": {"model": entry.id, "architecture": net.architecture,
                                                                  "source_size": list(source.size), **report},
                "models": {entry.id: {"kind": entry.kind, "source": _source_of(entry), "sha256": self.loader.hashes(entry)}},
                "plugins": {upscale.PLUGIN: {"version": self.registry.get(upscale.PLUGIN).version,
                                             "package": self.registry.entries[upscale.PLUGIN].package}},
                "device": self.device, "dtype": str(self.dtype).removeprefix("torch."), "versions": library_versions()}
        if entry.tiny:
            meta["note"] = TEST_MODEL_NOTE
        return Result(images=[out], metadata=meta, per_image=[meta],
                      arrays=[np.asarray(out, dtype=np.float32) / 255])

    def _upscaler(self, entry: Entry) -> Any:
        plugin = self.registry.get(upscale.PLUGIN, "upscaler")
        path = self.loader.verified_path(entry)
        with plugin_code(f"upscaler plugin {plugin.id!r} could not load {entry.id!r}"):  # fails this request only
            return plugin.load(path, PluginContext(device=self.device, dtype=self.dtype))

    def token_counts(self, prompt: str, model: str | None = None, prompt_syntax: str = "a1111") -> dict[str, Any]:
        """What A1111 shows under a prompt: ``{"tokens": 83, "limit": 150, "chunks": [75, 8], "label": "83/150"}``.

        Loads the base model's tokenizer with the model if it is not loaded yet (the next generation uses it).
        """
        entry = self.catalog.get(model or self.settings.default_model, "base")
        components = self._bases.get(entry.id)
        if components is None:
            with self._lock:
                components = self._base(entry)
        return prompt_encode.token_counts(components["tokenizer"], prompt, check_syntax("prompt_syntax", prompt_syntax))

    def loaded(self) -> list[str]:
        """The base models held in memory (ready to run without loading), least recently used first."""
        return list(self._bases)

    def plugins(self) -> list[dict[str, Any]]:
        return self.registry.describe_all()

    def refresh(self) -> dict[str, list[str]]:
        """Rescan the model folders: new files become usable, removed ones go (``added``/``removed`` ids)."""
        return self.catalog.refresh()

    def models(self) -> list[dict[str, Any]]:
        return [{"id": model_id, **entry.describe()} for model_id, entry in self.catalog.entries.items()]

    # ---- conditioning ------------------------------------------------------------------------
    def _source(self, control: Control, plugin: Any) -> ControlSource:
        data = control.image
        wants_json = "json" in plugin.inputs
        if wants_json and isinstance(data, (dict, list)):
            return ControlSource(data=data, name="json")
        if wants_json and isinstance(data, (str, Path)) and str(data).lower().endswith(".json"):
            path = Path(data)
            try:
                if path.stat().st_size > MAX_BYTES:
                    raise ValidationError(f"{path} is larger than {MAX_BYTES // 2**20} MB")
                return ControlSource(data=json.loads(path.read_text(encoding="utf-8")), name=str(path))
            except OSError as exc:
                raise ValidationError(f"cannot read {path}: {exc.strerror}") from None
            except (ValueError, RecursionError) as exc:
                raise ValidationError(f"{path} is not valid JSON: {exc}") from None
        raw = open_image(data, f"control image for {control.id!r}")
        return ControlSource(image=to_rgb(raw), raw=raw, name=str(data) if isinstance(data, (str, Path)) else "")

    def _control_map(self, unit: Unit, width: int | None, height: int | None) -> Image.Image:
        control, plugin = unit.control, unit.plugin
        params = check_params(plugin.params, control.params, f"conditioner {control.id!r}")
        if control.preprocessed:
            image = load_rgb(control.image, f"control map for {control.id!r}")
        else:
            source = self._source(control, plugin)
            key = self._map_key(control.id, params, source)
            image = self._maps.get(key)
            if image is None:
                ctx = PluginContext(device=self.device, dtype=self.dtype,
                                    weights=_LazyWeights(plugin.annotators, self._annotator))
                with plugin_code(f"conditioner {control.id!r} failed on its input"):  # fails this request only
                    image = plugin.preprocess(source, ctx, params)
                if not isinstance(image, Image.Image):
                    raise PluginError(f"conditioner {control.id!r} returned {type(image).__name__}, not a PIL image")
                if image.width * image.height > MAX_PIXELS:
                    raise PluginError(f"conditioner {control.id!r} returned a {image.width}x{image.height} map; "
                                      f"the limit is {MAX_PIXELS} pixels")
                image = to_rgb(image)
                self._maps[key] = image
                while len(self._maps) > 32:
                    self._maps.popitem(last=False)
        if width and height:
            image = fit(image, width, height, control.resize_mode)
        return image

    @staticmethod
    def _map_key(plugin_id: str, params: dict[str, Any], source: ControlSource) -> str:
        digest = hashlib.sha256(json.dumps([plugin_id, params], sort_keys=True, default=str).encode())
        if source.data is not None:
            digest.update(json.dumps(source.data, sort_keys=True, default=str).encode())
        else:
            raw = source.raw
            digest.update(f"{raw.mode}{raw.size}".encode())
            digest.update(raw.tobytes())
        return digest.hexdigest()

    def _annotator(self, model_id: str) -> Path:
        return self.loader.verified_path(self.catalog.get(model_id, "annotator"))

    # ---- weights and composition ---------------------------------------------------------------
    def _base(self, entry: Entry) -> dict[str, Any]:
        if entry.id not in self._bases:
            while len(self._bases) >= max(1, self.keep_models):
                self._bases.popitem(last=False)
                self._free()
            components = self.loader.base(entry, self.dtype)  # on the CPU: the memory plan places them
            for module in components.values():
                if isinstance(module, torch.nn.Module):
                    module.eval().requires_grad_(False)
            self._bases[entry.id] = components
        self._bases.move_to_end(entry.id)
        return self._bases[entry.id]

    def _controlnet(self, entry: Entry, keep: int = CONTROLNETS_KEPT):
        if entry.id not in self._controlnets:
            while len(self._controlnets) >= keep:
                self._controlnets.popitem(last=False)
                self._free()
            self._controlnets[entry.id] = self.loader.controlnet(entry, self.dtype).eval().requires_grad_(False)
        self._controlnets.move_to_end(entry.id)
        return self._controlnets[entry.id]

    def _modules(self, plan: Plan) -> dict[str, torch.nn.Module]:
        """The cached modules a composition runs, by name (``controlnet:0``, ... for its units), loaded if needed.

        The ControlNet cache grows to hold every ControlNet of the plan, so none of them is evicted while
        the plan loads the next."""
        components = self._base(plan.base)
        modules = {name: m for name, m in components.items() if isinstance(m, torch.nn.Module)}
        keep = max(CONTROLNETS_KEPT, len({u.controlnet.id for u in plan.units}))
        modules.update({f"controlnet:{i}": self._controlnet(u.controlnet, keep) for i, u in enumerate(plan.units)})
        if plan.ip_adapters:
            modules["image_encoder"] = self._encoders.get(self.loader, plan.ip_adapters[0].encoder, self.dtype)
        return modules

    def _compose(self, plan: Plan, modules: dict[str, torch.nn.Module]):
        """The diffusers pipeline over ``modules`` (from ``_modules(plan)``): the very modules the memory plan places."""
        controlnets = [modules[f"controlnet:{i}"] for i in range(len(plan.units))]
        return compose.build(plan.family, plan.request.task, self._bases[plan.base.id], controlnets,
                             [unit.control.control_mode for unit in plan.units])

    def _cached_besides(self, modules: dict[str, torch.nn.Module]) -> list[torch.nn.Module]:
        used = {id(m) for m in modules.values()}
        cached = [m for c in self._bases.values() for m in c.values() if isinstance(m, torch.nn.Module)]
        return [m for m in cached + list(self._controlnets.values()) + self._encoders.modules() if id(m) not in used]

    def _free(self) -> None:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _denoise(self, plan: Plan, maps: list[Image.Image], init: Any, mask: Any,
                 progress: Callable[[int, int], None] | None, cancel: threading.Event | None,
                 preview: Callable[[int, int, Image.Image], None] | None = None, refs: list = ()):
        req = plan.request
        backend, backend_reason = attention.choose(req.attention, self.device)
        models = self._modules(plan)
        pipe = self._compose(plan, models)
        plan_memory = memory.choose(req.memory, memory.workload(models, req.width, req.height, req.batch,
                                                                 req.guidance, self.dtype, plan.family),
                                    self.device, req.vram)
        log.info("memory plan %s: %s", plan_memory.mode, plan_memory.reason)
        final: dict[str, Any] = {}  # the last step's latents, for the fp16 VAE guard
        key = (plan.base.id, req.scheduler)  # one per base and name, reused as diffusers reuses its own: requests run
        if key not in self._schedulers:  # one at a time, and set_timesteps resets a run's state (building costs ms)
            self._schedulers[key] = schedulers.make(req.scheduler, self._bases[plan.base.id]["scheduler"].config)
        pipe.scheduler = self._schedulers[key]
        schedulers.seed(pipe.scheduler, req.seed)
        kwargs: dict[str, Any] = {}

        def on_step(_pipe: Any, step: int, _t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            if cancel is not None and cancel.is_set():
                raise Cancelled(f"cancelled at step {step + 1} of {req.steps}")
            if progress is not None:
                progress(step + 1, req.steps)
            if preview is not None and tensors.get("latents") is not None:
                preview(step + 1, req.steps, latents_to_image(tensors["latents"], plan.family))
            final["latents"] = tensors.get("latents")
            if ip_plugin is not None:  # each IP-Adapter acts from its start to its end
                ip_plugin.set_scales(_pipe, ip_adapters.scales(plan.ip_adapters, step + 1, ip_total))
            return tensors

        adapter = self.registry.get("lora", "adapter") if plan.loras else self._loaded_adapter()
        ip_plugin = self.registry.get(ip_adapters.PLUGIN, "ip_adapter") if plan.ip_adapters else None
        ip_total, ip_call, ip_report = ip_adapters.steps_run(req), {}, {}
        report: dict[str, Any] = {}
        stopped: str | None = None  # OOM or cancel: raised after this block, once its frames (tensors) are freed
        adapter_code = nullcontext() if adapter is None else plugin_code(  # an adapter's hooks run inside the call
            f"adapter plugin {adapter.id!r} failed during generation", module=type(adapter).__module__, oom=True)
        try:
            with adapter_code:
                self._placement.prepare(models, plan_memory, self.device, self._cached_besides(models))
                attention.apply(list(models.values()), backend)
                if adapter is not None:
                    report = self._apply_adapter(adapter, pipe, plan)
                if ip_plugin is not None:
                    ip_call, ip_report = ip_adapters.apply(ip_plugin, pipe, plan.ip_adapters, list(refs),
                                                           models["image_encoder"], self.loader,
                                                           PluginContext(device=self.device, dtype=self.dtype), ip_total)
                self._placement.attach(pipe, models, plan_memory, self.device)
                denoiser = families.get(plan.family).denoiser
                graphed = [m for name, m in models.items() if name == denoiser or name.startswith("controlnet")]
                with torch.inference_mode(), \
                        self._fast.session(graphed, req.fast, self.device, plan_memory.placement) as fast_report:
                    kwargs = self._call_arguments(pipe, plan, maps, init, mask)  # encodes prompts: after placement, LoRAs
                    kwargs.update(ip_call)
                    with vae_guard.Watch(pipe.vae) as watch:
                        output = pipe(**kwargs, callback_on_step_end=on_step)
                    images, vae_decode = vae_guard.checked(pipe, watch, output.images, final.get("latents"))
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
        finally:
            if ip_plugin is not None:
                ip_adapters.remove(ip_plugin, pipe, lambda why: self._drop_base(plan.base.id, why))
            if adapter is not None:
                self._remove_adapter(adapter, pipe, plan.base.id)
        if stopped == "oom":
            del pipe, kwargs
            final.clear()
            self._free()
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

    def _call_arguments(self, pipe: Any, plan: Plan, maps: list[Image.Image], init: Any, mask: Any) -> dict[str, Any]:
        req = plan.request
        generators = [torch.Generator("cpu").manual_seed(req.seed + i) for i in range(req.batch)]
        return compose.call_arguments(pipe, req, maps, init, mask, generators, [u.control for u in plan.units],
                                      plan.final_prompt(), family=plan.family)

    def _apply_adapter(self, adapter: Any, pipe: Any, plan: Plan) -> dict[str, Any]:
        adapters = [{"id": e.id, "path": self.loader.verified_path(e), "weight": w, "entry": e} for e, w in plan.loras]
        with plugin_code(f"adapter plugin {adapter.id!r} could not apply {[a['id'] for a in adapters]} "
                         f"(does the file fit this {plan.family} base?)", oom=True):
            try:
                return adapter.apply(pipe, adapters, PluginContext(device=self.device, dtype=self.dtype))
            except BaseException:  # the base's weights may be half changed: load it afresh next time
                self._bases.pop(plan.base.id, None)
                raise

    def _loaded_adapter(self) -> Any:
        """The LoRA plugin if it has been used: it also clears LoRAs it keeps fused between requests."""
        entry = self.registry.entries.get("lora")
        return entry.plugin if entry is not None and entry.status == "loaded" else None

    def _remove_adapter(self, adapter: Any, pipe: Any, base_id: str) -> None:
        """Take a request's adapters off; if the plugin cannot, drop the base so the next request loads it clean."""
        try:
            with plugin_code(f"adapter plugin {adapter.id!r} could not remove its weights"):
                adapter.remove(pipe)
        except PluginError as exc:
            self._drop_base(base_id, str(exc))

    def _drop_base(self, base_id: str, why: str) -> None:
        self._bases.pop(base_id, None)
        self._free()
        warnings.warn(f"{why}; base {base_id!r} will be loaded again", RuntimeWarning, stacklevel=3)

    # ---- results -------------------------------------------------------------------------------
    def _result(self, plan: Plan, arrays: list[np.ndarray], report: dict[str, Any],
                inputs: dict[str, Image.Image], runtime: dict[str, Any]) -> Result:
        req = plan.request
        entries = [plan.base, *(u.controlnet for u in plan.units), *(e for e, _ in plan.loras),
                   *ip_adapters.entries(plan.ip_adapters)]
        models = {e.id: {"kind": e.kind, "family": e.family, "source": _source_of(e),
                         "sha256": self.loader.hashes(e)} for e in entries}
        plugins = {u.control.id: {"version": u.plugin.version, "package": self.registry.entries[u.control.id].package}
                   for u in plan.units}
        if plan.ip_adapters:
            plugins[ip_adapters.PLUGIN] = {"version": self.registry.get(ip_adapters.PLUGIN).version,
                                           "package": self.registry.entries[ip_adapters.PLUGIN].package}
        shared = {
            "format": FORMAT, "task": req.task, "request": req.summary(), "seeds": [req.seed + i for i in range(req.batch)],
            "models": models, "plugins": plugins, "device": self.device, "dtype": str(self.dtype).removeprefix("torch."),
            "versions": library_versions(), "lora_report": report,
            "control_maps_sha256": [hashlib.sha256(m.tobytes()).hexdigest() for k, m in inputs.items()
                                    if k.startswith("control-")],
            **runtime,
        }
        if plan.base.tiny:
            shared["note"] = TEST_MODEL_NOTE
        images = [Image.fromarray((np.clip(a, 0, 1) * 255).round().astype(np.uint8)) for a in arrays]
        per_image = [{**shared, "seed": req.seed + i, "image_index": i} for i in range(len(images))]
        return Result(images=images, metadata=shared, per_image=per_image, arrays=arrays, inputs=inputs)


class _LazyWeights(Mapping):
    """A plugin's annotator weights, fetched and verified only when the plugin asks for one."""

    def __init__(self, ids: tuple[str, ...], resolve: Callable[[str], Path]) -> None:
        self._ids, self._resolve, self._paths = tuple(ids), resolve, {}

    def __getitem__(self, model_id: str) -> Path:
        if model_id not in self._ids:
            raise KeyError(model_id)
        if model_id not in self._paths:
            self._paths[model_id] = self._resolve(model_id)
        return self._paths[model_id]

    def __iter__(self):
        return iter(self._ids)

    def __len__(self) -> int:
        return len(self._ids)


def _target_size(size: tuple[int, int], width: int | None, height: int | None) -> tuple[int, int]:
    """Width and height for a preprocessed map; a missing one follows the map's aspect ratio."""
    low, high = LIMITS["size"]
    for name, value in (("width", width), ("height", height)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high):
            raise ValidationError(f"{name} must be a whole number from {low} to {high}, got {value!r}")
    if width is None:
        width = max(1, round(size[0] * height / size[1]))
    if height is None:
        height = max(1, round(size[1] * width / size[0]))
    return width, height


def _resolves(catalog: Catalog, lora_name: str) -> bool:
    try:
        lora_by_name(catalog, lora_name)
        return True
    except ModelError:
        return False


def _source_of(entry: Entry) -> str:
    if entry.tiny:
        return "tiny (built on first use)"
    if entry.repo:
        return f"{entry.repo}@{entry.revision}" + (f"/{entry.filename}" if entry.filename else "")
    return entry.path or entry.file or entry.found or ""
