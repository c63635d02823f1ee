"""Attention backends for the UNet, ControlNets and VAE: ``sdpa``, ``xformers``, ``sliced``, ``auto``.

- ``sdpa``: PyTorch's fused ``scaled_dot_product_attention`` (diffusers' default on torch 2): memory
  linear in the token count, and as fast as xformers on current cards.
- ``xformers``: xformers' memory-efficient kernels, when the package is installed (CUDA only).
- ``sliced``: classic attention computed a few heads at a time (diffusers' ``set_attention_slice``);
  for devices where SDPA has no fused kernel. Slower, and no smaller than SDPA where SDPA is fused.
- ``auto``: ``sdpa``. It never switches backend by what happens to be installed, so the same seed
  gives the same image on every machine with the same settings.

A backend is applied to the cached modules themselves and remembered, so asking again costs nothing.
"""
from __future__ import annotations

import importlib.util
import weakref
from typing import Any

from sdcompose.errors import ValidationError
from sdcompose.request import ATTENTION_BACKENDS as BACKENDS

DEFAULT = "sdpa"  # what diffusers gives a freshly loaded model on torch 2

_applied: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # module -> backend set on it


def choose(name: str, device: str) -> tuple[str, str]:
    """The backend to run and why, or ValidationError when ``name`` cannot run here."""
    if name not in BACKENDS:
        raise ValidationError(f"attention {name!r} is not one of {', '.join(BACKENDS)}")
    if name == "auto":
        return "sdpa", "auto: PyTorch SDPA (fused, memory-efficient, built in)"
    if name == "xformers":
        if importlib.util.find_spec("xformers") is None:
            raise ValidationError("attention 'xformers' needs the xformers package: pip install 'sdcompose[xformers]' "
                                  "(a build matching your torch), or use attention 'sdpa'")
        if not device.startswith("cuda"):
            raise ValidationError(f"attention 'xformers' runs on CUDA only, not {device}; use attention 'sdpa'")
    return name, "as asked"


def apply(modules: list[Any], backend: str) -> None:
    """Set ``backend`` on every module that has attention layers (diffusers models; others are left alone)."""
    for module in modules:
        if _applied.get(module, DEFAULT) == backend or not hasattr(module, "set_attn_processor"):
            continue
        if backend == "sdpa":
            from diffusers.models.attention_processor import AttnProcessor2_0
            module.set_attn_processor(AttnProcessor2_0())
        elif backend == "xformers":
            module.enable_xformers_memory_efficient_attention()
        elif hasattr(module, "set_attention_slice"):  # sliced: UNet and ControlNet; the VAE keeps SDPA
            module.set_attention_slice("auto")
        _applied[module] = backend
