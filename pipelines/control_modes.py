"""Per-unit control modes: how a ControlNet's residuals are weighed against the prompt.

Plain diffusers applies every ControlNet residual at the unit's weight to both halves of the
classifier-free-guidance batch ("balanced"). sd-webui-controlnet adds two more modes, reproduced here:

- ``balanced``: residuals at full weight on the conditional and unconditional batch (diffusers' default).
- ``prompt_first`` ("My prompt is more important"): soft injection. Residual ``i`` of ``n``
  (shallowest first, the mid-block residual last) is scaled by ``0.825 ** (n - 1 - i)``, so the deep,
  semantic residuals keep their weight and the shallow, detailed ones fade (to about 0.1 for SD1.5's
  13 residuals): the prompt gets more room.
- ``control_first`` ("ControlNet is more important"): soft injection as above, and the residuals are
  added to the conditional half of the batch only. Guidance then pushes the image away from the
  uncontrolled prediction, so the ControlNet's effect grows with ``guidance_scale``. Without
  classifier-free guidance (``guidance_scale <= 1``) it equals ``prompt_first``.

A mode lives in :class:`ModedControlNet`, a module that wraps a loaded ``ControlNetModel`` (sharing
its weights) and rescales what it returns; diffusers itself is not patched. ``build`` puts the
wrappers in a ``MultiControlNetModel``, which diffusers' pipelines accept as they are.
"""
from __future__ import annotations

import weakref
from typing import Any

import torch

from sdcompose.request import CONTROL_MODES as MODES
SOFT = 0.825  # sd-webui-controlnet's soft-injection base


def soft_scales(count: int) -> list[float]:
    """Scale of each of ``count`` residuals (shallowest first, mid block last) under soft injection."""
    return [SOFT ** (count - 1 - i) for i in range(count)]


class ModedControlNet(torch.nn.Module):
    """A ControlNet whose returned residuals follow a control mode; the weights stay the wrapped model's."""

    def __init__(self, controlnet: Any, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"control mode {mode!r} is not one of {', '.join(MODES)}")
        super().__init__()
        self.controlnet = controlnet
        self.mode = mode
        self._pipe: Any = None

    @property
    def config(self) -> Any:
        return self.controlnet.config

    def bind(self, pipe: Any) -> None:
        """Read classifier-free guidance from ``pipe`` while it runs (held weakly)."""
        self._pipe = weakref.ref(pipe)

    def _guided(self) -> bool:
        pipe = self._pipe() if self._pipe is not None else None
        return bool(pipe is not None and getattr(pipe, "do_classifier_free_guidance", False))

    def forward(self, *args: Any, **kwargs: Any) -> tuple[list[torch.Tensor], torch.Tensor]:
        kwargs["return_dict"] = False
        down, mid = self.controlnet(*args, **kwargs)
        if self.mode == "balanced":
            return down, mid
        scales = soft_scales(len(down) + 1)
        down = [sample * scale for sample, scale in zip(down, scales)]
        mid = mid * scales[-1]
        if self.mode == "control_first" and self._guided():
            keep = torch.ones(mid.shape[0], 1, 1, 1, dtype=mid.dtype, device=mid.device)
            keep[: mid.shape[0] // 2] = 0  # diffusers batches [unconditional, conditional]
            down = [sample * keep for sample in down]
            mid = mid * keep
        return down, mid


def wrap(controlnets: list[Any], modes: list[str]) -> list[ModedControlNet]:
    return [ModedControlNet(net, mode) for net, mode in zip(controlnets, modes, strict=True)]
