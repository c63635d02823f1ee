"""Plugin discovery through entry points: names listed without importing, imported on first use.

A plugin that fails to import or validate becomes an entry with its error; the
registry and every other plugin keep working. Duplicate ids are refused, naming
both packages. ``SDCOMPOSE_PLUGINS_ALLOW`` / ``SDCOMPOSE_PLUGINS_DENY`` (comma
lists of ids) and the ``allow`` / ``deny`` arguments decide what loads.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

from . import api

GROUP = "sdcompose.plugins"


@dataclass
class PluginEntry:
    id: str
    target: str  # "module:Class"
    package: str  # distribution that registered it
    status: str = "available"  # available | loaded | broken | disabled | duplicate
    error: str = ""
    plugin: Any = None
    _ep: Any = field(default=None, repr=False)

    def describe(self) -> dict[str, Any]:
        cls = type(self.plugin) if self.plugin is not None else None
        return {
            "id": self.id,
            "kind": getattr(cls, "kind", ""),
            "families": sorted(getattr(cls, "families", ())),
            "version": getattr(cls, "version", ""),
            "package": self.package,
            "target": self.target,
            "status": self.status,
            "error": self.error,
            "help": getattr(cls, "help", ""),
            "params": [vars(spec).copy() for spec in getattr(cls, "params", ())],
        }


def _id_list(value: str | None) -> set[str] | None:
    if value is None:
        return None
    return {part.strip() for part in value.split(",") if part.strip()}


def validate_plugin_class(cls: Any, entry_id: str) -> None:
    """Check a plugin class's declarations; raise PluginError naming the first problem."""
    if not isinstance(cls, type) or not issubclass(cls, api.Plugin):
        raise api.PluginError("is not a subclass of sdcompose.plugins.api.Plugin")
    if cls.id != entry_id:
        raise api.PluginError(f"declares id {cls.id!r} but its entry point is named {entry_id!r}")
    if cls.kind not in api.KINDS:
        raise api.PluginError(f"kind {cls.kind!r} is not one of {', '.join(sorted(api.KINDS))}")
    major = str(cls.api_version).split(".")[0]
    if major != str(api.API_MAJOR):
        raise api.PluginError(
            f"was written for plugin API {cls.api_version}; this sdcompose provides {api.API_VERSION}")
    families = frozenset(cls.families)
    if not families or not families <= api.FAMILIES:
        raise api.PluginError(f"families {sorted(families)} must be a non-empty subset of {sorted(api.FAMILIES)}")
    if not all(isinstance(spec, api.ParamSpec) for spec in cls.params):
        raise api.PluginError("params must be ParamSpec instances")
    if len({spec.name for spec in cls.params}) != len(cls.params):
        raise api.PluginError("params have duplicate names")
    if issubclass(cls, api.Conditioner):
        missing = families - set(cls.controlnets)
        if missing:
            raise api.PluginError(f"declares families {sorted(missing)} without a ControlNet id for them")


class Registry:
    def __init__(self, allow: str | None = None, deny: str | None = None) -> None:
        self.allow = _id_list(allow if allow is not None else os.environ.get("SDCOMPOSE_PLUGINS_ALLOW"))
        self.deny = _id_list(deny if deny is not None else os.environ.get("SDCOMPOSE_PLUGINS_DENY")) or set()
        self._lock = threading.Lock()
        self.entries: dict[str, PluginEntry] = {}
        self.rejected: list[PluginEntry] = []
        for ep in sorted(entry_points(group=GROUP), key=lambda e: (e.name, e.value)):
            package = ep.dist.name if ep.dist is not None else "?"
            entry = PluginEntry(id=ep.name, target=ep.value, package=package, _ep=ep)
            if ep.name in self.entries:
                first = self.entries[ep.name]
                entry.status = "duplicate"
                entry.error = (f"id {ep.name!r} is already registered by package {first.package!r} "
                               f"({first.target}); {package!r} ({ep.value}) was refused")
                self.rejected.append(entry)
                continue
            if ep.name in self.deny or (self.allow is not None and ep.name not in self.allow):
                entry.status = "disabled"
                entry.error = "disabled by the allow/deny list"
            self.entries[ep.name] = entry

    def _load(self, entry: PluginEntry) -> None:
        try:
            cls = entry._ep.load()
            validate_plugin_class(cls, entry.id)
            entry.plugin = cls()
            entry.status = "loaded"
        except Exception as exc:  # a broken plugin must never take the app down
            entry.status = "broken"
            entry.error = f"{type(exc).__name__}: {exc}" if not isinstance(exc, api.PluginError) else str(exc)

    def get(self, plugin_id: str, kind: str | None = None) -> Any:
        """Return the plugin instance, importing it on first use; raise PluginError if unusable."""
        entry = self.entries.get(plugin_id)
        if entry is None:
            from sdcompose.errors import suggest
            raise api.PluginError(f"no plugin {plugin_id!r}{suggest(plugin_id, self.entries)}")
        with self._lock:
            if entry.status == "available":
                self._load(entry)
        if entry.status != "loaded":
            raise api.PluginError(f"plugin {plugin_id!r} from {entry.package!r} is {entry.status}: {entry.error}")
        if kind is not None and entry.plugin.kind != kind:
            raise api.PluginError(f"plugin {plugin_id!r} is a {entry.plugin.kind}, not a {kind}")
        return entry.plugin

    def describe_all(self) -> list[dict[str, Any]]:
        """Every discovered plugin (importing each enabled one to learn its kind), broken ones included."""
        with self._lock:
            for entry in self.entries.values():
                if entry.status == "available":
                    self._load(entry)
        return [entry.describe() for entry in [*self.entries.values(), *self.rejected]]

    def ids(self, kind: str) -> list[str]:
        return [d["id"] for d in self.describe_all() if d["kind"] == kind and d["status"] == "loaded"]
