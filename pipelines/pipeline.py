"""``sdcompose.Pipeline``: the public Python API over catalogue, registry, loader and composer."""
from __future__ import annotations

import secrets
import threading
from typing import Any, Callable

import torch
from PIL import Image

from sdcompose import infotext
from sdcompose.errors import ValidationError
from sdcompose.images import fit, load_rgb
from sdcompose.metadata import read_png
from sdcompose.pipelines import (embeddings, hires, memory, plugin_models, preflight, prompt_encode, record,
                                 reproduce as reproduction, upscale)
from sdcompose.pipelines.cache import ModelCache, best_device, dtype_for
from sdcompose.pipelines.catalog import Catalog
from sdcompose.pipelines.conditioning import Conditioning, target_size
from sdcompose.pipelines.fast import FastMode
from sdcompose.pipelines.loader import Loader
from sdcompose.pipelines.resolve import Unit, base_by_name, resolve, upscaler_by_name
from sdcompose.pipelines.run import Adapters, Run, kept
from sdcompose.plugins.api import PluginContext
from sdcompose.plugins.registry import Registry
from sdcompose.prompt_syntax import check_syntax
from sdcompose.request import Control, GenerationRequest, validate
from sdcompose.result import Result
from sdcompose.settings import Settings


class Pipeline:
    """Compose Stable Diffusion with conditioner and adapter plugins, from models.yaml ids.

    ``models``: extra models.yaml file(s) overlaying the shipped and user ones.
    ``folders``: model folders (an AUTOMATIC1111 or ComfyUI tree) indexed in place; ``refresh()`` rescans.
    ``device`` / ``dtype``: default the best device, fp16 on CUDA and fp32 elsewhere.
    One generation runs at a time per Pipeline; loaded weights are cached between requests (``cache``, a
    ModelCache). docs/architecture.md shows the modules behind it."""

    def __init__(self, models: Any = None, device: str | None = None, dtype: torch.dtype | str | None = None,
                 plugins_allow: str | None = None, plugins_deny: str | None = None, keep_models: int = 1,
                 folders: Any = None) -> None:
        self.settings = Settings.from_env()
        self.catalog = Catalog(models, folders=folders, settings=self.settings)
        self.loader = Loader(self.catalog)
        self.registry = Registry(plugins_allow, plugins_deny, check=plugin_models.checker(self.catalog),
                                 settings=self.settings)
        self.device = str(device or best_device())
        self.dtype = dtype_for(dtype, self.device)
        self.cache = ModelCache(self.loader, self.dtype, keep_models)
        self.conditioning = Conditioning(self.catalog, self.loader, self.device, self.dtype, self.settings)
        self.fast_mode = FastMode(self.settings.home / "compile")  # compiled, graph-replayed denoisers for ``fast=True``
        self._lock = threading.Lock()

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
        preflight.check(req, self.device)  # what cannot run on this device is refused before any preprocessing
        if req.model is None:
            req = req.with_(model=self.settings.default_model)
        if req.seed is None:
            req = req.with_(seed=secrets.randbelow(2**32))
        plan = resolve(req, self.catalog, self.registry)  # what cannot run is refused before any pass
        if req.hires is not None:  # two passes, each a run of its own over the same model cache
            return hires.run(self, req, progress, cancel, preview)
        given = self.conditioning.inputs(plan)  # control maps, init image, mask, adapters' references
        with self._lock:
            run = Run(plan, self.cache, self.registry, self.fast_mode, self.device, self.dtype, progress, cancel, preview)
            arrays, reports, runtime = run.denoise(*given)
        return record.result(plan, arrays, reports, given, runtime, self.loader, self.registry, self.device, self.dtype)

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
            lambda name: record.resolves(self.catalog, name), model, record.embedding_names(self.catalog),
            lambda name: upscaler_by_name(self.catalog, name))

    def preprocess(self, plugin_id: str, image: Any, width: int | None = None, height: int | None = None,
                   resize_mode: str = "crop_and_resize", **params: Any) -> Image.Image:
        """The control map a conditioner makes from ``image`` (cached by content and params)."""
        plugin = self.registry.get(plugin_id, "conditioner")
        control = GenerationRequest(controls=[Control(plugin_id, image, params=params, resize_mode=resize_mode)]).controls[0]
        unit = Unit(control, plugin, None)  # type: ignore[arg-type]
        image = self.conditioning.control_map(unit, None, None)
        if width is None and height is None:
            return image.copy()
        width, height = target_size(image.size, width, height)
        return fit(image, width, height, control.resize_mode).copy()

    def diffusers_pipeline(self, model: str | None = None, controls: list[Control] | tuple = (),
                           task: str = "txt2img"):
        """The diffusers pipeline this composition runs (modules shared with sdcompose's cache)."""
        stub = Image.new("RGB", (8, 8)) if task != "txt2img" else None
        req = GenerationRequest(model=model or self.settings.default_model, controls=list(controls or ()),
                                init_image=stub, mask=stub if task == "inpaint" else None)
        plan = resolve(req, self.catalog, self.registry)
        with self._lock:
            models = self.cache.plan_modules(plan)
            pipe = self.cache.compose(plan, models)
            self.cache.placement.prepare(models, memory.MemoryPlan(), self.device)  # all on the device
            # what adapters keep between requests (fused LoRAs) comes off: the plain base is handed out
            with Adapters(kept(self.registry), pipe, plan, self.cache,
                          PluginContext(device=self.device, dtype=self.dtype)) as adapters:
                adapters.apply([], models)
            return pipe

    def upscale(self, image: Any, model: str, scale: float | None = None, tile: int = upscale.TILE,
                cancel: threading.Event | None = None) -> Result:
        """``image`` enlarged ``scale`` times (default: the network's own) by a models.yaml upscaler, tile by tile."""
        source = load_rgb(image, "image to upscale")
        entry = self.catalog.get(model, "upscaler")
        if scale is not None:
            upscale.target_size(source.size, scale)  # a size over the limits is refused before anything loads
        with self._lock:
            net = upscale.load(self.registry, self.loader, entry, self.device, self.dtype)
            out, report = upscale.upscale(net, source, net.scale if scale is None else scale, self.device, tile, cancel)
        return record.upscaled(out, entry, net.architecture, source.size, report, self.registry, self.loader,
                               self.device, self.dtype)

    def token_counts(self, prompt: str, model: str | None = None, prompt_syntax: str = "a1111") -> dict[str, Any]:
        """What A1111 shows under a prompt: ``{"tokens": 83, "limit": 150, "chunks": [75, 8], "label": "83/150"}``.

        Loads the base model's tokenizer with the model if it is not loaded yet (the next generation uses it).
        """
        entry = self.catalog.get(model or self.settings.default_model, "base")
        components = self.cache.components(entry.id) if entry.id in self.cache.loaded()["base"] else None
        if components is None:
            with self._lock:
                components = self.cache.base(entry)
        syntax = check_syntax("prompt_syntax", prompt_syntax)
        (prompt,), wanted = embeddings.used(self.catalog, entry, [prompt]) if syntax != "literal" else ((prompt,), {})
        vectors = embeddings.load(components, wanted, self.loader.verified_path)
        return prompt_encode.token_counts(components["tokenizer"], prompt, syntax, vectors)

    def loaded(self) -> list[str]:
        """The base models held in memory (ready to run without loading), least recently used first."""
        return self.cache.loaded()["base"]

    def plugins(self) -> list[dict[str, Any]]:
        return self.registry.describe_all()

    def refresh(self) -> dict[str, list[str]]:
        """Rescan the model folders: new files become usable, removed ones go (``added``/``removed`` ids)."""
        return self.catalog.refresh()

    def models(self) -> list[dict[str, Any]]:
        return [{"id": model_id, **entry.describe()} for model_id, entry in self.catalog.entries.items()]
