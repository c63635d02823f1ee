"""Image prompts (IP-Adapter) in a run: resolving the request's units, their encoder, references and schedule.

The ``ip_adapter`` plugin does the diffusers part (plugins/builtin/ip_adapter.py); this module is what the core
does around it: family and encoder checks before anything loads, one cached CLIP vision encoder, the reference
images decoded under the request's pixel budget, each unit's scale per step (0 outside its start/end, the rule
diffusers applies to ControlNets), and the names the references take in the PNG so reproduce finds them.
"""
from __future__ import annotations

from collections import OrderedDict
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


def resolve(adapters: list[IpAdapter], catalog: Catalog, base: Entry) -> list[Unit]:
    """Each request unit with its models.yaml entries; a family, test-model or encoder mismatch is refused here."""
    units = []
    for adapter in adapters:
        entry = catalog.get(adapter.id, "ip_adapter")
        if entry.family != base.family:
            raise ModelError(f"IP-Adapter {entry.id!r} is {entry.family}; base {base.id!r} is {base.family}: pick an "
                             f"{base.family} IP-Adapter or an {entry.family} base")
        if entry.tiny != base.tiny:
            raise ModelError(f"IP-Adapter {entry.id!r} is {'a tiny test model' if entry.tiny else 'a real model'} and "
                             f"base {base.id!r} is not: use them with their own kind")
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


class Encoders:
    """The loaded CLIP vision encoders, the last ``keep`` used (each is large: 632M parameters for ViT-H)."""

    def __init__(self, keep: int = 1) -> None:
        self.keep = keep
        self._loaded: OrderedDict[str, Any] = OrderedDict()

    def get(self, loader: Any, entry: Entry, dtype: Any) -> Any:
        from sdcompose.pipelines.loader import image_encoder
        if entry.id not in self._loaded:
            while len(self._loaded) >= self.keep:
                self._loaded.popitem(last=False)
            self._loaded[entry.id] = image_encoder(loader, entry, dtype).eval().requires_grad_(False)
        self._loaded.move_to_end(entry.id)
        return self._loaded[entry.id]

    def modules(self) -> list[Any]:
        return list(self._loaded.values())


def entries(units: list[Unit]) -> list[Entry]:
    """The models.yaml entries a run with ``units`` uses (adapters, then their one encoder), for the metadata."""
    return [u.entry for u in units] + [units[0].encoder] if units else []


def apply(plugin: Any, pipe: Any, units: list[Unit], refs: list[list[Any]], encoder: Any, loader: Any, ctx: Any,
          total: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Load ``units`` into ``pipe`` through the plugin and set the first step's scales: (call arguments, report)."""
    from sdcompose.errors import SdcomposeError, describe
    from sdcompose.plugins.api import PluginError
    given = [{"id": u.entry.id, "path": loader.verified_path(u.entry), "entry": u.entry, "encoder": encoder,
              "encoder_id": u.encoder.id, "images": images, "weight": u.adapter.weight, "start": u.adapter.start,
              "end": u.adapter.end} for u, images in zip(units, refs)]
    try:
        done = plugin.apply(pipe, given, ctx)
        plugin.set_scales(pipe, scales(units, 0, total))
        return dict(done["arguments"]), dict(done["report"])
    except SdcomposeError:
        raise
    except Exception as exc:  # a plugin's bug fails this request only (remove still runs)
        raise PluginError(f"ip_adapter plugin {plugin.id!r} could not apply {[u.entry.id for u in units]}: "
                          f"{describe(exc)}") from None


def remove(plugin: Any, pipe: Any, on_failure: Any) -> None:
    """Take the adapters off; if the plugin cannot, ``on_failure(message)`` (the core drops the base)."""
    try:
        plugin.remove(pipe)
    except Exception as exc:
        on_failure(f"ip_adapter plugin {plugin.id!r} could not remove its adapters ({type(exc).__name__}: {exc})")
