"""The strict check of ``Pipeline.reproduce``: the models an sdcompose PNG's request uses are still the same files.

Order matters for untrusted PNGs: the request is validated first (``GenerationRequest.from_metadata``:
nothing is decoded, hashed or downloaded for a PNG asking for 100 controls or a width of 100), then every
model the metadata records is looked up (an unknown one is refused), then only the models the request
uses are hashed; the embedded inputs are decoded later, by the run, only those the request uses.
"""
from __future__ import annotations

from typing import Any, Callable

from sdcompose.errors import ModelError
from sdcompose.pipelines import adapter_uses
from sdcompose.pipelines.catalog import Catalog, Entry
from sdcompose.pipelines.resolve import Plan


def check_models(meta: dict[str, Any], plan: Plan, catalog: Catalog, hashes: Callable[[Entry], Any]) -> None:
    """Refuse if a model ``plan`` uses has other files (sha256) than ``meta`` records; ``hashes(entry)`` hashes one.
    Recorded models the request does not use are only looked up, never hashed (nor downloaded)."""
    recorded = meta.get("models", {})
    for model_id in recorded:
        catalog.get(model_id)  # a model this catalogue lacks: refused before anything is hashed
    used = [plan.base, *(u.controlnet for u in plan.units), *adapter_uses.entries(plan.adapters)]
    hires = plan.request.hires
    if hires is not None and hires.upscaler in recorded:
        used.append(catalog.get(hires.upscaler, "upscaler"))
    for entry in used:
        if entry.id not in recorded:
            raise ModelError(f"the image's metadata has no file hashes for model {entry.id!r}, which it uses; "
                             "pass strict=False to reproduce it anyway")
        if hashes(entry) != recorded[entry.id].get("sha256"):
            raise ModelError(f"model {entry.id!r} has changed since this image was made (different "
                             "file hashes); restore that version, or pass strict=False")
