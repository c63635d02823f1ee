"""The catalogue ids a plugin relies on: its default ControlNet per family, and its annotator weights.

A conditioner's default ControlNet is the models.yaml entry that says ``conditioner: <its id>`` (1.x plugins,
and 2.0 ones that want to, name it in ``controlnets``). Every id is checked when the plugin loads, so a missing
one is named with the file to edit before any request runs.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sdcompose.errors import ModelError
from sdcompose.pipelines.catalog import Catalog, Entry
from sdcompose.plugins.api import Conditioner, PluginError


def _where(catalog: Catalog) -> str:
    return f"{catalog.user_file} (SDCOMPOSE_MODELS_YAML) or the plugin package's own models.yaml"


def default_controlnet(catalog: Catalog, plugin: Any, base: Entry) -> str:
    """The id of the ControlNet a unit of ``plugin`` uses on ``base`` when it names none."""
    named = getattr(plugin, "controlnets", {}).get(base.family)
    if named is not None:
        return catalog.stand_in(named, base.tiny)
    found = catalog.serving(plugin.id, base.family, base.tiny)
    if found is None:
        kind = "tiny test ControlNet" if base.tiny else "ControlNet"
        raise ModelError(f"no {kind} in models.yaml serves conditioner {plugin.id!r} for {base.family}: add one "
                         f"with `conditioner: {plugin.id}`{' and `tiny: true`' if base.tiny else ''} to "
                         f"{_where(catalog)}, or name one with model=")
    return found.id


def annotator_ids(catalog: Catalog, plugin: Any, tiny: bool) -> dict[str, str]:
    """Each annotator id ``plugin`` declares -> the entry to use: with a tiny base, a stand-in if one exists."""
    out = {}
    for model_id in getattr(plugin, "annotators", ()):
        stand_ins = [e.id for e in catalog.entries.values() if e.kind == "annotator" and e.stands_in_for == model_id]
        out[model_id] = stand_ins[0] if tiny and stand_ins else model_id
    return out


def checker(catalog: Catalog) -> Callable[[Any], None]:
    """``check(plugin)`` for the registry: PluginError naming every catalogue id the plugin lacks."""
    def check(plugin: Any) -> None:
        if not isinstance(plugin, Conditioner):
            return
        missing = []
        for family in sorted(plugin.families):
            named = plugin.controlnets.get(family)
            if named is not None and named not in catalog.entries:
                missing.append(f"ControlNet {named!r} ({family})")
            elif named is None and not any(catalog.serving(plugin.id, family, tiny) for tiny in (False, True)):
                missing.append(f"a {family} ControlNet saying `conditioner: {plugin.id}`")
        missing += [f"annotator {a!r}" for a in plugin.annotators
                    if a not in catalog.entries or catalog.entries[a].kind != "annotator"]
        if missing:
            raise PluginError(f"needs models.yaml entries that are missing: {', '.join(missing)}; add them to "
                              f"{_where(catalog)}")
    return check
