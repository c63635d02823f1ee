"""The fp16 VAE guard: an overflowing float16 decode is redone in float32, through the real pipeline.

The test model is tiny-sd15 with its VAE decoder's first convolution scaled by 1e5: in float16 the
decoder's activations overflow to inf (then NaN after its group norms); in float32 they stay finite
and the group norms bring them back to image range. Scaled by 1e36 it overflows in float32 as well.
"""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

import sdcompose


def overflowing_model(pipe, home, name: str, scale: float) -> str:
    """A copy of tiny-sd15 whose VAE decoder overflows; returns a models.yaml overlay naming it."""
    from diffusers import AutoencoderKL
    root = pipe.catalog.root / name
    if not root.exists():
        shutil.copytree(pipe.loader.path(pipe.catalog.get("tiny-sd15")), root)
        vae = AutoencoderKL.from_pretrained(root / "vae")
        with torch.no_grad():
            vae.decoder.conv_in.weight.mul_(scale)
            vae.decoder.conv_in.bias.mul_(scale)
        vae.save_pretrained(root / "vae", safe_serialization=True)
    overlay = home / f"{name}.yaml"
    overlay.write_text(f"version: 1\nmodels:\n  {name}:\n    kind: base\n    family: sd15\n    path: {name}\n")
    return str(overlay)


def test_fp16_overflow_is_decoded_again_in_fp32(pipe, home):
    overlay = overflowing_model(pipe, home, "vae-overflow-fp16", 1e5)
    half = sdcompose.Pipeline(models=overlay, device="cpu", dtype="float16")
    plain = half.diffusers_pipeline("vae-overflow-fp16")
    broken = plain("a fox", num_inference_steps=2, height=64, width=64, output_type="np",
                   generator=torch.Generator("cpu").manual_seed(2)).images
    assert np.isnan(broken).any(), "plain diffusers returns NaN (a black image once saved) for this model"

    result = half.generate("a fox", model="vae-overflow-fp16", width=64, height=64, steps=2, seed=2)
    image = result.arrays[0]
    assert np.isfinite(image).all()
    assert image.std() > 0.01, "not a flat (black or white) image"
    assert result.metadata["vae_decode"] == "float32 (the float16 decode had NaN/inf)"
    assert half.cache.components("vae-overflow-fp16")["vae"].dtype == torch.float16, "the VAE goes back to float16"


def test_normal_decode_is_left_alone(pipe):
    result = pipe.generate("a fox", model="tiny-sd15", width=64, height=64, steps=2, seed=2)
    assert result.metadata["vae_decode"] == "float32"


def test_a_vae_that_fails_in_fp32_too_is_a_clear_error(pipe, home):
    overlay = overflowing_model(pipe, home, "vae-overflow-fp32", 1e36)
    full = sdcompose.Pipeline(models=overlay, device="cpu")
    with pytest.raises(sdcompose.ModelError, match="NaN/inf in float32: its weights are broken"):
        full.generate("a fox", model="vae-overflow-fp32", width=64, height=64, steps=2, seed=2)
