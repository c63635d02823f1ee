"""Diffusers schedulers for sampler ids (sdcompose/samplers.py), built from the model's own scheduler config."""
from __future__ import annotations

from typing import Any

from sdcompose import samplers


def make(name: str, base_config: Any):
    """A new scheduler for the sampler id ``name``, from the model's own scheduler config."""
    import diffusers
    class_name, options = samplers.diffusers_class(name)
    return getattr(diffusers, class_name).from_config(base_config, **options)


def seed(scheduler: Any, value: int) -> None:
    """Seed a scheduler's own noise (DPM++ SDE's Brownian tree; the others take the request's generators)."""
    if hasattr(scheduler, "noise_sampler_seed"):
        scheduler.noise_sampler_seed = value
        scheduler.noise_sampler = None
