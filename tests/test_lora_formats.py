"""LoRA files as people have them: diffusers and kohya keys, several at once, load reports, refusals."""
from __future__ import annotations

import json
import pickle

import diffusers
import pytest
import torch
from safetensors.torch import save_file

import sdcompose
from conftest import max_diff

RANK = 4
KW = dict(prompt="a lighthouse", negative_prompt="blurry", model="local-sd15", width=64, height=64, steps=2, seed=3,
          scheduler="dpmpp_2m", guidance=6.0)
UNET_TARGETS = (".to_q", ".to_k", ".to_v", ".to_out.0")
TE_TARGETS = (".q_proj", ".k_proj", ".v_proj", ".out_proj", ".fc1", ".fc2")


def lora_layers(seed):
    """{(component, module name): (A, B)} for every attention projection of tiny-sd15 (and its text encoder).

    Read from a fresh load: the shared ``pipe`` may hold LoRA layers from earlier tests, which rename modules."""
    base = sdcompose.Pipeline(device="cpu").diffusers_pipeline("tiny-sd15")
    generator = torch.Generator().manual_seed(seed)
    layers = {}
    for component, targets in (("unet", UNET_TARGETS), ("text_encoder", TE_TARGETS)):
        for name, module in getattr(base, component).named_modules():
            if name.endswith(targets) and isinstance(module, torch.nn.Linear) and "lora" not in name:
                a = torch.randn(RANK, module.in_features, generator=generator) * 0.3
                b = torch.randn(module.out_features, RANK, generator=generator) * 0.3
                layers[(component, name)] = (a, b)
    return layers


def diffusers_file(layers, path):
    save_file({f"{c}.{n}.lora_{ab}.weight": t.contiguous() for (c, n), pair in layers.items()
               for ab, t in zip("AB", pair)}, path)


def kohya_name(component, name):
    return ("lora_unet_" if component == "unet" else "lora_te_") + name.replace(".", "_")


def kohya_file(layers, path, alpha=RANK / 2, extra=None):
    """kohya-ss keys; alpha/rank scales the product, so ``up`` is stored pre-multiplied by rank/alpha."""
    tensors = {}
    for (component, name), (a, b) in layers.items():
        key = kohya_name(component, name)
        tensors[f"{key}.lora_down.weight"] = a.contiguous()
        tensors[f"{key}.lora_up.weight"] = (b * RANK / alpha).contiguous()
        tensors[f"{key}.alpha"] = torch.tensor(alpha)
    save_file(tensors | (extra or {}), path)


def catalog(pipe, tmp_path, files, family="sd15"):
    """A Pipeline whose models.yaml adds the LoRA files, and tiny-sd15's folder as a local (non-test) base:
    test models only combine with test models, and these LoRA files are not test models."""
    root = pipe.catalog.root
    folder = root / "test-loras" / tmp_path.name
    folder.mkdir(parents=True, exist_ok=True)
    base = pipe.loader.path(pipe.catalog.get("tiny-sd15")).relative_to(root)
    entries = {"local-sd15": {"kind": "base", "family": "sd15", "path": str(base)}}
    for model_id, write in files.items():
        write(folder / f"{model_id}.safetensors")
        entries[model_id] = {"kind": "lora", "family": family,
                             "path": f"test-loras/{tmp_path.name}/{model_id}.safetensors"}
    overlay = tmp_path / "models.yaml"
    overlay.write_text(json.dumps({"version": 1, "models": entries}))
    return sdcompose.Pipeline(models=overlay, device="cpu")


def test_kohya_and_diffusers_files_make_the_same_image(pipe, tmp_path, capfd):
    layers = lora_layers(seed=1)
    ours = catalog(pipe, tmp_path, {"as-diffusers": lambda p: diffusers_file(layers, p),
                                    "as-kohya": lambda p: kohya_file(layers, p)})
    a = ours.generate(loras=[sdcompose.Lora("as-diffusers", 0.8)], **KW)
    b = ours.generate(loras=[sdcompose.Lora("as-kohya", 0.8)], **KW)
    assert max_diff(a.arrays[0], b.arrays[0]) <= 1e-5
    assert max_diff(a.arrays[0], ours.generate(**KW).arrays[0]) > 1e-3
    for result, kind in ((a, "diffusers"), (b, "kohya")):
        [report] = result.metadata["adapter_reports"]["lora"].values()
        assert report["format"] == kind and report["layers"] == len(layers) == report["applied"]
        assert report["skipped"] == 0 and report["fused"] and report["weight"] == 0.8
    assert "unexpected" not in capfd.readouterr().err  # a report, not warnings


def test_layers_the_base_lacks_are_counted_not_shouted(pipe, tmp_path, capfd):
    layers = lora_layers(seed=2)
    ghost = "lora_unet_down_blocks_7_attentions_0_transformer_blocks_0_attn1_to_q"
    extra = {f"{ghost}.lora_down.weight": torch.zeros(RANK, 64), f"{ghost}.lora_up.weight": torch.zeros(64, RANK),
             f"{ghost}.alpha": torch.tensor(2.0)}
    ours = catalog(pipe, tmp_path, {"with-ghost": lambda p: kohya_file(layers, p, extra=extra)})
    report = ours.generate(loras=[sdcompose.Lora("with-ghost")], **KW).metadata["adapter_reports"]["lora"]["with-ghost"]
    assert report["layers"] == len(layers) + 1 and report["applied"] == len(layers) and report["skipped"] == 1
    assert report["keys"] == 3 * (len(layers) + 1)
    assert "unexpected" not in capfd.readouterr().err


def test_several_loras_with_weights_match_plain_diffusers_unfused(pipe, tmp_path):
    first, second = lora_layers(seed=3), lora_layers(seed=4)
    ours = catalog(pipe, tmp_path, {"one": lambda p: diffusers_file(first, p),
                                    "two": lambda p: kohya_file(second, p)})
    result = ours.generate(loras=[sdcompose.Lora("one", 0.7), sdcompose.Lora("two", -0.4)], **KW)
    folder = pipe.catalog.root / "test-loras" / tmp_path.name
    reference = diffusers.StableDiffusionPipeline.from_pretrained(
        ours.loader.path(ours.catalog.get("local-sd15")), safety_checker=None, requires_safety_checker=False)
    reference.scheduler = diffusers.DPMSolverMultistepScheduler.from_config(
        reference.scheduler.config, algorithm_type="dpmsolver++", solver_order=2)
    reference.set_progress_bar_config(disable=True)
    reference.load_lora_weights(str(folder / "one.safetensors"), adapter_name="one")
    reference.load_lora_weights(str(folder / "two.safetensors"), adapter_name="two")
    reference.set_adapters(["one", "two"], adapter_weights=[0.7, -0.4])  # PEFT, not fused
    expected = reference(prompt=KW["prompt"], negative_prompt=KW["negative_prompt"], num_inference_steps=2,
                         guidance_scale=6.0, height=64, width=64, output_type="np",
                         generator=[torch.Generator("cpu").manual_seed(3)]).images[0]
    assert max_diff(result.arrays[0], expected) <= 1e-4  # fused vs unfused: equal within fp32 rounding
    assert all(r["fused"] for r in result.metadata["adapter_reports"]["lora"].values())


def test_lycoris_files_are_refused_in_one_sentence(pipe, tmp_path):
    key = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"
    tensors = {f"{key}.hada_w1_a": torch.zeros(64, 4), f"{key}.hada_w1_b": torch.zeros(4, 64),
               f"{key}.alpha": torch.tensor(4.0)}
    ours = catalog(pipe, tmp_path, {"loha": lambda p: save_file(tensors, p)})
    with pytest.raises(sdcompose.PluginError, match="lora 'loha' is a LyCORIS file .*plain LoRA only"):
        ours.generate(loras=[sdcompose.Lora("loha")], **KW)
    assert max_diff(ours.generate(**KW).arrays[0], pipe.generate(**(KW | {"model": "tiny-sd15"})).arrays[0]) == 0  # nothing stayed applied


def test_a_lora_of_another_family_is_refused_by_its_content(pipe, tmp_path):
    sdxl_file = pipe.loader.path(pipe.catalog.get("tiny-lora-sdxl"))  # an SDXL UNet's shapes, labelled sd15 below
    te2 = {"lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": torch.zeros(RANK, 32),
           "lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": torch.zeros(32, RANK)}
    ours = catalog(pipe, tmp_path, {"xl-shapes": lambda p: p.write_bytes(sdxl_file.read_bytes()),
                                    "xl-keys": lambda p: save_file(te2, p)})
    with pytest.raises(sdcompose.PluginError, match=r"lora 'xl-shapes' does not fit the sd15 base: layer unet\..*attn2"
                                                    r"\.to_k is \[64, 32\] in the base, the file's down/up matrices "
                                                    r"are \[4, 80\]/\[64, 4\]; is it a LoRA for another model family\?"):
        ours.generate(loras=[sdcompose.Lora("xl-shapes")], **KW)
    with pytest.raises(sdcompose.PluginError, match="lora 'xl-keys' has SDXL text-encoder weights but models.yaml "
                                                    "calls it sd15"):
        ours.generate(loras=[sdcompose.Lora("xl-keys")], **KW)
    assert max_diff(ours.generate(**KW).arrays[0], pipe.generate(**(KW | {"model": "tiny-sd15"})).arrays[0]) == 0


class _Sentinel:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        import pathlib
        return pathlib.Path.touch, (self.path,)


def test_a_pickle_named_safetensors_is_refused_without_running(pipe, tmp_path):
    sentinel = tmp_path / "pwned"
    ours = catalog(pipe, tmp_path, {"renamed": lambda p: p.write_bytes(pickle.dumps({"w": _Sentinel(sentinel)}))})
    with pytest.raises(sdcompose.ModelError, match="pickle"):
        ours.generate(loras=[sdcompose.Lora("renamed")], **KW)
    assert not sentinel.exists()
