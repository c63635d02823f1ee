"""Sampler ids, AUTOMATIC1111's sampler and schedule-type names, and the diffusers scheduler behind each.

Pure data (diffusers is imported only by ``pipelines/schedulers.py``). An id is a sampler, optionally followed
by a schedule type: ``dpmpp_2m``, ``dpmpp_2m_karras``, ``euler_sgm_uniform``. A1111's names are accepted
wherever an id is (``"DPM++ 2M SDE"``, ``"DPM++ 2M Karras"``, or a sampler plus ``Schedule type``), and
``to_a1111`` gives the names A1111 writes in its infotext. The table is in docs/samplers.md.
"""
from __future__ import annotations

from sdcompose.errors import ValidationError, suggest

# id: (A1111 sampler name, diffusers class, options, whether the sigma schedules below apply)
SAMPLERS: dict[str, tuple[str, str, dict, bool]] = {
    "euler": ("Euler", "EulerDiscreteScheduler", {}, True),
    "euler_a": ("Euler a", "EulerAncestralDiscreteScheduler", {}, False),
    "heun": ("Heun", "HeunDiscreteScheduler", {}, True),
    "lms": ("LMS", "LMSDiscreteScheduler", {}, True),
    "dpm2": ("DPM2", "KDPM2DiscreteScheduler", {}, True),
    "dpm2_a": ("DPM2 a", "KDPM2AncestralDiscreteScheduler", {}, True),
    "dpmpp_2m": ("DPM++ 2M", "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}, True),
    "dpmpp_2m_sde": ("DPM++ 2M SDE", "DPMSolverMultistepScheduler",
                     {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}, True),
    "dpmpp_sde": ("DPM++ SDE", "DPMSolverSDEScheduler", {}, True),
    "ddim": ("DDIM", "DDIMScheduler", {}, False),
    "unipc": ("UniPC", "UniPCMultistepScheduler", {}, True),
    "lcm": ("LCM", "LCMScheduler", {}, False),
    "tcd": ("TCD", "TCDScheduler", {}, False),
}
# schedule id: (A1111 schedule type, scheduler options). "" is the model's own timestep spacing.
SCHEDULES: dict[str, tuple[str, dict]] = {
    "": ("Uniform", {}),
    "karras": ("Karras", {"use_karras_sigmas": True}),
    "exponential": ("Exponential", {"use_exponential_sigmas": True}),
    "sgm_uniform": ("SGM Uniform", {"timestep_spacing": "trailing"}),
}
# A1111 >= 1.9 "Automatic" schedule: what A1111 itself picks for these samplers (the rest: uniform)
AUTOMATIC_KARRAS = ("dpmpp_2m", "dpmpp_2m_sde", "dpmpp_sde", "dpm2", "dpm2_a")

IDS: tuple[str, ...] = tuple(
    name + (f"_{schedule}" if schedule else "")
    for name, (_, _, _, sigmas) in SAMPLERS.items() for schedule in SCHEDULES if sigmas or not schedule)


def split(sampler_id: str) -> tuple[str, str]:
    """(sampler, schedule) of a valid id: ``dpmpp_2m_sde_karras`` -> ("dpmpp_2m_sde", "karras")."""
    for name in sorted(SAMPLERS, key=len, reverse=True):
        if sampler_id == name:
            return name, ""
        if sampler_id.startswith(name + "_") and sampler_id[len(name) + 1:] in SCHEDULES:
            return name, sampler_id[len(name) + 1:]
    raise KeyError(sampler_id)


# The few-step samplers pick their steps out of the distilled model's original schedule (diffusers'
# ``original_inference_steps``, 50): more steps than that schedule holds (times the strength) cannot run.
FEW_STEP_SCHEDULE = {"lcm": 50, "tcd": 50}


def check_steps(sampler_id: str, steps: int, strength: float, what: str = "steps") -> None:
    """ValidationError if ``sampler_id`` (a valid id) cannot run ``steps`` steps at ``strength``."""
    name = split(sampler_id)[0]
    schedule = FEW_STEP_SCHEDULE.get(name)
    if schedule is not None and steps > int(schedule * strength):
        at = "" if strength == 1 else f" at strength {strength:g}"
        raise ValidationError(f"{what} {steps} is too many for the {name} sampler: it takes at most "
                              f"{int(schedule * strength)}{at} (its schedule holds {schedule}; 4 to 8 is usual)")


def canonical(name: object, schedule: str | None = None) -> str:
    """The id for an id or an A1111 sampler name (with an optional A1111 schedule type); one sentence otherwise."""
    if not isinstance(name, str) or not name.strip():
        raise ValidationError(f"scheduler must be a sampler name such as dpmpp_2m or 'DPM++ 2M', got {name!r:.60}")
    text = name.strip()
    if schedule is None and text in IDS:
        return text
    sampler, sched = _sampler_of(text)
    schedule = (schedule or "").strip()
    if schedule.lower() == "automatic":
        sched = sched or ("karras" if sampler in AUTOMATIC_KARRAS else "")  # what A1111 picks itself
    elif schedule:
        sched = _schedule_of(schedule)
    result = sampler + (f"_{sched}" if sched else "")
    if result not in IDS:
        raise ValidationError(f"sampler {SAMPLERS[sampler][0]!r} has its own schedule; it does not take "
                              f"{SCHEDULES[sched][0]!r}")
    return result


def to_a1111(sampler_id: str) -> tuple[str, str]:
    """(A1111 sampler name, A1111 schedule type) for an id."""
    sampler, schedule = split(sampler_id)
    return SAMPLERS[sampler][0], SCHEDULES[schedule][0]


def diffusers_class(sampler_id: str) -> tuple[str, dict]:
    """The diffusers scheduler class name and the options that make this sampler and schedule."""
    sampler, schedule = split(sampler_id)
    _, class_name, options, _ = SAMPLERS[sampler]
    return class_name, {**options, **SCHEDULES[schedule][1]}


def _key(text: str) -> str:
    return " ".join(text.lower().replace("_", " ").split())


def _sampler_of(text: str) -> tuple[str, str]:
    """An id, an A1111 sampler name, or an old combined one ("DPM++ 2M Karras") -> (sampler, schedule)."""
    try:
        return split(text)
    except KeyError:
        pass
    key = _key(text)
    by_name = {_key(a1111): sampler for sampler, (a1111, *_rest) in SAMPLERS.items()}
    if key in by_name:
        return by_name[key], ""
    for sched, (label, _) in SCHEDULES.items():
        suffix = " " + _key(label)
        if sched and key.endswith(suffix) and key[:-len(suffix)] in by_name:
            return by_name[key[:-len(suffix)]], sched
    names = list(IDS) + [a1111 for a1111, *_rest in SAMPLERS.values()]
    raise ValidationError(f"scheduler {text!r:.60} is not one of the samplers (ids: {', '.join(SAMPLERS)}; "
                          f"or A1111's names, see docs/samplers.md){suggest(text, names)}")


def _schedule_of(text: str) -> str:
    key = _key(text)
    for sched, (label, _) in SCHEDULES.items():
        if key in (_key(label), _key(sched)) and sched:
            return sched
    if key == "uniform":
        return ""
    labels = [label for label, _ in SCHEDULES.values()]
    raise ValidationError(f"schedule type {text!r:.60} is not one of Automatic, {', '.join(labels)}"
                          f"{suggest(text, labels)}")
