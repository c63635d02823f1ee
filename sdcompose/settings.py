"""The process's settings, read from the environment once (by ``Pipeline(...)``), never at import.

One place for every ``SDCOMPOSE_*`` variable a user sets; docs/api.md lists them.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sdcompose.errors import ValidationError

DEFAULT_MODEL = "sd15"  # the base a request without ``model`` uses, unless SDCOMPOSE_MODEL names another
MAP_CACHE_MB = 256  # the control-map cache's default bound on disk
OFF = ("off", "0", "no", "false", "none")  # SDCOMPOSE_MAP_CACHE values that turn the cache off


@dataclass(frozen=True)
class Settings:
    home: Path  # SDCOMPOSE_HOME: models, compile caches, the control-map cache
    user_models: Path  # SDCOMPOSE_MODELS_YAML: the user's models.yaml overlay
    model: str | None = None  # SDCOMPOSE_MODEL, when set
    plugins_allow: str | None = None  # SDCOMPOSE_PLUGINS_ALLOW
    plugins_deny: str | None = None  # SDCOMPOSE_PLUGINS_DENY
    debug: bool = False  # SDCOMPOSE_DEBUG: tracebacks instead of one-line errors
    map_cache: Path | None = None  # SDCOMPOSE_MAP_CACHE: the control-map cache's folder (HOME/control-maps); None: off
    map_cache_mb: str | None = None  # SDCOMPOSE_MAP_CACHE_MB as given: its bound in megabytes (0: off)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if environ is None else environ
        home = Path(env.get("SDCOMPOSE_HOME") or Path.home() / ".cache" / "sdcompose")
        maps = env.get("SDCOMPOSE_MAP_CACHE") or str(home / "control-maps")
        return cls(home=home,
                   user_models=Path(env.get("SDCOMPOSE_MODELS_YAML")
                                    or Path.home() / ".config" / "sdcompose" / "models.yaml"),
                   model=env.get("SDCOMPOSE_MODEL") or None, plugins_allow=env.get("SDCOMPOSE_PLUGINS_ALLOW"),
                   plugins_deny=env.get("SDCOMPOSE_PLUGINS_DENY"), debug=bool(env.get("SDCOMPOSE_DEBUG")),
                   map_cache=None if maps.strip().lower() in OFF else Path(maps),
                   map_cache_mb=env.get("SDCOMPOSE_MAP_CACHE_MB"))

    @property
    def default_model(self) -> str:
        return self.model or DEFAULT_MODEL

    def map_cache_bytes(self) -> int:
        """The control-map cache's bound in bytes (default 256 MB); a value that is no whole number is refused
        in one sentence, when a Pipeline is made."""
        value = self.map_cache_mb
        if value is None or not value.strip():
            return MAP_CACHE_MB * 2**20
        if not value.strip().isdigit():
            raise ValidationError(f"SDCOMPOSE_MAP_CACHE_MB must be a whole number of megabytes (0 turns the "
                                  f"control-map cache off), got {value!r}")
        return int(value) * 2**20
