"""What a ``.safetensors`` file is, told from its header alone: kind (checkpoint, ControlNet, LoRA,
embedding) and family (sd15, sdxl, or a named family this project does not run).

Only the JSON header is read, with a bounded read; no tensor data, no torch. Rules go from the
file's own metadata (``modelspec.architecture``, kohya's ``ss_base_model_version``) to its key
structure to the shapes the header records. What no rule settles is reported as unknown, never
guessed.
"""
from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdcompose.pipelines import families

MAX_HEADER = 16 * 2**20  # real checkpoints need ~0.3 MB, LoRAs with training metadata a few MB

# modelspec.architecture / ss_base_model_version prefixes -> family ("" = a named unsupported family)
ARCHITECTURES = [
    ("stable-diffusion-xl-v1-refiner", "SDXL refiner"), ("stable-diffusion-xl", "sdxl"), ("sdxl", "sdxl"),
    ("stable-diffusion-v1", "sd15"), ("sd_v1", "sd15"), ("stable-diffusion-v2", "SD2"), ("sd_v2", "SD2"),
    ("stable-diffusion-3", "SD3"), ("sd3", "SD3"), ("flux", "Flux"), ("stable-cascade", "Stable Cascade"),
    ("pixart", "PixArt"), ("auraflow", "AuraFlow"), ("hunyuan", "Hunyuan-DiT"), ("kolors", "Kolors"),
]
CONTEXT_DIM = {768: "sd15", 1024: "SD2", 2048: "sdxl"}  # width of the text features cross-attention reads
EMBEDDING_DIM = {768: "sd15", 1024: "SD2"}  # a one-encoder embedding's vector width (SDXL's carry clip_l and clip_g)
CONV_IN = [320, 4, 3, 3]  # the shipped configs' UNet input convolution, in the original layout


class HeaderError(Exception):
    """The file's header cannot be read (one sentence, without the path)."""


@dataclass(frozen=True)
class Verdict:
    kind: str | None  # base | controlnet | lora | embedding | None (not a model this project knows)
    family: str | None  # sd15 | sdxl | a named unsupported family | None (could not be told)
    why: str  # what in the header decided it
    standard: bool = True  # base/controlnet: the shapes of the shipped sd15/sdxl config (else needs a config folder)

    @property
    def supported(self) -> bool:
        return self.kind is not None and self.family in families.names()


def read_header(path: Path | str, limit: int = MAX_HEADER) -> dict[str, Any]:
    """The JSON header of a safetensors file, read with at most ``limit`` + 8 bytes; symlinks not followed."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise HeaderError(f"cannot be read ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise HeaderError("is empty or truncated")
        if head[:4] == b"PK\x03\x04" or head[0] == 0x80:
            raise HeaderError("is a pickle (a renamed .ckpt/.pt), not a safetensors file")
        if head.startswith(b"version "):
            raise HeaderError("is a git-LFS pointer, not the weights")
        (length,) = struct.unpack("<Q", head)
        if length > limit:
            raise HeaderError(f"claims a {length}-byte header (more than {limit}); not a model file")
        raw = f.read(length)
    if len(raw) < length or not raw.startswith(b"{"):
        raise HeaderError("is truncated or not a safetensors file")
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError):
        raise HeaderError("has an unreadable header (not a safetensors file)") from None
    if not isinstance(header, dict):
        raise HeaderError("has a malformed header")
    return header


def _shape(header: dict[str, Any], key: str) -> list[int] | None:
    info = header.get(key)
    shape = info.get("shape") if isinstance(info, dict) else None
    return shape if isinstance(shape, list) and all(type(n) is int for n in shape) else None


def _from_metadata(meta: Any) -> str | None:
    if not isinstance(meta, dict):
        return None
    for name in ("modelspec.architecture", "ss_base_model_version"):
        value = meta.get(name)
        if isinstance(value, str):
            value = value.lower()
            for prefix, family in ARCHITECTURES:
                if value.startswith(prefix):
                    return family
    return None


def _context_family(header: dict[str, Any], keys: list[str], marks: tuple[str, ...], axis: int) -> str | None:
    """The family a cross-attention key projection's input width names (768, 1024, 2048), if any."""
    for key in keys:
        if "attn2" in key and "to_k" in key and any(m in key for m in marks):
            shape = _shape(header, key)
            if shape and len(shape) > axis:
                return CONTEXT_DIM.get(shape[axis])
    return None


def classify(header: dict[str, Any]) -> Verdict:
    """Kind and family of a safetensors file from its parsed header."""
    keys = [k for k in header if k != "__metadata__"]
    meta_family = _from_metadata(header.get("__metadata__"))
    has = lambda *parts: any(k.startswith(parts) for k in keys)  # noqa: E731
    if not keys:
        return Verdict(None, None, "holds no tensors")
    # ---- families this project does not run, by their unmistakable blocks
    if has("model.diffusion_model.joint_blocks.", "joint_blocks.", "transformer.joint_blocks."):
        return Verdict("base", "SD3", "MMDiT joint blocks")
    if has("model.diffusion_model.double_blocks.", "double_blocks.", "single_transformer_blocks.",
           "transformer.single_transformer_blocks."):
        return Verdict("base", "Flux", "Flux double/single-stream blocks")
    if any(".time_stack." in k or ".time_mixer." in k for k in keys[:4000]):
        return Verdict("base", "video (SVD/AnimateDiff)", "temporal layers")
    if any(k.startswith(("lora_", "lycoris_")) or ".lora_" in k or ".hada_" in k or ".lokr_" in k
           or "lora.down." in k for k in keys):
        return _lora(header, keys, meta_family)
    if "emb_params" in header or ("clip_l" in header and "clip_g" in header):
        return _embedding(header, meta_family)
    if has("control_model.") or (has("input_hint_block.") and has("zero_convs.")) \
            or (has("controlnet_cond_embedding.") and has("controlnet_down_blocks.")):
        return _controlnet(header, keys)
    if has("model.diffusion_model."):
        return _checkpoint(header, keys, meta_family)
    if has("down_blocks.", "conv_in.") and has("time_embedding."):
        return Verdict(None, None, "a diffusers UNet alone, not a whole checkpoint")
    if has("encoder.down.", "decoder.up.", "encoder.down_blocks.", "first_stage_model."):
        return Verdict(None, None, "a VAE alone")
    if has("text_model.", "transformer.resblocks.", "encoder.block."):
        return Verdict(None, None, "a text encoder alone")
    return Verdict(None, meta_family, "no layout this project knows")


def _checkpoint(header: dict[str, Any], keys: list[str], meta_family: str | None) -> Verdict:
    has = lambda *parts: any(k.startswith(parts) for k in keys)  # noqa: E731
    conv_in = _shape(header, "model.diffusion_model.input_blocks.0.0.weight")
    if conv_in and len(conv_in) == 4 and conv_in[1] != 4:
        what = {9: "an inpainting UNet (9 input channels)", 8: "an instruct-pix2pix UNet (8 input channels)"}
        return Verdict("base", f"{meta_family or 'SD'} inpainting/edit",
                       what.get(conv_in[1], f"a UNet with {conv_in[1]} input channels"))
    if has("conditioner.embedders.1.model.") and has("conditioner.embedders.0.transformer."):
        family, why = "sdxl", "CLIP-L and OpenCLIP-G text encoders (conditioner.embedders.0/1)"
    elif has("conditioner.embedders.0.model.") and not has("conditioner.embedders.1."):
        return Verdict("base", "SDXL refiner", "OpenCLIP-G text encoder alone")
    elif has("cond_stage_model.transformer."):
        family, why = "sd15", "CLIP-L text encoder (cond_stage_model.transformer)"
    elif has("cond_stage_model.model."):
        return Verdict("base", "SD2", "OpenCLIP-H text encoder (cond_stage_model.model)")
    elif meta_family is not None:
        family, why = meta_family, "the file's modelspec metadata"
    else:
        return Verdict("base", None, "a UNet without a text encoder the rules know")
    size = CONV_IN if family in families.names() else None
    context = _context_family(header, [k for k in keys if k.startswith("model.diffusion_model.")], ("",), 1)
    standard = conv_in == size and context == family
    return Verdict("base", family, why, standard)


def _controlnet(header: dict[str, Any], keys: list[str]) -> Verdict:
    ldm = any("input_hint_block." in k for k in keys)
    added = any(k.startswith(("control_model.label_emb.", "label_emb.", "add_embedding.")) for k in keys)
    context = _context_family(header, keys, ("",), 1)
    if context == "SD2":
        return Verdict("controlnet", "SD2", "1024-wide cross-attention (SD2 text features)")
    family = "sdxl" if added else "sd15"
    why = ("added time/text embedding (SDXL)" if added else "no added embedding (SD1.5)") + \
        (", original layout" if ldm else ", diffusers layout")
    conv = next((_shape(header, k) for k in ("control_model.input_blocks.0.0.weight", "input_blocks.0.0.weight",
                                              "conv_in.weight") if k in header), None)
    standard = conv == CONV_IN and context == family
    return Verdict("controlnet", family, why, standard)


def _lora(header: dict[str, Any], keys: list[str], meta_family: str | None) -> Verdict:
    if meta_family is not None:
        return Verdict("lora", meta_family, "the file's training metadata")
    if any(k.startswith(("lora_te2_", "lora_te1_", "text_encoder_2.", "lora_unet_input_blocks_",
                         "lora_unet_label_emb")) for k in keys):
        return Verdict("lora", "sdxl", "keys for SDXL's two text encoders or its UNet layout")
    # a down/A matrix is [rank, in]; LoHa's w1_b / w2_b are [rank, in] too
    family = _context_family(header, keys, ("lora_down", "lora_A", "lora.down", "hada_w1_b"), 1)
    if family is not None:
        return Verdict("lora", family, "the width of its cross-attention key layers")
    return Verdict("lora", None, "no metadata names its base and its layer widths are not SD1.5's or SDXL's")


def _embedding(header: dict[str, Any], meta_family: str | None) -> Verdict:
    if "clip_l" in header and "clip_g" in header:
        return Verdict("embedding", "sdxl", "clip_l and clip_g vectors")
    if meta_family is not None:
        return Verdict("embedding", meta_family, "the file's metadata")
    shape = _shape(header, "emb_params")
    family = EMBEDDING_DIM.get(shape[-1]) if shape else None
    return Verdict("embedding", family, f"vectors of width {shape[-1] if shape else '?'}")
