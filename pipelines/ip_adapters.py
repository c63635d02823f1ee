"""Image prompts (IP-Adapter) in a run: the request's units resolved, their encoder, references and schedule.

The ``ip_adapter`` plugin does the diffusers part (plugins/builtin/ip_adapter.py); this module is what the core
does around it: family and encoder checks before anything loads, the reference images decoded under the
request's pixel budget, each unit's scale per step (0 outside its start/end, the rule diffusers applies to
ControlNets), and the names the references take in the PNG so reproduce finds them. The run applies and always
removes the adapters inside its ``Adapters`` context (pipelines/run.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sdcompose.errors import ModelError
from sdcompose.images import load_rgb
from sdcompose.pipelines.catalog import Catalog, Entry
from sdcompose.request import IpAdapter

PLUGIN = "ip_adapter"


@dataclass
class Unit:
    adapter: IpAdapter
    entry: Entry
    encoder: Entry


def resolve(adapters: list[IpAdapter], catalog: Catalog, base: Entry, same_family: Any) -> list[Unit]:
    """Each request unit with its models.yaml entries; a family, test-model or encoder mismatch is refused here
    (``same_family(what, entry, base, hint)``: resolve's own check)."""
    units = []
    for adapter in adapters:
        entry = catalog.get(adapter.id, "ip_adapter")
        same_family("IP-Adapter", entry, base, f"pick an {base.family} IP-Adapter or an {entry.family} base")
        units.append(Unit(adapter, entry, catalog.get(entry.image_encoder, "image_encoder")))
    encoders = {u.encoder.id for u in units}
    if len(encoders) > 1:
        raise ModelError(f"these IP-Adapters use different image encoders ({', '.join(sorted(encoders))}); a "
                         "pipeline runs one: pick IP-Adapters of one encoder")
    return units


def references(units: list[Unit]) -> list[list[Any]]:
    """Every unit's reference images as RGB (call under the request's ``pixel_budget``)."""
    return [[load_rgb(image, f"IP-Adapter {u.adapter.id!r} reference {j + 1}") for j, image in
             enumerate(u.adapter.images())] for u in units]


def inputs(refs: list[list[Any]]) -> dict[str, Any]:
    """The references under their PNG names (``GenerationRequest.from_metadata`` reads them back)."""
    return {f"ip-adapter-{i}-{j}": image for i, images in enumerate(refs) for j, image in enumerate(images)}


def steps_run(req: Any) -> int:
    """How many denoising steps diffusers runs for ``req`` (img2img and inpaint skip the first ones)."""
    if req.init_image is None:
        return req.steps
    return req.steps - int(max(req.steps - req.steps * req.strength, 0))


def scales(units: list[Unit], step: int, total: int) -> list[float]:
    """Each unit's scale at ``step`` (0-based) of ``total``: its weight inside [start, end], else 0."""
    return [u.adapter.weight * (1.0 - float(step / total < u.adapter.start or (step + 1) / total > u.adapter.end))
            for u in units]


def entries(units: list[Unit]) -> list[Entry]:
    """The models.yaml entries a run with ``units`` uses (adapters, then their one encoder), for the metadata."""
    return [u.entry for u in units] + [units[0].encoder] if units else []


def given(units: list[Unit], refs: list[list[Any]], encoder: Any, verified_path: Any) -> list[dict[str, Any]]:
    """What the plugin's ``apply`` gets for each unit (docs/plugins.md, "IP-Adapters")."""
    return [{"id": u.entry.id, "path": verified_path(u.entry), "entry": u.entry, "encoder": encoder,
             "encoder_id": u.encoder.id, "images": images, "weight": u.adapter.weight, "start": u.adapter.start,
             "end": u.adapter.end} for u, images in zip(units, refs)]
