"""Cheap step previews: the latents projected to RGB by a fixed linear map, no VAE decode.

The factors are the per-family latent-to-RGB approximations other SD front ends use for live
previews; they cost one small matrix product per step.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

FACTORS = {
    "sd15": ([[0.3512, 0.2297, 0.3227], [0.3250, 0.4974, 0.2350], [-0.2829, 0.1762, 0.2721],
              [-0.2120, -0.2616, -0.7177]], [0.0, 0.0, 0.0]),
    "sdxl": ([[0.3651, 0.4232, 0.4341], [-0.2533, -0.0042, 0.1068], [0.1076, 0.1111, -0.0362],
              [-0.3165, -0.2492, -0.2188]], [0.1084, -0.0175, -0.0011]),
}


def latents_to_image(latents: torch.Tensor, family: str, scale: int = 4) -> Image.Image:
    """The first image of a batch of latents (B, 4, h, w) as an RGB preview, ``scale`` times larger."""
    weights, bias = FACTORS[family]
    first = latents[0].detach().float().cpu()
    rgb = torch.einsum("chw,cr->hwr", first, torch.tensor(weights)) + torch.tensor(bias)
    array = ((rgb.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    image = Image.fromarray(np.ascontiguousarray(array))
    return image.resize((image.width * scale, image.height * scale), Image.NEAREST)
