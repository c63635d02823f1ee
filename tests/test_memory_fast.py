"""Fast mode: when it runs, when it falls back (and says why), how calls are keyed; on CUDA, its images.

The CUDA tests replay tiny models through CUDA graphs and compare with default mode; they run
where a GPU is (``pytest -m gpu``) and are skipped elsewhere.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import sdcompose
from sdcompose.pipelines.fast import FastMode, _weights_token, signature, unfused_lora

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_cpu_request_runs_eager_and_says_why(pipe, photo):
    args = dict(model="tiny-sd15", controls=[sdcompose.Control("canny", image=photo)], width=64, height=64, steps=2,
                seed=9)
    fast = pipe.generate("a fox", fast=True, **args)
    assert fast.metadata["fast"] == {"active": False, "reason": "cpu: CUDA graphs need a CUDA device; ran eager"}
    assert np.array_equal(fast.arrays[0], pipe.generate("a fox", **args).arrays[0])
    assert pipe.generate("a fox", **args).metadata["fast"] == {"active": False, "reason": "off"}


def test_offload_plans_run_eager():
    assert "memory plan 'group_offload' moves weights" in FastMode.why_not("cuda", "group_offload", [])
    assert FastMode.why_not("cuda:1", "none", [torch.nn.Linear(2, 2)]) is None


def test_unfused_lora_is_seen_and_fused_is_not():
    own = sdcompose.Pipeline(device="cpu")  # its own modules: this test loads a LoRA by hand
    plain = own.diffusers_pipeline("tiny-sd15")
    assert not unfused_lora(plain.unet)
    plain.load_lora_weights(str(own.loader.path(own.catalog.get("tiny-lora-sd15"))), adapter_name="t")
    assert unfused_lora(plain.unet)
    assert "not fused" in FastMode.why_not("cuda", "none", [plain.unet])
    plain.fuse_lora(components=["unet"], adapter_names=["t"])
    assert not unfused_lora(plain.unet)
    plain.unfuse_lora(components=["unet"])
    plain.disable_lora()
    assert not unfused_lora(plain.unet)


def test_calls_are_keyed_by_shapes_not_by_per_step_values():
    x = torch.zeros(2, 4, 8, 8)
    key = lambda *args, **kwargs: signature(args, kwargs)[0]
    base = key(x, torch.tensor(999), conditioning_scale=1.0, guess_mode=False)
    assert key(torch.ones(2, 4, 8, 8), torch.tensor(1), conditioning_scale=0.0, guess_mode=False) == base
    assert key(torch.zeros(2, 4, 16, 16), torch.tensor(999), conditioning_scale=1.0, guess_mode=False) != base
    assert key(x, torch.tensor(999), conditioning_scale=1.0, guess_mode=True) != base
    assert key(x.half(), torch.tensor(999), conditioning_scale=1.0, guess_mode=False) != base


def test_weights_token_follows_storage_not_values():
    layer = torch.nn.Linear(4, 4)
    token = _weights_token(layer)
    with torch.no_grad():
        layer.weight.add_(1.0)  # a fused LoRA changes weights in place: captured graphs stay valid
    assert _weights_token(layer) == token
    layer.to(torch.float64)  # new storage: graphs must be captured again
    assert _weights_token(layer) != token


# ---- on a CUDA GPU -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gpu():
    return sdcompose.Pipeline(device="cuda")


def pair(gpu, compile_: bool, **kw):
    """(default image, fast image, fast report, second fast report) for one request."""
    gpu.fast_mode.compile = compile_
    args = dict(model="tiny-sd15", width=64, height=64, steps=4, seed=1, guidance=6.0) | kw
    default = gpu.generate("a red fox", **args)
    fast = gpu.generate("a red fox", fast=True, **args)
    again = gpu.generate("a red fox", fast=True, **args)
    assert np.array_equal(np.stack(fast.arrays), np.stack(again.arrays)), "replays are deterministic"
    diff = float(np.abs(np.stack(fast.arrays) - np.stack(default.arrays)).max())
    return diff, fast.metadata["fast"], again.metadata["fast"]


@pytest.mark.gpu
@cuda
def test_graphs_replay_equals_default_with_a_controlnet_window(gpu, photo):
    control = sdcompose.Control("canny", image=photo, weight=0.8, start=0.2, end=0.6)  # scale changes per step
    diff, first, second = pair(gpu, False, controls=[control], batch=2)
    assert first["active"] and first["captured"] == 2 and second["captured"] == 0  # UNet + ControlNet, once
    assert diff <= 2e-3


@pytest.mark.gpu
@cuda
def test_one_controlnet_used_twice_in_a_step(gpu, photo):
    controls = [sdcompose.Control("canny", image=photo), sdcompose.Control("canny", image=photo, weight=0.5,
                                                                           params={"low_threshold": 50})]
    diff, first, _ = pair(gpu, False, controls=controls)
    assert first["captured"] == 2 and first["eager_calls"] == 0  # one ControlNet module, one UNet
    assert diff <= 2e-3


@pytest.mark.gpu
@cuda
def test_fused_lora_and_sdxl(gpu, photo):
    diff, first, _ = pair(gpu, False, loras=[sdcompose.Lora("tiny-lora-sd15", 0.8)])
    assert first["active"] and diff <= 2e-3
    diff, first, _ = pair(gpu, False, model="tiny-sdxl", controls=[sdcompose.Control("canny", image=photo)])
    assert first["active"] and diff <= 2e-3


@pytest.mark.gpu
@cuda
def test_compiled_graphs_equal_default_within_fp16_tolerance(gpu, photo):
    diff, first, _ = pair(gpu, True, controls=[sdcompose.Control("canny", image=photo)])
    assert first["active"] and first["compiled"], first["reason"]
    assert diff <= 2e-2
