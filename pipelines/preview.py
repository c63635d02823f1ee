"""Cheap step previews: the latents projected to RGB by a fixed linear map, no VAE decode.

The factors are each family's latent-to-RGB approximation (``Family.preview``), the ones other SD
front ends use for live previews; they cost one small matrix product per step.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from sdcompose.pipelines import families



def latents_to_image(latents: torch.Tensor, family: str, scale: int = 4) -> Image.Image:
    """The first image of a batch of latents (B, C, h, w) as an RGB preview, ``scale`` times larger."""
    weights, bias = families.get(family).preview
    first = latents[0].detach().float().cpu()
    rgb = torch.einsum("chw,cr->hwr", first, torch.tensor(weights)) + torch.tensor(bias)
    array = ((rgb.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    image = Image.fromarray(np.ascontiguousarray(array))
    return image.resize((image.width * scale, image.height * scale), Image.NEAREST)
