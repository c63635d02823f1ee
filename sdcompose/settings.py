"""The process's settings, read from the environment once (by ``Pipeline(...)``), never at import.

One place for every ``SDCOMPOSE_*`` variable a user sets; docs/api.md lists them.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MODEL = "sd15"  # the base a request without ``model`` uses, unless SDCOMPOSE_MODEL names another


@dataclass(frozen=True)
class Settings:
    home: Path  # SDCOMPOSE_HOME: models, compile caches, the control-map cache
    user_models: Path  # SDCOMPOSE_MODELS_YAML: the user's models.yaml overlay
    model: str | None = None  # SDCOMPOSE_MODEL, when set
    plugins_allow: str | None = None  # SDCOMPOSE_PLUGINS_ALLOW
    plugins_deny: str | None = None  # SDCOMPOSE_PLUGINS_DENY
    debug: bool = False  # SDCOMPOSE_DEBUG: tracebacks instead of one-line errors

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if environ is None else environ
        return cls(home=Path(env.get("SDCOMPOSE_HOME") or Path.home() / ".cache" / "sdcompose"),
                   user_models=Path(env.get("SDCOMPOSE_MODELS_YAML")
                                    or Path.home() / ".config" / "sdcompose" / "models.yaml"),
                   model=env.get("SDCOMPOSE_MODEL") or None, plugins_allow=env.get("SDCOMPOSE_PLUGINS_ALLOW"),
                   plugins_deny=env.get("SDCOMPOSE_PLUGINS_DENY"), debug=bool(env.get("SDCOMPOSE_DEBUG")))

    @property
    def default_model(self) -> str:
        return self.model or DEFAULT_MODEL
