"""Memory modes and the VAE guard on a CUDA GPU (``pytest -m gpu``; skipped elsewhere)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import sdcompose
from test_vae_guard import overflowing_model

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture(scope="module")
def gpu():
    return sdcompose.Pipeline(device="cuda")


def test_every_mode_gives_the_default_image_and_gives_memory_back(gpu, photo):
    args = dict(model="tiny-sd15", controls=[sdcompose.Control("canny", image=photo)], width=64, height=64,
                steps=3, seed=4, batch=2)
    default = np.stack(gpu.generate("a fox", memory="none", **args).arrays)
    for mode in ("group_offload", "model_offload", "sequential_offload", "vae_slicing", "none"):
        result = gpu.generate("a fox", memory=mode, **args)
        assert result.metadata["memory_plan"]["mode"] == mode
        assert np.abs(np.stack(result.arrays) - default).max() <= 1e-3, mode
    unet = gpu.cache.components("tiny-sd15")["unet"]
    assert next(unet.parameters()).is_cuda and not hasattr(unet, "_hf_hook")


def test_auto_plans_for_the_card_or_the_given_budget(gpu):
    free = gpu.generate("a fox", model="tiny-sd15", width=64, height=64, steps=1).metadata["memory_plan"]
    assert free["mode"] == "none" and free["budget_gb"] > 0 and "everything fits" in free["reason"]
    capped = gpu.generate("a fox", model="tiny-sd15", width=64, height=64, steps=1, vram="1GB")
    assert capped.metadata["memory_plan"]["budget_gb"] == 1.0


def test_fp16_vae_overflow_on_cuda_is_decoded_in_fp32(gpu, home):
    overlay = overflowing_model(gpu, home, "vae-overflow-fp16", 1e5)
    half = sdcompose.Pipeline(models=overlay, device="cuda")
    result = half.generate("a fox", model="vae-overflow-fp16", width=64, height=64, steps=2, seed=2)
    assert np.isfinite(result.arrays[0]).all() and result.arrays[0].std() > 0.01
    assert result.metadata["vae_decode"] == "float32 (the float16 decode had NaN/inf)"
