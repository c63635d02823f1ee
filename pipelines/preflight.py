"""Whether a request can run on this device, decided before anything is preprocessed or loaded.

A request that cannot run here fails in one sentence before detectors run or weights load. Today that is the
attention backend (xformers installed, CUDA only); every memory mode runs on every device (the request schema
checks its name), so it has no check here. A new device-dependent setting adds its check to ``check``.
"""
from __future__ import annotations

from typing import Any

from sdcompose.pipelines import attention


def check(req: Any, device: str) -> None:
    """ValidationError for the first setting of ``req`` that cannot run on ``device``."""
    attention.choose(req.attention, device)
