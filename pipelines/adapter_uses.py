"""A request's adapters as one list of uses, and the schedule of scheduled ones.

``loras``, the prompt's ``<lora:...>`` tags, ``ip_adapters`` and ``adapters`` each become a ``Planned`` use of
the plugin that serves its models.yaml entry's kind (the adapter plugin whose id is that kind), checked before
anything loads: the entry's family, the weight against the plugin's range, the params against its
``params``, a repeat where the plugin takes none, and one entry for each shared module the uses name (an
IP-Adapter's ``image_encoder``). The run (pipelines/run.py) hands each plugin its uses and merges what they
contribute; the record (pipelines/record.py) embeds their images under ``name``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sdcompose.errors import ModelError, ValidationError
from sdcompose.images import load_rgb
from sdcompose.pipelines.catalog import Catalog, Entry
from sdcompose.plugins.api import Adapter, PluginError, Use, check_params
from sdcompose.plugins.registry import Registry
from sdcompose.request import GenerationRequest

MODULES = ("image_encoder",)  # entry fields naming a shared module the pipeline loads once for every use


@dataclass
class Planned:
    plugin: Any
    entry: Entry
    weight: float
    params: dict[str, Any] = field(default_factory=dict)
    images: list[Any] = field(default_factory=list)  # the request's references (paths, PIL images, arrays)
    name: str = ""  # its images' names in the PNG: ``{name}-{j}`` ("ip-adapter-0-0", "adapter-2-0")
    modules: dict[str, Entry] = field(default_factory=dict)  # pipeline module name -> its models.yaml entry


def plan(req: GenerationRequest, tags: list[tuple[Entry, float]], catalog: Catalog, registry: Registry,
         base: Entry) -> list[Planned]:
    """Every adapter use of ``req`` (``tags``: the prompt's LoRA tags, resolved), in order: loras, tags,
    ip_adapters, adapters."""
    given: list[tuple[Entry, float, dict[str, Any], list[Any], str]] = []
    given += [(catalog.get(x.id, "lora"), x.weight, {}, [], "") for x in req.loras]
    given += [(entry, weight, {}, [], "") for entry, weight in tags]
    given += [(catalog.get(a.id, "ip_adapter"), a.weight, {"start": a.start, "end": a.end}, a.images(),
               f"ip-adapter-{i}") for i, a in enumerate(req.ip_adapters)]
    given += [(catalog.get(a.id), a.weight, dict(a.params), a.images(), f"adapter-{i}")
              for i, a in enumerate(req.adapters)]
    uses: list[Planned] = []
    for entry, weight, params, images, name in given:
        plugin = serving(registry, entry)
        noun = plugin.noun
        entry.check_base(noun, base)
        if not plugin.repeats and any(u.entry.id == entry.id for u in uses):
            raise ModelError(f"{noun} {entry.id!r} is asked for twice (in a list and as a prompt tag, or twice in "
                             "either); give it once")
        low, high = plugin.weights
        if not low <= weight <= high:
            raise ValidationError(f"{noun} {entry.id!r}: weight must be from {low:g} to {high:g}, got {weight:g}")
        if bool(images) != plugin.takes_images:
            raise ValidationError(f"{noun} {entry.id!r} needs a reference image" if plugin.takes_images else
                                  f"{noun} {entry.id!r} takes no image; leave out its image")
        uses.append(Planned(plugin, entry, weight, check_params(plugin.params, params, f"{noun} {entry.id!r}"),
                            images, name, {m: catalog.get(getattr(entry, m), m) for m in MODULES
                                           if getattr(entry, m, None)}))
    for module in MODULES:
        ids = {u.modules[module].id for u in uses if module in u.modules}
        if len(ids) > 1:
            raise ModelError(f"these adapters use different {module.replace('_', ' ')}s ({', '.join(sorted(ids))}); "
                             f"a pipeline runs one: pick adapters of one {module.replace('_', ' ')}")
    return uses


def serving(registry: Registry, entry: Entry) -> Adapter:
    """The adapter plugin that serves ``entry``'s kind, or PluginError naming what it is."""
    found = registry.entries.get(entry.kind)
    if found is None:
        raise PluginError(f"{entry.id!r} is a {entry.kind}, which no adapter plugin serves; an adapter use names a "
                          "models.yaml entry of a kind an adapter plugin serves (lora, ip_adapter)")
    plugin = registry.get(entry.kind)
    if not isinstance(plugin, Adapter) or plugin.serves != entry.kind:
        raise PluginError(f"plugin {entry.kind!r} is not an adapter serving {entry.kind} entries")
    return plugin


def groups(uses: list[Planned]) -> list[tuple[Any, list[Planned]]]:
    """The uses by plugin, in the order each plugin first appears."""
    out: dict[str, tuple[Any, list[Planned]]] = {}
    for use in uses:
        out.setdefault(use.plugin.id, (use.plugin, []))[1].append(use)
    return list(out.values())


def references(uses: list[Planned]) -> list[list[Any]]:
    """Every use's images as RGB (call under the request's ``pixel_budget``)."""
    return [[load_rgb(image, f"{u.plugin.noun} {u.entry.id!r} reference {j + 1}") for j, image in
             enumerate(u.images)] for u in uses]


def inputs(uses: list[Planned], refs: list[list[Any]]) -> dict[str, Any]:
    """The references under their PNG names (``GenerationRequest.from_metadata`` reads them back)."""
    return {f"{u.name}-{j}": image for u, images in zip(uses, refs) for j, image in enumerate(images)}


def given(uses: list[Planned], refs: list[list[Any]], modules: dict[str, Any], verified_path: Any) -> list[Use]:
    """What ``contribute`` gets for each use: the entry's verified file, references, loaded shared modules."""
    return [Use(u.entry.id, verified_path(u.entry), u.entry, u.weight, dict(u.params), list(images),
                {name: modules[name] for name in u.modules}) for u, images in zip(uses, refs)]


def entries(uses: list[Planned]) -> list[Entry]:
    """The models.yaml entries the uses run on (adapters, then their shared modules), for the metadata."""
    shared = {e.id: e for u in uses for e in u.modules.values()}
    return [u.entry for u in uses] + list(shared.values())


def steps_run(req: Any) -> int:
    """How many denoising steps diffusers runs for ``req`` (img2img and inpaint skip the first ones)."""
    if req.init_image is None:
        return req.steps
    return req.steps - int(max(req.steps - req.steps * req.strength, 0))


def weights(uses: list[Planned], step: int, total: int) -> list[float]:
    """Each scheduled use's weight at ``step`` (0-based) of ``total``: inside its [start, end] params, else 0 (the
    rule diffusers applies to ControlNets)."""
    return [u.weight * (1.0 - float(step / total < u.params.get("start", 0.0)
                                    or (step + 1) / total > u.params.get("end", 1.0))) for u in uses]
