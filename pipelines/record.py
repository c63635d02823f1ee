"""The record of a run: metadata out (every field, model hashes, plugin versions, runtime, the inputs embedded),
and the LoRA names an A1111 image's tags point at (the request itself comes back through
``GenerationRequest.from_metadata``; its models are checked by ``pipelines/reproduce.py``)."""
from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
from PIL import Image

from sdcompose.errors import ModelError
from sdcompose.metadata import FORMAT, library_versions
from sdcompose.pipelines import adapter_uses, embeddings, upscale
from sdcompose.pipelines.catalog import Catalog, Entry
from sdcompose.pipelines.loader import Loader
from sdcompose.pipelines.resolve import Plan, lora_by_name
from sdcompose.plugins.registry import Registry
from sdcompose.result import Result

TEST_MODEL_NOTE = "noise from a random-weight test model"


def result(plan: Plan, arrays: list[np.ndarray], reports: dict[str, Any], given: tuple[list[Image.Image], Any, Any, Any],
           runtime: dict[str, Any], loader: Loader, registry: Registry, device: str, dtype: Any) -> Result:
    """The images of one run with their metadata (shared, and per image with its seed); ``reports``: each adapter
    plugin's, by id; ``given``: the control maps, init image, mask and adapters' references it ran on, embedded as
    its inputs."""
    req = plan.request
    maps, init, mask, refs = given
    inputs = {f"control-{i}": m for i, m in enumerate(maps)}
    inputs.update(adapter_uses.inputs(plan.adapters, refs))
    inputs.update({k: v for k, v in (("init_image", init), ("mask", mask)) if v is not None})
    entries = [plan.base, *(u.controlnet for u in plan.units), *{e.id: e for e in plan.embeddings.values()}.values(),
               *adapter_uses.entries(plan.adapters)]
    models = {e.id: {"kind": e.kind, "family": e.family, "source": source_of(e),
                     "sha256": loader.hashes(e)} for e in entries}
    plugins = {u.control.id: registry.record(u.control.id) for u in plan.units}
    plugins.update({u.plugin.id: registry.record(u.plugin.id) for u in plan.adapters})
    shared = {
        "format": FORMAT, "task": req.task, "request": req.summary(), "seeds": [req.seed + i for i in range(req.batch)],
        "models": models, "plugins": plugins, **environment(device, dtype), "adapter_reports": reports,
        "control_maps_sha256": [hashlib.sha256(m.tobytes()).hexdigest() for k, m in inputs.items()
                                if k.startswith("control-")],
        **runtime,
    }
    if plan.base.tiny:
        shared["note"] = TEST_MODEL_NOTE
    images = [Image.fromarray((np.clip(a, 0, 1) * 255).round().astype(np.uint8)) for a in arrays]
    per_image = [{**shared, "seed": req.seed + i, "image_index": i} for i in range(len(images))]
    return Result(images=images, metadata=shared, per_image=per_image, arrays=arrays, inputs=inputs)


def upscaled(image: Image.Image, entry: Entry, architecture: str, source_size: tuple[int, int],
             report: dict[str, Any], registry: Registry, loader: Loader, device: str, dtype: Any) -> Result:
    """An upscaled image with its metadata."""
    meta = {"format": FORMAT, "task": "upscale", "upscale": {"model": entry.id, "architecture": architecture,
                                                              "source_size": list(source_size), **report},
            "models": {entry.id: {"kind": entry.kind, "source": source_of(entry), "sha256": loader.hashes(entry)}},
            "plugins": {upscale.PLUGIN: registry.record(upscale.PLUGIN)}, **environment(device, dtype)}
    if entry.tiny:
        meta["note"] = TEST_MODEL_NOTE
    return Result(images=[image], metadata=meta, per_image=[meta], arrays=[np.asarray(image, dtype=np.float32) / 255])


def environment(device: str, dtype: Any) -> dict[str, Any]:
    return {"device": device, "dtype": str(dtype).removeprefix("torch."), "versions": library_versions()}


def resolves(catalog: Catalog, lora_name: str) -> bool:
    """Whether an A1111 ``<lora:name:w>`` tag names a LoRA of the catalogue."""
    try:
        lora_by_name(catalog, lora_name)
        return True
    except ModelError:
        return False


def embedding_names(catalog: Catalog) -> set[str]:
    """The words that name one of the catalogue's textual-inversion embeddings (any family)."""
    return {n for e in catalog.entries.values() if e.kind == "embedding" for n in embeddings.names(e)}


def source_of(entry: Entry) -> str:
    if entry.tiny:
        return "tiny (built on first use)"
    if entry.repo:
        return f"{entry.repo}@{entry.revision}" + (f"/{entry.filename}" if entry.filename else "")
    return entry.path or entry.file or entry.found or ""
