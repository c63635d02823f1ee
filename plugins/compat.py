"""Plugin API versions: which ``api_version`` a plugin may declare, and the 1.x rules kept until 3.0.

A plugin declares the version it was written for as "MAJOR.MINOR". This sdcompose loads its own
major version up to its own minor, and 1.x plugins through the rules below; anything else is
refused with a message naming both versions (docs/plugins.md, "Versions").
"""
from __future__ import annotations

import re
from typing import Any

from . import api

NEWEST = {1: 2, api.API_MAJOR: int(api.API_VERSION.split(".")[1])}  # major -> the newest minor loaded


def major(cls: Any) -> int:
    """The plugin API major version ``cls`` was written for; PluginError when it cannot be loaded here."""
    declared = getattr(cls, "api_version", None)
    if declared is None:
        raise api.PluginError(f"declares no api_version; set api_version = {api.API_VERSION!r} "
                              "(the plugin API it was written for)")
    form = re.fullmatch(r"(\d{1,3})\.(\d{1,3})", declared) if isinstance(declared, str) else None
    if form is None:
        raise api.PluginError(f"api_version must be text of the form MAJOR.MINOR such as {api.API_VERSION!r}, "
                              f"got {declared!r}")
    wanted, minor = int(form[1]), int(form[2])
    if wanted not in NEWEST:
        raise api.PluginError(f"was written for plugin API {declared}; this sdcompose provides {api.API_VERSION}"
                              + (" (and 1.x through its compatibility layer)" if wanted < api.API_MAJOR else
                                 ": upgrade sdcompose"))
    if minor > NEWEST[wanted]:
        raise api.PluginError(f"was written for plugin API {declared}, newer than this sdcompose's "
                              f"{wanted}.{NEWEST[wanted]} (it provides {api.API_VERSION}): upgrade sdcompose")
    return wanted


def check_v1(cls: Any, families: frozenset[str]) -> None:
    """1.x conditioners name a models.yaml ControlNet for every family they declare (2.0 finds it by the
    ControlNet entry's ``conditioner:``)."""
    if issubclass(cls, api.Conditioner):
        missing = families - set(cls.controlnets)
        if missing:
            raise api.PluginError(f"declares families {sorted(missing)} without a ControlNet id for them")


def contribute(plugin: Any, pipe: Any, uses: list[api.Use], ctx: api.PluginContext) -> api.Contribution:
    """``plugin``'s contribution to a run; an adapter written before 2.2 has ``apply`` instead (1.x and 2.0
    adapters return a load report; 2.1 IP-Adapter loaders return ``{"arguments", "report"}``)."""
    if not _before_2_2(plugin):
        return plugin.contribute(pipe, uses, ctx)
    if isinstance(plugin, api.IpAdapterLoader):
        if not uses:  # 2.1 loaders were called only for requests with IP-Adapters
            return api.Contribution()
        done = plugin.apply(pipe, [{"id": u.id, "path": u.path, "entry": u.entry, "encoder": u.modules["image_encoder"],
                                    "encoder_id": u.entry.image_encoder, "images": u.images, "weight": u.weight,
                                    **u.params} for u in uses], ctx)
        return api.Contribution(arguments=dict(done["arguments"]), report=dict(done["report"]))
    report = plugin.apply(pipe, [{"id": u.id, "path": u.path, "weight": u.weight, "entry": u.entry} for u in uses], ctx)
    return api.Contribution(report=dict(report or {}))


def set_weights(plugin: Any, pipe: Any, weights: list[float]) -> None:
    """A scheduled adapter's weights for the next step (``set_scales`` before 2.2)."""
    (plugin.set_scales if _before_2_2(plugin) else plugin.set_weights)(pipe, weights)


def _before_2_2(plugin: Any) -> bool:
    return type(plugin).contribute is api.Adapter.contribute and hasattr(plugin, "apply")
