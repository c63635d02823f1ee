"""Test helper: write a diffusers-format model folder as one ``.safetensors`` in the original layout.

The original (LDM / CompVis) layout is what people download as single files:
``model.diffusion_model.*`` (UNet), ``first_stage_model.*`` (VAE), ``cond_stage_model.transformer.*``
(CLIP text encoder) for SD1.5; ``conditioner.embedders.0.transformer.*`` (CLIP-L) and
``conditioner.embedders.1.model.*`` (OpenCLIP-G) for SDXL; ``control_model.*`` for a ControlNet.
The mapping is the inverse of the one diffusers' single-file loader applies, so a round trip
through ``from_single_file`` must give back the very same weights.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
               "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
UNET_FIXED = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
              "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
              "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
CLIP_TO_OPENCLIP = [("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"),
                    ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")]


class UnmappedKey(KeyError):
    """A diffusers key the exporter has no rule for: the export would silently drop weights."""


def _split(rest: str, names: dict[str, str]) -> str:
    """Rename the leading module of ``rest`` (``norm1.weight`` -> ``in_layers.0.weight``)."""
    for old, new in names.items():
        if rest.startswith(old + "."):
            return new + rest[len(old):]
    return rest


def _fixed(key: str, table: dict[str, str]) -> str | None:
    module, _, leaf = key.rpartition(".")
    return f"{table[module]}.{leaf}" if module in table else None


def unet_keys(state: dict[str, torch.Tensor], layers_per_block: int, controlnet: bool = False) -> dict[str, str]:
    """diffusers UNet / ControlNet key -> original key (without the model prefix)."""
    span = layers_per_block + 1  # slots per level: L resnets + a downsampler going down, L + 1 resnets going up
    hint_blocks = len({k.split(".")[2] for k in state if k.startswith("controlnet_cond_embedding.blocks.")})
    out = {}
    for key in state:
        ldm = _fixed(key, UNET_FIXED)
        if m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
            block, part, layer, rest = int(m[1]), m[2], int(m[3]), m[4]
            index = 1 + block * span + layer
            ldm = f"input_blocks.{index}.0.{_split(rest, UNET_RESNET)}" if part == "resnets" \
                else f"input_blocks.{index}.1.{rest}"
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
            ldm = f"input_blocks.{1 + int(m[1]) * span + layers_per_block}.0.op.{m[2]}"
        elif m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", key):
            ldm = f"middle_block.{2 * int(m[1])}.{_split(m[2], UNET_RESNET)}"
        elif m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
            ldm = f"middle_block.1.{m[1]}"
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
            block, part, layer, rest = int(m[1]), m[2], int(m[3]), m[4]
            index = block * span + layer
            ldm = f"output_blocks.{index}.0.{_split(rest, UNET_RESNET)}" if part == "resnets" \
                else f"output_blocks.{index}.1.{rest}"
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
            block = int(m[1])
            slot = 2 if any(k.startswith(f"up_blocks.{block}.attentions.") for k in state) else 1
            ldm = f"output_blocks.{block * span + layers_per_block}.{slot}.conv.{m[2]}"
        elif controlnet and (m := re.fullmatch(r"controlnet_down_blocks\.(\d+)\.(.+)", key)):
            ldm = f"zero_convs.{m[1]}.0.{m[2]}"
        elif controlnet and (m := re.fullmatch(r"controlnet_mid_block\.(.+)", key)):
            ldm = f"middle_block_out.0.{m[1]}"
        elif controlnet and (m := re.fullmatch(r"controlnet_cond_embedding\.(conv_in|conv_out|blocks\.\d+)\.(.+)",
                                               key)):
            # input_hint_block is a Sequential of conv, SiLU, conv, SiLU, ...: convs sit at even indices.
            index = 0 if m[1] == "conv_in" else 2 * (hint_blocks + 1) if m[1] == "conv_out" \
                else 2 * (int(m[1].split(".")[1]) + 1)
            ldm = f"input_hint_block.{index}.{m[2]}"
        if ldm is None:
            raise UnmappedKey(f"no original-layout name for UNet key {key!r}")
        out[key] = ldm
    return out


def vae_keys(state: dict[str, torch.Tensor], up_blocks: int) -> dict[str, str]:
    """diffusers AutoencoderKL key -> original key (without ``first_stage_model.``)."""
    out = {}
    for key in state:
        ldm = None
        if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            ldm = f"encoder.down.{m[1]}.block.{m[2]}.{_split(m[3], {'conv_shortcut': 'nin_shortcut'})}"
        elif m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.(.+)", key):
            ldm = f"encoder.down.{m[1]}.downsample.{m[2]}"
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            # The original decoder counts its levels from the lowest resolution up.
            level = up_blocks - 1 - int(m[1])
            ldm = f"decoder.up.{level}.block.{m[2]}.{_split(m[3], {'conv_shortcut': 'nin_shortcut'})}"
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.+)", key):
            ldm = f"decoder.up.{up_blocks - 1 - int(m[1])}.upsample.{m[2]}"
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
            ldm = f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3]}"
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)", key):
            ldm = f"{m[1]}.mid.attn_1.{_split(m[2], VAE_ATTENTION)}"
        elif m := re.fullmatch(r"(encoder|decoder)\.conv_norm_out\.(.+)", key):
            ldm = f"{m[1]}.norm_out.{m[2]}"
        elif re.fullmatch(r"(encoder|decoder)\.conv_(in|out)\.(weight|bias)|(post_)?quant_conv\.(weight|bias)", key):
            ldm = key
        if ldm is None:
            raise UnmappedKey(f"no original-layout name for VAE key {key!r}")
        out[key] = ldm
    return out


def vae_tensor(ldm: str, tensor: torch.Tensor) -> torch.Tensor:
    """The original VAE attention uses 1x1 convolutions where diffusers uses linear layers."""
    if ".mid.attn_1." in ldm and ldm.endswith(".weight") and tensor.ndim == 2:
        return tensor[:, :, None, None]
    return tensor


def clip_state(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """A transformers CLIP text model as the original checkpoints store it: ``<prefix>text_model.*``."""
    out = {}
    for key, tensor in state.items():
        if key.endswith("position_ids"):
            continue
        if key.startswith("text_projection."):
            raise UnmappedKey("a CLIP-L text encoder in the original layout has no text projection")
        out[prefix + "text_model." + key.removeprefix("text_model.")] = tensor
    return out


def openclip_state(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """A transformers CLIP text model with projection in OpenCLIP's layout (SDXL's second encoder)."""
    state = {k.removeprefix("text_model."): v for k, v in state.items() if not k.endswith("position_ids")}
    out, fused = {}, {}
    for key, tensor in state.items():
        if key == "embeddings.position_embedding.weight":
            out[prefix + "positional_embedding"] = tensor
        elif key == "embeddings.token_embedding.weight":
            out[prefix + "token_embedding.weight"] = tensor
        elif key.startswith("final_layer_norm."):
            out[prefix + "ln_final." + key.rpartition(".")[2]] = tensor
        elif key == "text_projection.weight":
            out[prefix + "text_projection"] = tensor.T.contiguous()  # OpenCLIP multiplies x @ P
        elif m := re.fullmatch(r"encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)", key):
            fused.setdefault((m[1], m[3]), {})[m[2]] = tensor
        elif m := re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)", key):
            rest = m[2]
            for old, new in CLIP_TO_OPENCLIP:
                rest = rest.replace(old, new)
            out[f"{prefix}transformer.resblocks.{m[1]}.{rest}"] = tensor
        else:
            raise UnmappedKey(f"no OpenCLIP name for text encoder key {key!r}")
    for (layer, leaf), parts in fused.items():
        out[f"{prefix}transformer.resblocks.{layer}.attn.in_proj_{leaf}"] = torch.cat([parts[c] for c in "qkv"])
    return out


def _module(folder: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    config = json.loads((folder / "config.json").read_text())
    files = sorted(folder.glob("*.safetensors"))
    if len(files) != 1:
        raise FileNotFoundError(f"expected one .safetensors file in {folder}, found {len(files)}")
    return config, load_file(files[0])


def base_state(folder: Path) -> dict[str, torch.Tensor]:
    """The original-layout state dict of a diffusers SD1.5 or SDXL pipeline folder."""
    folder = Path(folder)
    unet_config, unet = _module(folder / "unet")
    vae_config, vae = _module(folder / "vae")
    out = {f"model.diffusion_model.{new}": unet[old]
           for old, new in unet_keys(unet, unet_config["layers_per_block"]).items()}
    for old, new in vae_keys(vae, len(vae_config["up_block_types"])).items():
        out[f"first_stage_model.{new}"] = vae_tensor(new, vae[old])
    _, text = _module(folder / "text_encoder")
    if (folder / "text_encoder_2").is_dir():  # SDXL
        _, text_2 = _module(folder / "text_encoder_2")
        out.update(clip_state(text, "conditioner.embedders.0.transformer."))
        out.update(openclip_state(text_2, "conditioner.embedders.1.model."))
    else:
        out.update(clip_state(text, "cond_stage_model.transformer."))
    return out


def controlnet_to_ldm(state: dict[str, torch.Tensor], layers_per_block: int) -> dict[str, torch.Tensor]:
    """A diffusers ControlNet state dict in the original layout (``control_model.*``)."""
    return {f"control_model.{new}": state[old] for old, new in unet_keys(state, layers_per_block, True).items()}


def controlnet_state(folder: Path) -> dict[str, torch.Tensor]:
    """The original-layout state dict of a diffusers ControlNet folder."""
    config, state = _module(Path(folder))
    return controlnet_to_ldm(state, config["layers_per_block"])


def save(state: dict[str, torch.Tensor], target: Path) -> Path:
    """Write ``state`` as one ``.safetensors`` file."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(target))
    return target


def export_base(folder: Path, target: Path) -> Path:
    return save(base_state(folder), target)


def export_controlnet(folder: Path, target: Path) -> Path:
    return save(controlnet_state(folder), target)
