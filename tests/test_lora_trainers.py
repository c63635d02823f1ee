"""LoRA files written by LyCORIS (kohya keys), applied by the LoRA plugin and compared with LyCORIS's own merge.

Each file is made on the tiny models with ``lycoris-lora``; the reference is the same file merged into
fresh weights by LyCORIS itself. The plugin's fused weights must equal it, layer for layer.
"""
from __future__ import annotations

import logging

import pytest
import torch
from safetensors.torch import load_file, save_file

import sdcompose
from sdcompose.plugins.api import PluginContext, Use

lycoris_kohya = pytest.importorskip("lycoris.kohya")


def fresh(model_id: str):
    return sdcompose.Pipeline(device="cpu").diffusers_pipeline(model_id)


def encoders(pipe):
    return [pipe.text_encoder, pipe.text_encoder_2] if getattr(pipe, "text_encoder_2", None) else pipe.text_encoder


def lycoris_file(model_id: str, path, algo="lora", preset="attn-mlp", **options) -> None:
    """A LyCORIS network on ``model_id`` with random (non-zero) weights, saved as kohya keys."""
    pipe = fresh(model_id)
    logging.disable(logging.WARNING)  # LyCORIS logs every module it wraps
    try:
        torch.manual_seed(7)
        net = lycoris_kohya.create_network(1.0, 4, 2, None, encoders(pipe), pipe.unet, algo=algo, preset=preset,
                                           **options)
        net.apply_to(encoders(pipe), pipe.unet, True, True)
        for name, param in net.named_parameters():
            if "dora_scale" in name:
                param.data *= 1 + 0.2 * torch.randn(param.shape)
            else:
                torch.nn.init.normal_(param, std=0.1)
        net.save_weights(str(path), torch.float32, {})
    finally:
        logging.disable(logging.NOTSET)


def lycoris_merged(model_id: str, path):
    """Fresh weights with the file merged by LyCORIS itself (weight 1)."""
    pipe = fresh(model_id)
    state = load_file(str(path))
    logging.disable(logging.WARNING)
    try:
        net, _ = lycoris_kohya.create_network_from_weights(1.0, str(path), None, encoders(pipe), pipe.unet, state)
        net.merge_to(encoders(pipe), pipe.unet, state, torch.float32, "cpu")
    finally:
        logging.disable(logging.NOTSET)
    return pipe


def applied(model_id: str, path, family: str):
    """The base with the file applied (fused) by the LoRA plugin, and the plugin's load report."""
    ours = sdcompose.Pipeline(device="cpu")
    pipe = ours.diffusers_pipeline(model_id)
    plugin = ours.registry.get("lora", "adapter")
    entry = ours.catalog.get(model_id).model_copy(update={"kind": "lora", "family": family})
    done = plugin.contribute(pipe, [Use("trained", path, entry, 1.0)], PluginContext(device="cpu", dtype=torch.float32))
    return pipe, done.report["trained"]


def weights(module) -> dict[str, torch.Tensor]:
    return {k.replace(".base_layer", ""): v.detach() for k, v in module.named_parameters() if "lora_" not in k}


def assert_same_weights(ours, reference, components) -> int:
    changed = 0
    plain = None
    for name in components:
        mine, theirs = weights(getattr(ours, name)), weights(getattr(reference, name))
        assert mine.keys() == theirs.keys()
        for key in theirs:
            assert torch.allclose(mine[key], theirs[key], atol=2e-6), f"{name}.{key}"
        if plain is None:
            plain = fresh("tiny-sdxl" if "text_encoder_2" in components else "tiny-sd15")
        changed += sum(not torch.equal(theirs[k], v.detach()) for k, v in getattr(plain, name).named_parameters())
    return changed


def test_locon_with_tucker_equals_lycoris_merge(tmp_path):
    path = tmp_path / "locon-tucker.safetensors"
    lycoris_file("tiny-sd15", path, algo="locon", preset="unet-convblock-only", use_tucker=True,
                 conv_dim=4)
    assert any(k.endswith(".lora_mid.weight") for k in load_file(str(path)))
    pipe, report = applied("tiny-sd15", path, "sd15")
    changed = assert_same_weights(pipe, lycoris_merged("tiny-sd15", path), ["unet"])
    assert changed > 10
    assert report["skipped"] == 0 and report["skipped_layers"] == []
    assert any("Tucker" in note for note in report["notes"])


def test_sdxl_add_embedding_layers_are_applied(tmp_path):
    path = tmp_path / "xl.safetensors"
    lycoris_file("tiny-sdxl", path)
    assert "lora_unet_add_embedding_linear_1.lora_down.weight" in load_file(str(path))
    pipe, report = applied("tiny-sdxl", path, "sdxl")
    assert_same_weights(pipe, lycoris_merged("tiny-sdxl", path), ["unet", "text_encoder", "text_encoder_2"])
    assert report["skipped_layers"] == [] and report["applied"] == report["layers"]


def test_dora_is_refused_whole_not_half_applied(tmp_path, pipe):
    path = tmp_path / "dora.safetensors"
    lycoris_file("tiny-sd15", path, dora_wd=True)
    ours = sdcompose.Pipeline(device="cpu")
    with pytest.raises(sdcompose.PluginError, match=r"lora 'trained' is a DoRA file \(\d+ layers .*refused"):
        applied("tiny-sd15", path, "sd15")
    base = ours.diffusers_pipeline("tiny-sd15")
    assert not any("lora" in name for name, _ in base.unet.named_parameters())  # nothing stayed loaded


def test_skipped_layers_are_named_with_the_reason(tmp_path):
    path = tmp_path / "ghost.safetensors"
    lycoris_file("tiny-sd15", path, preset="attn-only")
    state = load_file(str(path))
    ghost = "lora_unet_down_blocks_7_attentions_0_transformer_blocks_0_attn1_to_q"
    state |= {f"{ghost}.lora_down.weight": torch.zeros(4, 64), f"{ghost}.lora_up.weight": torch.zeros(64, 4),
              f"{ghost}.alpha": torch.tensor(2.0)}
    save_file(state, str(path))
    _, report = applied("tiny-sd15", path, "sd15")
    assert report["skipped"] == 1
    assert report["skipped_layers"] == ["unet.down_blocks.7.attentions.0.transformer_blocks.0.attn1.to_q: "
                                        "this sd15 base has no such layer"]


def test_a_shape_mismatch_is_one_line_and_silent(tmp_path, capfd):
    path = tmp_path / "xl-on-sd15.safetensors"
    lycoris_file("tiny-sdxl", path)
    state = {k: v for k, v in load_file(str(path)).items() if k.startswith("lora_unet_down_blocks_")}
    save_file(state, str(path))
    capfd.readouterr()
    with pytest.raises(sdcompose.PluginError) as info:
        applied("tiny-sd15", path, "sd15")
    message = str(info.value)
    assert "\n" not in message and "does not fit the sd15 base: layer unet." in message
    assert " in the base, the file's down/up matrices are [" in message
    assert capfd.readouterr().err == ""


def test_loha_and_lokr_are_refused_clearly(tmp_path):
    for algo in ("loha", "lokr"):
        path = tmp_path / f"{algo}.safetensors"
        lycoris_file("tiny-sd15", path, algo=algo, preset="attn-only")
        with pytest.raises(sdcompose.PluginError, match="is a LyCORIS file .*plain LoRA only"):
            applied("tiny-sd15", path, "sd15")
