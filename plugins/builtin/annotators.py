"""Shared by the built-in detector plugins: weights-only loading, quiet imports, a small network cache.

Annotator weights (``lllyasviel/Annotators``) are pickled state dicts. The core hands a plugin
their verified local path; here they are read with ``torch.load(weights_only=True)``, so a file
that holds anything but tensors is refused without running it, and the networks are built from
controlnet-aux's classes directly, so controlnet-aux never downloads anything itself.
"""
from __future__ import annotations

import importlib
import threading
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

from sdcompose.plugins.api import PluginError, first_line


def import_quietly(module: str) -> Any:
    """Import a controlnet-aux module without the warnings its package import prints (mediapipe, timm)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return importlib.import_module(module)


def load_state(path: Path, what: str) -> dict[str, Any]:
    """A pickled state dict, read weights-only; PluginError in one sentence if it is anything else."""
    import pickle

    import torch
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise PluginError(f"{what} weights {path.name} hold objects other than tensors and were refused "
                          "(weights-only loading); download them again from the pinned source") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise PluginError(f"{what} weights {path.name} could not be read ({first_line(exc, 120)}); "
                          "delete the file and download it again") from None
    if not isinstance(state, dict):
        raise PluginError(f"{what} weights {path.name} are not a state dict; is this the right file?")
    return state


def fill(net: Any, state: dict[str, Any], path: Path, what: str) -> Any:
    """Load ``state`` into ``net`` strictly; a mismatch names the file instead of listing every key."""
    try:
        net.load_state_dict(state)
    except (RuntimeError, KeyError) as exc:
        raise PluginError(f"{what} weights {path.name} do not fit the {what} network "
                          f"({first_line(exc, 120)}); is models.yaml pointing at the right file?") from None
    return net.float().eval().requires_grad_(False)


class NetCache:
    """The last few networks built, keyed by weight file (path, size, mtime) and device."""

    def __init__(self, size: int = 2) -> None:
        self._nets: OrderedDict[tuple, Any] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def get(self, path: Path, device: str, build: Callable[[], Any]) -> Any:
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns, str(device))
        with self._lock:
            if key in self._nets:
                self._nets.move_to_end(key)
                return self._nets[key]
            net = build()
            self._nets[key] = net
            while len(self._nets) > self._size:
                self._nets.popitem(last=False)
            return net


def detect_size(size: tuple[int, int], resolution: int) -> tuple[int, int]:
    """The input size scaled so its short side is ``resolution`` (the detectors' working size), aspect kept."""
    scale = resolution / min(size)
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def to_map(array: np.ndarray, size: tuple[int, int]) -> Image.Image:
    """A detector's HxW or HxWx3 uint8 output as an RGB map of ``size`` (width, height)."""
    image = Image.fromarray(np.ascontiguousarray(array)).convert("RGB")
    return image if image.size == size else image.resize(size, Image.BILINEAR)
