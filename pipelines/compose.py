"""Which diffusers pipeline serves a (family, task, ControlNets) composition, and its call arguments.

The composer only wires diffusers' own pipelines together from already-loaded modules;
it never patches them, so ``Pipeline.diffusers_pipeline`` hands power users exactly what runs.
"""
from __future__ import annotations

import inspect
from typing import Any

from sdcompose.pipelines import families


def build(family: str, task: str, components: dict[str, Any], controlnets: list[Any], control_modes: list[str] = (),
          adapters: bool = False):
    """A diffusers pipeline over shared modules (no copies), progress bar off; with ``adapters``, ``controlnets``
    are T2I-Adapters and the family's adapter pipeline runs them (one, or a ``MultiAdapter``).

    A unit whose control mode is not ``balanced`` makes every unit a ``ModedControlNet`` in a
    ``MultiControlNetModel`` (see control_modes.py).
    """
    spec = families.get(family)
    cls = spec.adapter_pipeline_class(task) if adapters else spec.pipeline_class(task, bool(controlnets))
    accepted = inspect.signature(cls.__init__).parameters
    kwargs = {name: components.get(name) for name in accepted if name != "self"
              and accepted[name].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
              and (name in components or accepted[name].default is inspect.Parameter.empty)}
    for flag in ("requires_safety_checker", "add_watermarker"):  # no checker to require; no invisible watermark
        if flag in accepted:
            kwargs[flag] = False
    moded = not adapters and any(mode != "balanced" for mode in control_modes)
    if adapters:
        kwargs["adapter"] = controlnets[0] if len(controlnets) == 1 else spec.multi_adapter()(controlnets)
        controlnets = []
    if moded:
        from sdcompose.pipelines.control_modes import wrap
        controlnets = wrap(controlnets, list(control_modes))
    if controlnets:
        kwargs["controlnet"] = controlnets[0] if len(controlnets) == 1 and not moded else \
            spec.multi_controlnet()(controlnets)
    pipe = cls(**kwargs)
    pipe.set_progress_bar_config(disable=True)
    for net in controlnets if moded else ():
        net.bind(pipe)
    return pipe


def call_arguments(pipe: Any, req: Any, control_maps: list[Any], init: Any, mask: Any,
                   generators: list[Any], controls: list[Any], prompt: str | None = None, *,
                   family: str, negative: str | None = None, embeddings: dict[str, Any] | None = None) -> dict[str, Any]:
    """Keyword arguments for ``pipe(...)``, with diffusers' own names (the control image's: ``family``'s).

    ``prompt``/``negative``: the texts to encode (default ``req.prompt``/``req.negative_prompt``), LoRA tags already
    taken out; ``embeddings``: the textual inversions they name (``embeddings.load``). Emphasis, BREAK, embeddings
    and long prompts become ``prompt_embeds`` (prompt_encode.py), so call this with the text encoders placed.
    """
    from sdcompose.pipelines import prompt_encode
    text = req.prompt if prompt is None else prompt
    negative = req.negative_prompt if negative is None else negative
    kw: dict[str, Any] = prompt_encode.arguments(pipe, text, negative, req.prompt_syntax, req.clip_skip,
                                                 embeddings=embeddings)
    kw.update(num_inference_steps=req.steps, guidance_scale=req.guidance,
                              num_images_per_prompt=req.batch, generator=generators, output_type="np",
                              height=req.height, width=req.width)
    if init is not None:
        kw.update(image=init, strength=req.strength)
    if mask is not None:
        kw["mask_image"] = mask
    if control_maps and hasattr(pipe, "adapter"):
        from sdcompose.pipelines import t2i
        kw.update(t2i.call_arguments(pipe, control_maps, controls))
    elif control_maps:
        single = not hasattr(pipe.controlnet, "nets")  # one plain ControlNet, not a MultiControlNetModel
        kw[families.get(family).control_image_args[req.task]] = control_maps[0] if single else control_maps
        kw["controlnet_conditioning_scale"] = controls[0].weight if single else [c.weight for c in controls]
        kw["control_guidance_start"] = controls[0].start if single else [c.start for c in controls]
        kw["control_guidance_end"] = controls[0].end if single else [c.end for c in controls]
    accepted = inspect.signature(pipe.__call__).parameters
    for name in ("height", "width"):  # img2img pipelines take the size from the init image
        if name not in accepted:
            del kw[name]
    return kw
