"""The one module plugin authors import: protocols, parameter specs, errors, API version.

A plugin is a class named by an entry point in the group ``sdcompose.plugins``.
The registry reads its class attributes (id, kind, families, ...) and checks them
before the plugin is ever used; built-in plugins follow exactly the same path.

API_VERSION follows semantic versioning (docs/plugins.md, "Versions"): within one major version
nothing in ``__all__`` is removed or changes meaning, a minor version only adds. Every plugin
declares the version it was written for in ``api_version`` ("MAJOR.MINOR"); a newer minor than
the host's, or an unknown major, is refused with a message naming both. 1.x plugins load through
the compatibility layer (plugins/compat.py) until 3.0.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from sdcompose.errors import PluginError, first_line, quote  # re-exported: a plugin imports them from here

API_VERSION = "2.2"  # 1.1: first_line; 1.2: Upscaler; 2.0: api_version required, ControlNets found by models.yaml;
# 2.1: IpAdapterLoader; 2.2: Adapter.contribute (Use in, Contribution out), IpAdapterLoader an Adapter
API_MAJOR = 2

KINDS = frozenset({"conditioner", "adapter", "upscaler", "ip_adapter"})
PARAM_TYPES = ("int", "float", "bool", "str", "choice")


@dataclass(frozen=True)
class ParamSpec:
    """One user-settable parameter of a plugin; drives validation and the UI widget."""

    name: str
    type: str  # one of PARAM_TYPES
    default: Any
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] = ()
    help: str = ""
    step: float | None = None

    def __post_init__(self) -> None:
        try:
            self._check_declaration()
        except PluginError as exc:
            where = _defining_class()
            raise PluginError(f"{where}: {exc}" if where else str(exc)) from None

    def _check_declaration(self) -> None:
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise PluginError(f"param name {self.name!r} is not an identifier")
        if self.type not in PARAM_TYPES:
            raise PluginError(f"param {self.name!r}: type {self.type!r} is not one of {', '.join(PARAM_TYPES)}")
        if self.type == "choice" and self.default not in self.choices:
            raise PluginError(f"param {self.name!r}: default {self.default!r} is not among its choices")
        self.check(self.default)

    def check(self, value: Any) -> Any:
        """Return ``value`` converted to this param's type, or raise PluginError saying why not."""
        where = f"param {self.name!r}"
        if self.type == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
                return value.lower() in ("true", "1", "yes")
            raise PluginError(f"{where} must be true or false, got {quote(value)}")
        if self.type in ("str", "choice"):
            if not isinstance(value, str):
                raise PluginError(f"{where} must be text, got {quote(value)}")
            if self.type == "choice" and value not in self.choices:
                raise PluginError(f"{where} must be one of {', '.join(self.choices)}, got {quote(value)}")
            if len(value) > 10_000:
                raise PluginError(f"{where} is longer than 10000 characters")
            return value
        try:
            number = float(value) if not isinstance(value, bool) else math.nan
        except (TypeError, ValueError):
            number = math.nan
        except OverflowError:  # an int of hundreds of digits: past any float
            raise PluginError(f"{where} must be <= {self.max}, got {quote(value)}") from None
        if not math.isfinite(number):
            raise PluginError(f"{where} must be a finite number, got {quote(value)}")
        if self.type == "int":
            if number != int(number):
                raise PluginError(f"{where} must be a whole number, got {quote(value)}")
            number = int(number)
        if self.min is not None and number < self.min:
            raise PluginError(f"{where} must be >= {self.min}, got {quote(value)}")
        if self.max is not None and number > self.max:
            raise PluginError(f"{where} must be <= {self.max}, got {quote(value)}")
        return number


def _defining_class() -> str:
    """``module.Class`` of the class body a ParamSpec is being declared in (a few frames up), or ''."""
    frame = sys._getframe(1)
    for _ in range(8):
        if frame is None:
            break
        names = frame.f_locals
        if "__qualname__" in names and "__module__" in names:
            return f"class {names['__module__']}.{names['__qualname__']}"
        frame = frame.f_back
    return ""


def check_params(specs: tuple[ParamSpec, ...], given: dict[str, Any], owner: str) -> dict[str, Any]:
    """Fill defaults and validate ``given`` against ``specs``; unknown names are refused."""
    by_name = {spec.name: spec for spec in specs}
    unknown = sorted(set(given) - set(by_name))
    if unknown:
        known = ", ".join(by_name) or "none"
        raise PluginError(f"{owner}: unknown param {', '.join(map(repr, unknown))} (known: {known})")
    out = {}
    for spec in specs:
        try:
            out[spec.name] = spec.check(given.get(spec.name, spec.default))
        except PluginError as exc:
            raise PluginError(f"{owner}: {exc}") from None
    return out


@dataclass
class ControlSource:
    """What a conditioner receives: the user's input, decoded safely by the core.

    ``image`` is an 8-bit RGB image (or None for non-image input); ``raw`` is the
    decoded image in its own mode (``L``, ``I;16``, ``I``, ``RGB``...) for plugins
    that need full precision (depth maps); ``data`` is parsed JSON when the input
    was a ``.json`` file and the plugin lists ``"json"`` in ``inputs``.
    """

    image: Any = None
    raw: Any = None
    data: Any = None
    name: str = ""


@dataclass
class PluginContext:
    """What the core hands a plugin: where its weights are, and the device/dtype to use."""

    device: str = "cpu"
    dtype: Any = None
    weights: dict[str, Path] = field(default_factory=dict)  # models.yaml id -> local path, verified
    size: tuple[int, int] | None = None  # (width, height) the map will be fitted to, when the request gives it

    def weight(self, model_id: str) -> Path:
        if model_id not in self.weights:
            raise PluginError(f"weights {model_id!r} were not declared in the plugin's `annotators`")
        return self.weights[model_id]


class Plugin:
    """Base of every plugin. Subclasses set the class attributes below."""

    id: ClassVar[str] = ""
    kind: ClassVar[str] = ""
    api_version: ClassVar[str]  # required: the plugin API this class was written for, e.g. "2.0"
    version: ClassVar[str] = "0"
    families: ClassVar[frozenset[str]] = frozenset()  # the model families it serves; empty: every installed one
    params: ClassVar[tuple[ParamSpec, ...]] = ()
    help: ClassVar[str] = ""


class Conditioner(Plugin):
    """Turns a user input into a control map for a ControlNet.

    The default ControlNet of each family is the models.yaml ControlNet entry that says
    ``conditioner: <this id>`` (since 2.0; ``controlnets`` may still map a family to an id, which
    then wins). ``annotators`` lists the models.yaml ids of detector weights it needs (their local
    paths arrive in ``ctx.weights``); ``inputs`` lists what it accepts besides images (``"json"``).
    Every id either names is checked against the catalogue when the plugin loads.
    """

    kind: ClassVar[str] = "conditioner"
    controlnets: ClassVar[dict[str, str]] = {}
    annotators: ClassVar[tuple[str, ...]] = ()
    inputs: ClassVar[tuple[str, ...]] = ("image",)
    cache_maps: ClassVar[bool] = True  # False: a detector whose map varies run to run is not kept on disk

    def preprocess(self, source: ControlSource, ctx: PluginContext, params: dict[str, Any]) -> Any:
        """Return the control map as an RGB PIL image."""
        raise NotImplementedError


@dataclass
class Use:
    """One adapter use, as the core hands it to ``Adapter.contribute``: the models.yaml entry and its verified
    file, the weight, the plugin's own params (checked against its ``params``, defaults filled in), the reference
    images (decoded RGB) and the shared modules its entry names (an IP-Adapter's ``image_encoder``, loaded)."""

    id: str
    path: Path
    entry: Any
    weight: float = 1.0
    params: dict[str, Any] = field(default_factory=dict)
    images: list[Any] = field(default_factory=list)
    modules: dict[str, Any] = field(default_factory=dict)


@dataclass
class Contribution:
    """What an adapter adds to one run; the composer merges every adapter's."""

    arguments: dict[str, Any] = field(default_factory=dict)  # pipe(...) keywords; two adapters may not set one
    report: dict[str, Any] = field(default_factory=dict)  # JSON-ready, recorded under adapter_reports[plugin id]


class Adapter(Plugin):
    """Changes a composed pipeline for one request: LoRA weights, image prompts and kin.

    It serves the models.yaml entries of one kind (``serves``); a request's uses of those entries reach
    ``contribute`` together, before denoising, and ``remove`` runs in a ``finally`` after it, so no request
    sees another's adapters. ``needs``: pipeline methods it calls (the core hands it the family's
    text-to-image pipeline over the same modules when the composed one lacks them); ``arguments``: the
    pipe(...) keywords it adds (a request whose pipeline takes none of them is refused before anything loads);
    ``scheduled``: ``set_weights`` runs before every step with each use's weight inside its ``start``..``end``
    params (fractions of the steps), else 0; the rest (``weights``, ``repeats``, ``takes_images``, ``noun``) are
    checked for each use before anything loads.
    """

    kind: ClassVar[str] = "adapter"
    serves: ClassVar[str] = "lora"
    needs: ClassVar[tuple[str, ...]] = ()
    arguments: ClassVar[tuple[str, ...]] = ()
    scheduled: ClassVar[bool] = False
    weights: ClassVar[tuple[float, float]] = (-4.0, 4.0)  # the weights a use may take
    repeats: ClassVar[bool] = False  # whether one request may use an entry twice
    takes_images: ClassVar[bool] = False  # whether each use comes with reference images
    noun: ClassVar[str] = "adapter"  # what its uses are called in messages ("lora", "IP-Adapter")

    def contribute(self, pipe: Any, uses: list[Use], ctx: PluginContext) -> Contribution:
        """Apply ``uses`` to ``pipe``; return what the run adds (an empty ``uses``: undo anything kept from before)."""
        raise NotImplementedError

    def set_weights(self, pipe: Any, weights: list[float]) -> None:
        """Each use's weight for the next step, in order (``scheduled`` adapters)."""
        raise NotImplementedError

    def remove(self, pipe: Any) -> None:
        """Return ``pipe`` to its state without adapters (also after a failed or partial ``contribute``)."""
        raise NotImplementedError


class Upscaler(Plugin):
    """Loads an image-upscaling network (ESRGAN and kin) from a models.yaml upscaler entry's weight file.

    The core tiles the image through what ``load`` returns, so memory stays bounded at any size.
    """

    kind: ClassVar[str] = "upscaler"

    def load(self, path: Path, ctx: PluginContext) -> Any:
        """Return a network for ``path`` on ``ctx.device``: called with a float RGB tensor (N, 3, H, W) in [0, 1],
        it returns (N, 3, H * scale, W * scale) in [0, 1]; its ``scale`` attribute is that whole factor."""
        raise NotImplementedError


class IpAdapterLoader(Adapter):
    """Image prompts (IP-Adapter): an adapter serving models.yaml ``ip_adapter`` entries, each use with its
    references in ``images`` and the loaded ``image_encoder`` in ``modules``; scheduled by its start/end."""

    kind: ClassVar[str] = "ip_adapter"
    serves: ClassVar[str] = "ip_adapter"
    needs: ClassVar[tuple[str, ...]] = ("load_ip_adapter", "set_ip_adapter_scale")
    arguments: ClassVar[tuple[str, ...]] = ("ip_adapter_image",)
    scheduled: ClassVar[bool] = True
    weights: ClassVar[tuple[float, float]] = (0.0, 2.0)
    repeats: ClassVar[bool] = True  # one adapter with other references
    takes_images: ClassVar[bool] = True
    noun: ClassVar[str] = "IP-Adapter"
    params: ClassVar[tuple[ParamSpec, ...]] = (
        ParamSpec("start", "float", 0.0, min=0.0, max=1.0, help="fraction of the steps where it starts acting"),
        ParamSpec("end", "float", 1.0, min=0.0, max=1.0, help="fraction of the steps where it stops acting"))


def __getattr__(name: str) -> Any:
    if name == "FAMILIES":  # plugin API 1.x: the installed model families' names (pipelines/families/)
        from sdcompose.pipelines import families
        return frozenset(families.names())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def validate_plugin_class(cls: Any, entry_id: str) -> None:
    """Check a plugin class's declarations as the registry does when it loads it; raise PluginError naming
    the first problem. For a plugin's own tests (docs/plugins.md, "Test it")."""
    from .registry import validate_plugin_class as validate
    validate(cls, entry_id)


__all__ = ["API_VERSION", "API_MAJOR", "FAMILIES", "KINDS", "PARAM_TYPES", "Plugin", "Conditioner", "Adapter",
           "Upscaler", "IpAdapterLoader", "Use", "Contribution", "ParamSpec", "check_params", "ControlSource", "PluginContext", "PluginError",
           "first_line", "validate_plugin_class"]
