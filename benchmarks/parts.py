"""Full-size SD1.5 / SDXL parts with random weights, saved as diffusers folders under the models root.

The architectures come from the configs sdcompose ships (``pipelines/configs``), so the parts have
the real shapes and cost of the published models; a step's time and memory do not depend on the
weights' values. The folders load through sdcompose's own loader (a models.yaml overlay names them)
and through plain diffusers alike.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import torch

from sdcompose.pipelines.catalog import CONFIGS


def _base(family: str, folder: Path, device: str, dtype: torch.dtype):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection
    config = CONFIGS / family
    shutil.copytree(config, folder, dirs_exist_ok=True)  # model_index, scheduler, tokenizers, configs
    with torch.device(device):
        parts = {"unet": UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(config / "unet")),
                 "vae": AutoencoderKL.from_config(AutoencoderKL.load_config(config / "vae")),
                 "text_encoder": CLIPTextModel(CLIPTextConfig.from_pretrained(config / "text_encoder"))}
        if family == "sdxl":
            parts["text_encoder_2"] = CLIPTextModelWithProjection(
                CLIPTextConfig.from_pretrained(config / "text_encoder_2"))
    for name, module in parts.items():
        module.to(dtype).save_pretrained(folder / name, safe_serialization=True)
    return parts["unet"]


def _controlnet(unet, folder: Path, dtype: torch.dtype) -> None:
    from diffusers import ControlNetModel
    with torch.device(unet.device):
        controlnet = ControlNetModel.from_unet(unet)
    for name, param in controlnet.named_parameters():  # trained zero-convolutions are not zero
        if name.startswith(("controlnet_down_blocks", "controlnet_mid_block")):
            torch.nn.init.normal_(param, std=0.01)
    controlnet.to(dtype).save_pretrained(folder, safe_serialization=True)


def _lora(unet, folder: Path, rank: int, seed: int) -> None:
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig, get_peft_model_state_dict
    torch.manual_seed(seed)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                target_modules=["to_q", "to_k", "to_v", "to_out.0"]), adapter_name="bench")
    for name, param in unet.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=1e-3)
    layers = get_peft_model_state_dict(unet, adapter_name="bench")
    StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=layers, safe_serialization=True)
    unet.delete_adapters("bench")


def build(root: Path, family: str, device: str, dtype: torch.dtype, controlnets: int = 1, loras: int = 0) -> dict:
    """Write ``bench-<family>`` (+ ControlNets, LoRAs) under ``root`` once; return their models.yaml entries."""
    folder = root / "bench" / family
    entries = {f"bench-{family}": {"kind": "base", "family": family, "path": f"bench/{family}/base"}}
    entries.update({f"bench-{family}-cn{i}": {"kind": "controlnet", "family": family, "path": f"bench/{family}/cn{i}"}
                    for i in range(controlnets)})
    entries.update({f"bench-{family}-lora{i}": {"kind": "lora", "family": family, "path": f"bench/{family}/lora{i}",
                                                "filename": "pytorch_lora_weights.safetensors"} for i in range(loras)})
    done = folder / ".complete"
    if not done.is_file():
        torch.manual_seed(0)
        unet = _base(family, folder / "base", device, dtype)
        for i in range(controlnets):
            _controlnet(unet, folder / f"cn{i}", dtype)
        for i in range(loras):
            _lora(unet, folder / f"lora{i}", rank=64, seed=i)
        del unet
        done.write_text("random weights for benchmarks\n")
    return entries


def overlay(path: Path, entries: dict) -> Path:
    """A models.yaml naming ``entries`` (plain YAML: ids, kinds, families, relative paths)."""
    lines = ["version: 1", "models:"]
    for model_id, entry in entries.items():
        lines.append(f"  {model_id}:")
        lines += [f"    {key}: {value}" for key, value in entry.items()]
    path.write_text("\n".join(lines) + "\n")
    return path
