"""The offline ``tiny`` model set: SD-shaped networks with seeded random weights.

Built deterministically on first use into the models root and saved in the real
on-disk formats (diffusers folders, a diffusers-format LoRA ``.safetensors``), so
they load through exactly the code that loads real models. Their output is noise:
they exist so the CLI, UI, plugins and tests run end to end without downloads.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import zlib
from pathlib import Path

import torch

from typing import Any

from sdcompose.errors import ModelError
from sdcompose.pipelines import families
from sdcompose.pipelines.catalog import Entry

SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                 steps_offset=1)
VAE = dict(in_channels=3, out_channels=3, block_out_channels=(8, 16, 16, 16), layers_per_block=1,
           down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
           latent_channels=4, norm_num_groups=8, sample_size=64)


VERSION = 2  # bump when a tiny architecture changes, so stale builds are not reused


def _seed(model_id: str) -> int:
    return zlib.crc32(model_id.encode())


def _bytes_to_unicode() -> list[str]:
    """The byte-level alphabet CLIP's BPE uses: every byte maps to one printable character."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def write_tokenizer(folder: Path, pad: str = "<|endoftext|>") -> int:
    """A character-level CLIP tokenizer (no merges): any prompt tokenizes; returns the vocab size."""
    from transformers import CLIPTokenizer
    folder.mkdir(parents=True, exist_ok=True)
    chars = _bytes_to_unicode()
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token=pad, model_max_length=77)
    tokenizer.save_pretrained(folder)
    return len(tokens)


def text_encoder(vocab: int, projection: bool):
    """SDXL's second encoder is wider than its first, as in the real model (diffusers' single-file loader relies on it)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection
    config = CLIPTextConfig(vocab_size=vocab, hidden_size=48 if projection else 32, intermediate_size=37, num_hidden_layers=2,
                            num_attention_heads=4, max_position_embeddings=77, projection_dim=32,
                            bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=vocab - 1)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


def _family(entry: Entry) -> Any:
    spec = families.get(entry.family)
    if spec.tiny_denoiser is None or spec.tiny_base is None:
        raise ModelError(f"model {entry.id!r}: the {spec.name} family has no tiny test models; "
                         "point models.yaml at real weights")
    return spec


def _unet(family: Any):
    from diffusers import UNet2DConditionModel
    return UNet2DConditionModel(**family.tiny_denoiser)


def _build_base(entry: Entry, out: Path) -> None:
    from diffusers import AutoencoderKL
    family = _family(entry)
    vocab = write_tokenizer(out / "tokenizer")
    parts = {"unet": _unet(family), "vae": AutoencoderKL(**VAE), "text_encoder": text_encoder(vocab, False)}
    scheduler, index = family.tiny_base(out, parts, vocab)  # the family's own parts, scheduler and index entries
    for name, module in parts.items():
        module.save_pretrained(out / name, safe_serialization=True)
    scheduler.save_pretrained(out / "scheduler")
    index.update({"_diffusers_version": "0.42.1", "scheduler": ["diffusers", type(scheduler).__name__],
                  "tokenizer": ["transformers", "CLIPTokenizer"], "text_encoder": ["transformers", "CLIPTextModel"],
                  "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]})
    (out / "model_index.json").write_text(json.dumps(index, indent=1))


def _build_controlnet(entry: Entry, out: Path) -> None:
    family = _family(entry)
    controlnet = family.controlnet_model().from_unet(_unet(family), conditioning_embedding_out_channels=(8, 8, 16, 16))
    # A trained ControlNet's zero convolutions have learned weights; keep them non-zero so control is visible.
    for name, param in controlnet.named_parameters():
        if name.startswith(("controlnet_down_blocks", "controlnet_mid_block", "controlnet_cond_embedding.conv_out")):
            torch.nn.init.normal_(param, std=0.05)
    controlnet.save_pretrained(out, safe_serialization=True)


def _build_t2i_adapter(entry: Entry, out: Path) -> None:
    """A T2I-Adapter whose features fit the tiny UNet's two down blocks: 32 channels after the first block's
    downsample, 64 at the same size in the second. That is the SDXL adapter's layout (``full_adapter_xl``: the
    pixels unshuffled 16x, the first two feature maps at one size), so both families' tiny UNets take it."""
    channels = tuple(_family(entry).tiny_denoiser["block_out_channels"])
    families.get(entry.family).adapter_model()(in_channels=3, channels=channels, num_res_blocks=1,
                                               downscale_factor=16, adapter_type="full_adapter_xl") \
        .save_pretrained(out, safe_serialization=True)


def _build_lora(entry: Entry, out: Path) -> None:
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig, get_peft_model_state_dict
    family = _family(entry)
    unet = _unet(family)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False, target_modules=list(family.lora_targets)))
    for name, param in unet.named_parameters():
        if "lora_" in name:
            torch.nn.init.normal_(param, std=0.2)
    StableDiffusionPipeline.save_lora_weights(out, unet_lora_layers=get_peft_model_state_dict(unet),
                                              safe_serialization=True)


def _build_upscaler(entry: Entry, out: Path) -> None:
    """An ESRGAN (RRDBNet) network at 2x with 8 features and one block, in spandrel's own layout."""
    from safetensors.torch import save_file
    from spandrel.architectures.ESRGAN.__arch.RRDB import RRDBNet
    net = RRDBNet(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=2)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, out / FILES["upscaler"])


def _build_image_encoder(entry: Entry, out: Path) -> None:
    """A CLIP vision tower with projection (the class and folder layout of h94/IP-Adapter's image encoders)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=37, projection_dim=32, num_hidden_layers=2,
                              num_attention_heads=4, image_size=32, patch_size=8)
    CLIPVisionModelWithProjection(config).save_pretrained(out, safe_serialization=True)


IP_VARIANTS = {"tiny-ip-adapter-sd15": "base", "tiny-ip-adapter-plus-sd15": "plus",
               "tiny-ip-adapter-full-face-sd15": "full", "tiny-ip-adapter-sdxl": "base"}


def _build_ip_adapter(entry: Entry, out: Path) -> None:
    """An IP-Adapter in h94's single-file layout (``image_proj.*`` and ``ip_adapter.N.to_k_ip/to_v_ip``): the image
    projection of its variant, built by diffusers and written under the original names, and one key/value pair per
    cross-attention layer of the family's tiny UNet, numbered as the original numbers them."""
    from diffusers.models.embeddings import ImageProjection, IPAdapterFullImageProjection, IPAdapterPlusImageProjection
    from safetensors.torch import save_file
    unet, encoder = _unet(_family(entry)), {"hidden": 32, "projection": 32}  # the tiny image encoder's widths
    cross = unet.config.cross_attention_dim
    variant = IP_VARIANTS[entry.id]
    if variant == "base":
        proj = ImageProjection(cross_attention_dim=cross, image_embed_dim=encoder["projection"], num_image_text_embeds=4)
        names = {"image_embeds.": "proj."}
    elif variant == "full":
        proj = IPAdapterFullImageProjection(cross_attention_dim=cross, image_embed_dim=encoder["hidden"])
        names = {"ff.net.0.proj.": "proj.0.", "ff.net.2.": "proj.2.", "norm.": "proj.3."}
    else:
        proj = IPAdapterPlusImageProjection(embed_dims=encoder["hidden"], output_dims=cross, hidden_dims=64, heads=1,
                                            num_queries=4)
        names = {}
    state, weights = {}, proj.state_dict()
    for key, value in weights.items():
        state.update(_original_names(key, value, names))
    for layer in range(len(getattr(proj, "layers", ()))):
        state[f"image_proj.layers.{layer}.0.to_kv.weight"] = torch.cat(
            [weights[f"layers.{layer}.attn.to_k.weight"], weights[f"layers.{layer}.attn.to_v.weight"]])
    key_id = 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        hidden = unet.get_submodule(name.removesuffix(".processor")).to_k.out_features
        for part in ("to_k_ip", "to_v_ip"):
            state[f"ip_adapter.{key_id}.{part}.weight"] = torch.randn(hidden, cross) * 0.2
        key_id += 2
    save_file({k: v.contiguous() for k, v in state.items()}, out / FILES["ip_adapter"])


def _original_names(key: str, value: torch.Tensor, names: dict[str, str]) -> dict[str, torch.Tensor]:
    """One diffusers image-projection tensor under IP-Adapter's own key (the inverse of diffusers' conversion)."""
    if not names:  # plus: the Resampler's PerceiverAttention / FeedForward layout
        parts = key.split(".")
        if parts[0] == "layers":
            layer, rest = parts[1], ".".join(parts[2:])
            if rest in ("attn.to_k.weight", "attn.to_v.weight"):
                return {}  # the original fuses them into to_kv (written by the caller)
            mapping = {"ln0.": "0.norm1.", "ln1.": "0.norm2.", "attn.to_q.": "0.to_q.", "attn.to_out.0.": "0.to_out.",
                       "ff.0.": "1.0.", "ff.1.net.0.proj.": "1.1.", "ff.1.net.2.": "1.3."}
            prefix = next(p for p in mapping if rest.startswith(p))
            key = f"layers.{layer}.{mapping[prefix]}{rest[len(prefix):]}"
    else:
        prefix = next((p for p in names if key.startswith(p)), "")
        key = names.get(prefix, "") + key[len(prefix):] if prefix else key
    return {f"image_proj.{key}": value}


BUILDERS = {"base": _build_base, "controlnet": _build_controlnet, "t2i_adapter": _build_t2i_adapter, "lora": _build_lora,
            "upscaler": _build_upscaler, "image_encoder": _build_image_encoder, "ip_adapter": _build_ip_adapter}
FILES = {"lora": "pytorch_lora_weights.safetensors", "upscaler": "model.safetensors",  # single-file kinds
         "ip_adapter": "ip-adapter.safetensors"}


def ensure(entry: Entry, target: Path) -> Path:
    """Build the tiny model ``entry`` at ``target`` unless it is already there; return ``target``."""
    if (target / ".complete").is_file():
        return target
    if entry.kind not in BUILDERS:
        raise ValueError(f"no tiny builder for kind {entry.kind!r}")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.id}-", dir=target.parent))
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_seed(entry.id))
            BUILDERS[entry.kind](entry, tmp)
        (tmp / ".complete").write_text("tiny test model: random weights, output is noise\n")
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished first
            if not (target / ".complete").is_file():
                shutil.rmtree(target, ignore_errors=True)
                os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
