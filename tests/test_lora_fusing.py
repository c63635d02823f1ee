"""LoRA fusing: kept while the set repeats, undone exactly when it changes, never leaking into other requests."""
from __future__ import annotations

import torch

import sdcompose
from conftest import max_diff

KW = dict(prompt="a harbour", model="tiny-sd15", width=64, height=64, steps=2, seed=21)


def fuse_counter(pipe):
    """Counts how often the LoRA plugin fuses (wrapping the plugin's own method)."""
    plugin = pipe.registry.get("lora")
    calls = []
    original = plugin._fuse
    plugin._fuse = lambda *a: calls.append(1) or original(*a)
    return calls


def targeted_weights(pipe):
    """A copy of the base weights of every layer the tiny LoRA adapts (attention projections of the UNet)."""
    unet = pipe.diffusers_pipeline("tiny-sd15").unet
    layers = {name: getattr(module, "base_layer", module) for name, module in unet.named_modules()
              if name.endswith(("attn1.to_q", "attn2.to_k"))}  # once LoRAs are loaded, PEFT wraps the Linear
    return {name: layer.weight.detach().clone() for name, layer in layers.items()}


def test_fused_while_the_set_repeats_and_restored_exactly_when_it_changes(home):
    pipe = sdcompose.Pipeline(device="cpu")
    plain = pipe.generate(**KW)
    untouched = targeted_weights(pipe)
    calls = fuse_counter(pipe)
    first = pipe.generate(loras=[sdcompose.Lora("tiny-lora-sd15", 0.8)], **KW)
    second = pipe.generate(loras=[sdcompose.Lora("tiny-lora-sd15", 0.8)], prompt="another prompt", seed=5,
                           **{k: v for k, v in KW.items() if k not in ("prompt", "seed")})
    third = pipe.generate(loras=[sdcompose.Lora("tiny-lora-sd15", 0.8)], **KW)
    assert len(calls) == 1  # fused once, then reused
    assert first.metadata["adapter_reports"]["lora"]["tiny-lora-sd15"]["fused"] and second.metadata["adapter_reports"]["lora"]
    assert max_diff(first.arrays[0], third.arrays[0]) == 0
    changed = pipe.generate(loras=[sdcompose.Lora("tiny-lora-sd15", 0.5)], **KW)
    assert len(calls) == 2  # another weight: unfused, fused again
    fresh = sdcompose.Pipeline(device="cpu").generate(loras=[sdcompose.Lora("tiny-lora-sd15", 0.5)], **KW)
    assert max_diff(changed.arrays[0], fresh.arrays[0]) == 0  # as if the 0.8 fuse never happened
    after = pipe.generate(**KW)
    assert max_diff(after.arrays[0], plain.arrays[0]) == 0  # a request without LoRA equals a fresh run
    assert after.metadata["adapter_reports"] == {}
    restored = targeted_weights(pipe)
    assert all(torch.equal(restored[name], weight) for name, weight in untouched.items())
    pipe.generate(loras=[sdcompose.Lora("tiny-lora-sd15", 0.5)], **KW)
    handed_out = targeted_weights(pipe)  # diffusers_pipeline() takes fused LoRAs off first
    assert all(torch.equal(handed_out[name], weight) for name, weight in untouched.items())


def test_repeated_fuse_and_unfuse_never_drift(home):
    pipe = sdcompose.Pipeline(device="cpu")
    untouched = targeted_weights(pipe)
    plain = pipe.generate(**KW)
    for weight in (1.0, -1.5, 2.0, 0.3, 4.0, -4.0):
        pipe.generate(loras=[sdcompose.Lora("tiny-lora-sd15", weight)], steps=1,
                      **{k: v for k, v in KW.items() if k != "steps"})
    assert max_diff(pipe.generate(**KW).arrays[0], plain.arrays[0]) == 0
    assert all(torch.equal(targeted_weights(pipe)[name], w) for name, w in untouched.items())


def test_sdxl_fuses_and_restores_too(pipe):
    kw = KW | {"model": "tiny-sdxl"}
    plain = pipe.generate(**kw)
    with_lora = pipe.generate(loras=[sdcompose.Lora("tiny-lora-sdxl", 0.9)], **kw)
    assert with_lora.metadata["adapter_reports"]["lora"]["tiny-lora-sdxl"]["fused"]
    assert max_diff(plain.arrays[0], with_lora.arrays[0]) > 1e-3
    assert max_diff(pipe.generate(**kw).arrays[0], plain.arrays[0]) == 0
