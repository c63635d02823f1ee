"""The fp16 VAE guard: a decode with NaN or inf is done again in float32, never shown as a black image.

A forward hook on the VAE's decoder records whether each decoded tile or image is finite (before
diffusers clamps it to [0, 1], which would hide an inf). If one was not, the final latents, taken
from the pipeline's ``callback_on_step_end``, are decoded again with the VAE cast to float32, as
diffusers' own pipelines decode them (scaling factor, SDXL's latents mean/std), tiling and slicing
included. A VAE that fails in float32 too is an error that says so.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from sdcompose.errors import ModelError


class Watch:
    """``with Watch(vae) as watch:`` ... ``watch.overflowed``: whether any decode had NaN or inf."""

    def __init__(self, vae: Any) -> None:
        self.vae = vae
        self._finite: list[torch.Tensor] = []
        self._handle = None

    def __enter__(self) -> "Watch":
        self._finite.clear()
        self._handle = self.vae.decoder.register_forward_hook(
            lambda _module, _args, output: self._finite.append(torch.isfinite(output).all()))
        return self

    def __exit__(self, *exc: Any) -> None:
        self._handle.remove()

    @property
    def overflowed(self) -> bool:
        return not all(bool(flag) for flag in self._finite)


def decode_fp32(pipe: Any, latents: torch.Tensor) -> np.ndarray:
    """Images (batch, height, width, 3) in [0, 1] from final latents, decoded by the VAE in float32."""
    vae = pipe.vae
    config = vae.config
    mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
    latents = latents.to(torch.float32)
    if mean is not None and std is not None:
        shape = (1, config.latent_channels, 1, 1)
        latents = latents * torch.tensor(std).view(shape).to(latents) / config.scaling_factor \
            + torch.tensor(mean).view(shape).to(latents)
    else:
        latents = latents / config.scaling_factor
    dtype = vae.dtype
    vae.to(dtype=torch.float32)
    try:
        image = vae.decode(latents, return_dict=False)[0]
    finally:
        vae.to(dtype=dtype)
    return pipe.image_processor.postprocess(image, output_type="np")


def checked(pipe: Any, watch: Watch, images: Any, latents: torch.Tensor | None) -> tuple[Any, str]:
    """The images to keep and how they were decoded; redoes an overflowed decode in float32."""
    dtype = str(pipe.vae.dtype).removeprefix("torch.")
    if not watch.overflowed:
        return images, dtype
    if pipe.vae.dtype == torch.float32 or latents is None:
        raise ModelError("the VAE decoded NaN/inf in float32: its weights are broken; use another VAE or model")
    with watch:
        images = decode_fp32(pipe, latents)
    if watch.overflowed:
        raise ModelError(f"the VAE decoded NaN/inf in {dtype} and again in float32: its weights are broken; "
                         "use another VAE or model")
    return images, f"float32 (the {dtype} decode had NaN/inf)"
