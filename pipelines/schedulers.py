"""Scheduler names users know, mapped to diffusers schedulers built from the model's own config."""
from __future__ import annotations

from typing import Any

CHOICES = {
    "ddim": ("DDIMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpmpp_2m_karras": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2,
                                                        "use_karras_sigmas": True}),
    "unipc": ("UniPCMultistepScheduler", {}),
}


def make(name: str, base_config: Any):
    """A new scheduler of the kind ``name``, from the model's own scheduler config."""
    import diffusers
    class_name, options = CHOICES[name]
    return getattr(diffusers, class_name).from_config(base_config, **options)
