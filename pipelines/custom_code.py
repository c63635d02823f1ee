"""Model folders that name their own Python code are refused before any library sees them.

transformers (``auto_map``) and diffusers (``custom_pipeline``, a ``model_index.json`` component from a
module that is not a known library) can import code shipped beside the weights; with
``trust_remote_code`` unset, transformers asks on the terminal whether to run it. sdcompose passes
``trust_remote_code=False`` wherever a loader takes it, and refuses such folders here first, in one
sentence, so no prompt is ever shown and no such code runs.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sdcompose.errors import ModelError

LIBRARIES = {"diffusers", "transformers", None}  # where a model_index.json component may come from
CODE_KEYS = ("auto_map", "custom_pipeline")
MAX_CONFIG_BYTES = 5 * 2**20


def refuse_custom_code(folder: Path, what: str) -> None:
    """ModelError if a JSON config in ``folder`` (a model folder) names code to import."""
    if not folder.is_dir():
        return
    for config in sorted(folder.rglob("*.json")):
        if not config.is_file() or config.stat().st_size > MAX_CONFIG_BYTES:
            continue
        try:
            data = json.loads(config.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            continue  # not a config a loader would take: the loader's own error says so
        reason = _names_code(data, config.name)
        if reason:
            raise ModelError(f"{what}: {config.relative_to(folder)} {reason}, which sdcompose never runs; "
                             "use a folder of plain weights and configs")


def _names_code(data: Any, name: str) -> str:
    if not isinstance(data, dict):
        return ""
    for key in CODE_KEYS:
        if key in data:
            return f"names custom code ({key!r})"
    if name == "model_index.json":
        if isinstance(data.get("_class_name"), list):
            return "names a custom pipeline class"
        for component, spec in data.items():
            if isinstance(spec, list) and spec and spec[0] not in LIBRARIES:
                return f"takes component {component!r} from module {str(spec[0])[:60]!r}"
    return ""
