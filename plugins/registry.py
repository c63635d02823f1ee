"""Plugin discovery through entry points: names listed without importing, imported on first use.

A plugin that fails to import or validate becomes an entry with its error; the
registry and every other plugin keep working. ``SDCOMPOSE_PLUGINS_ALLOW`` /
``SDCOMPOSE_PLUGINS_DENY`` and the ``allow`` / ``deny`` arguments (comma lists of
ids, or ``package:id`` for one package's claim) decide what loads.

Duplicate ids are refused, naming both packages: sdcompose's own plugins keep
their ids; two other packages claiming one id are both refused until one is
uninstalled or denied (which one would win is otherwise an accident of sorting).
A package whose metadata cannot be read is listed as broken.
"""
from __future__ import annotations

import importlib
import re
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import distributions
from typing import Any

from sdcompose.errors import SdcomposeError, suggest
from sdcompose.pipelines import families as model_families
from sdcompose.settings import Settings

from . import api, compat
from .contain import plugin_code

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
            "families": sorted(getattr(cls, "families", ()) or (model_families.names() if cls else ())),
            "version": getattr(cls, "version", ""),
            "api_version": getattr(cls, "api_version", ""),
            "package": self.package,
            "target": self.target,
            "status": self.status,
            "error": self.error,
            "help": getattr(cls, "help", ""),
            "params": [vars(spec).copy() for spec in getattr(cls, "params", ())],
        }


OWN_PACKAGE = "sdcompose"


def _id_list(value: str | None) -> set[str] | None:
    if value is None:
        return None
    return {part.strip() for part in value.split(",") if part.strip()}


def _package(name: str) -> str:
    """A distribution name normalised the way pip compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _listed(entry: "PluginEntry", names: set[str]) -> bool:
    return entry.id in names or f"{_package(entry.package)}:{entry.id}" in {
        f"{_package(n.partition(':')[0])}:{n.partition(':')[2]}" for n in names if ":" in n}


def _discover(group: str = GROUP) -> tuple[list[PluginEntry], list[PluginEntry]]:
    """Every entry point in ``group``, one distribution per name (the first on sys.path, as importlib does),
    plus a broken entry for each distribution whose entry points cannot be read."""
    found, broken, seen = [], [], set()
    for dist in distributions():
        key = getattr(dist, "_normalized_name", None)  # from the folder name: cheap, as importlib dedups
        if key is not None:
            if _package(key) in seen:
                continue
            seen.add(_package(key))
        try:
            eps = list(dist.entry_points.select(group=group))
            if not eps:
                continue
            name = dist.metadata["Name"] or key or "?"
        except Exception as exc:  # a malformed entry_points.txt or METADATA must not hide every other plugin
            name = key or "?"
            broken.append(PluginEntry(id=f"<{name}>", target="", package=name, status="broken",
                                      error=f"its entry points cannot be read: {type(exc).__name__}: {exc}"))
            continue
        found.extend(PluginEntry(id=ep.name, target=ep.value, package=name, _ep=ep) for ep in eps)
    return sorted(found, key=lambda e: (e.id, e.package, e.target)), broken


def _warn_about_lists(found: list[PluginEntry], allow: set[str] | None, deny: set[str]) -> None:
    """Warn about allow/deny names no installed plugin has, and about an allow list switching off built-ins."""
    known = {e.id for e in found} | {f"{_package(e.package)}:{e.id}" for e in found}
    for variable, names in (("SDCOMPOSE_PLUGINS_ALLOW", allow or set()), ("SDCOMPOSE_PLUGINS_DENY", deny)):
        for name in sorted(names):
            if name not in known and not any(_listed(e, {name}) for e in found):
                warnings.warn(f"{variable} names {name!r}, which no installed plugin has{suggest(name, known)}; "
                              "it has no effect", UserWarning, stacklevel=3)
    if allow is None:
        return
    if not allow:
        warnings.warn("SDCOMPOSE_PLUGINS_ALLOW is set but empty: every plugin is switched off, sdcompose's own "
                      "included; unset it to load them all", UserWarning, stacklevel=3)
        return
    off = sorted({e.id for e in found if _package(e.package) == OWN_PACKAGE and not _listed(e, allow)})
    if off:
        warnings.warn(f"SDCOMPOSE_PLUGINS_ALLOW switches off every plugin it does not name, sdcompose's own "
                      f"included: {', '.join(off)} are off; name them too, or use SDCOMPOSE_PLUGINS_DENY to switch "
                      "off only what you name", UserWarning, stacklevel=3)


def validate_plugin_class(cls: Any, entry_id: str) -> None:
    """Check a plugin class's declarations; raise PluginError naming the first problem."""
    if not isinstance(cls, type) or not issubclass(cls, api.Plugin):
        raise api.PluginError("is not a subclass of sdcompose.plugins.api.Plugin")
    if cls.id != entry_id:
        raise api.PluginError(f"declares id {cls.id!r} but its entry point is named {entry_id!r}")
    if cls.kind not in api.KINDS:
        raise api.PluginError(f"kind {cls.kind!r} is not one of {', '.join(sorted(api.KINDS))}")
    major = compat.major(cls)
    known = set(model_families.names())
    families = frozenset(cls.families) or frozenset(known)  # none declared: every installed family
    if not families <= known:
        raise api.PluginError(f"families {sorted(families)} must be a non-empty subset of {sorted(known)}")
    if not all(isinstance(spec, api.ParamSpec) for spec in cls.params):
        raise api.PluginError("params must be ParamSpec instances")
    if len({spec.name for spec in cls.params}) != len(cls.params):
        raise api.PluginError("params have duplicate names")
    if not isinstance(cls.version, str) or not isinstance(cls.help, str):
        raise api.PluginError("version and help must be text")
    if issubclass(cls, api.Adapter):
        names = (*cls.needs, *cls.arguments)
        low, high = cls.weights if isinstance(cls.weights, tuple) and len(cls.weights) == 2 else (None, None)
        if not isinstance(cls.serves, str) or not isinstance(cls.noun, str) or not all(isinstance(n, str) for n in names):
            raise api.PluginError("serves and noun must be text, needs and arguments tuples of names")
        if not isinstance(low, (int, float)) or not isinstance(high, (int, float)) or not low <= high:
            raise api.PluginError("weights must be a (low, high) pair of numbers")
    if issubclass(cls, api.Conditioner):
        if not isinstance(cls.controlnets, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in cls.controlnets.items()):
            raise api.PluginError("controlnets must map each family to a models.yaml ControlNet id")
        if major == 1:
            compat.check_v1(cls, frozenset(cls.families))
        if not all(isinstance(a, str) for a in cls.annotators) or not set(cls.inputs) <= {"image", "json"}:
            raise api.PluginError("annotators must be models.yaml ids and inputs a subset of ('image', 'json')")


class Registry:
    def __init__(self, allow: str | None = None, deny: str | None = None,
                 check: Callable[[Any], None] | None = None, settings: Settings | None = None) -> None:
        """``allow`` / ``deny`` default to the settings' (SDCOMPOSE_PLUGINS_ALLOW / _DENY); ``check(plugin)`` runs
        on each plugin as it loads (the catalogue check of the ids it declares) and raises PluginError to refuse it."""
        settings = settings or (Settings.from_env() if allow is None or deny is None else None)
        self.allow = _id_list(allow if allow is not None else settings.plugins_allow)
        self.deny = _id_list(deny if deny is not None else settings.plugins_deny) or set()
        self.check = check
        self._lock = threading.Lock()
        self.entries: dict[str, PluginEntry] = {}
        self.rejected: list[PluginEntry] = []
        found, self.rejected = _discover()
        claims: dict[str, list[PluginEntry]] = {}
        for entry in found:
            if _listed(entry, self.deny) or (self.allow is not None and not _listed(entry, self.allow)):
                entry.status = "disabled"
                entry.error = "disabled by the allow/deny list (SDCOMPOSE_PLUGINS_ALLOW / SDCOMPOSE_PLUGINS_DENY)"
            claims.setdefault(entry.id, []).append(entry)
        for plugin_id, claimants in claims.items():
            enabled = [e for e in claimants if e.status != "disabled"]
            if len(enabled) <= 1:
                own = [e for e in claimants if _package(e.package) == OWN_PACKAGE]
                self.entries[plugin_id] = enabled[0] if enabled else (own or claimants)[0]
                self.rejected += [e for e in claimants if e is not self.entries[plugin_id]]
                continue
            own = [e for e in enabled if _package(e.package) == OWN_PACKAGE]
            keeper = own[0] if own else None
            for entry in enabled:
                if entry is keeper:
                    continue
                others = ", ".join(f"{o.package!r} ({o.target})" for o in enabled if o is not entry)
                entry.status = "duplicate"
                entry.error = (f"id {plugin_id!r} is also registered by {others}; "
                               + (f"sdcompose's own plugin keeps it, so {entry.package!r} ({entry.target}) was refused"
                                  if keeper else "both were refused")
                               + ": uninstall one, or set "
                               f"SDCOMPOSE_PLUGINS_DENY={_package(entry.package)}:{plugin_id}")
            self.entries[plugin_id] = keeper or enabled[0]
            self.rejected += [e for e in claimants if e is not self.entries[plugin_id]]
        _warn_about_lists(found, self.allow, self.deny)

    def _load(self, entry: PluginEntry) -> None:
        try:
            with plugin_code(""):  # a broken plugin never takes the app down, even with sys.exit() at import
                cls = self._class(entry)
                validate_plugin_class(cls, entry.id)
                entry.plugin = cls()
            if self.check is not None:
                self.check(entry.plugin)
            entry.status = "loaded"
        except SdcomposeError as exc:
            entry.status = "broken"
            entry.plugin = None
            entry.error = str(exc)

    def _class(self, entry: PluginEntry) -> Any:
        """The class an entry point names; a module that fails to import is named with every class it held."""
        module_name, attr = entry._ep.module, entry._ep.attr or ""
        try:
            target = importlib.import_module(module_name)
        except (Exception, SystemExit) as exc:
            held = ", ".join(sorted(f"{e._ep.attr} (plugin {e.id!r})" for e in [*self.entries.values(), *self.rejected]
                                    if e._ep is not None and e._ep.module == module_name))
            raise api.PluginError(f"{type(exc).__name__}: {exc}; module {module_name!r} failed to import, so "
                                  f"every class it held is unavailable: {held}") from None
        for part in attr.split(".") if attr else ():
            if not hasattr(target, part):
                raise api.PluginError(f"module {module_name!r} has no {part!r}: fix the entry point "
                                      f"{entry.id} = {entry.target!r} in {entry.package!r}'s package metadata")
            target = getattr(target, part)
        return target

    def get(self, plugin_id: str, kind: str | None = None) -> Any:
        """Return the plugin instance, importing it on first use; raise PluginError if unusable."""
        entry = self.entries.get(plugin_id)
        if entry is None:
            raise api.PluginError(f"no plugin {plugin_id!r}{suggest(plugin_id, self.entries)}")
        with self._lock:
            if entry.status == "available":
                self._load(entry)
        if entry.status != "loaded":
            raise api.PluginError(f"plugin {plugin_id!r} from {entry.package!r} is {entry.status}: {entry.error}")
        if kind is not None and entry.plugin.kind != kind:
            raise api.PluginError(f"plugin {plugin_id!r} is a {entry.plugin.kind}, not a {kind}")
        return entry.plugin

    def record(self, plugin_id: str) -> dict[str, str]:
        """What an image's metadata says about a plugin it used: its version, package and plugin API version."""
        plugin = self.get(plugin_id)
        return {"version": plugin.version, "package": self.entries[plugin_id].package,
                "api_version": plugin.api_version}

    def describe_all(self) -> list[dict[str, Any]]:
        """Every discovered plugin (importing each enabled one to learn its kind), broken ones included,
        then the model families (kind ``family``)."""
        with self._lock:
            for entry in self.entries.values():
                if entry.status == "available":
                    self._load(entry)
        return [entry.describe() for entry in [*self.entries.values(), *self.rejected]] + model_families.describe_all()

    def ids(self, kind: str) -> list[str]:
        return [d["id"] for d in self.describe_all() if d["kind"] == kind and d["status"] == "loaded"]
