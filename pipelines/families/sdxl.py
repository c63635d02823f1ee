"""Stable Diffusion XL: two CLIP text encoders, size and crop conditioning, a VAE that may decode in float32."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from sdcompose.pipelines.families import Family
from sdcompose.pipelines.families.sd15 import HUB_PATTERNS

TINY_UNET = dict(block_out_channels=(32, 64), layers_per_block=1, sample_size=32, in_channels=4, out_channels=4,
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=80, attention_head_dim=(2, 4),
                 use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
                 transformer_layers_per_block=(1, 1), projection_class_embeddings_input_dim=80)
VAE_SCALING = 0.13025


def tiny_base(out: Path, parts: dict[str, Any], vocab: int) -> tuple[Any, dict[str, Any]]:
    """The tiny test model's family-specific parts: the second encoder, the VAE's scaling, its scheduler."""
    from diffusers import EulerDiscreteScheduler

    from sdcompose.pipelines.tiny import SCHEDULER, text_encoder, write_tokenizer
    write_tokenizer(out / "tokenizer_2", pad="!")
    parts["text_encoder_2"] = text_encoder(vocab, True)
    parts["vae"].register_to_config(scaling_factor=VAE_SCALING, force_upcast=False)
    scheduler = EulerDiscreteScheduler(**SCHEDULER, timestep_spacing="leading")
    return scheduler, {"_class_name": "StableDiffusionXLPipeline", "force_zeros_for_empty_prompt": True,
                       "tokenizer_2": ["transformers", "CLIPTokenizer"],
                       "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"]}


SDXL = Family(
    name="sdxl", label="Stable Diffusion XL",
    pipelines={("txt2img", False): "StableDiffusionXLPipeline",
               ("img2img", False): "StableDiffusionXLImg2ImgPipeline",
               ("inpaint", False): "StableDiffusionXLInpaintPipeline",
               ("txt2img", True): "StableDiffusionXLControlNetPipeline",
               ("img2img", True): "StableDiffusionXLControlNetImg2ImgPipeline",
               ("inpaint", True): "StableDiffusionXLControlNetInpaintPipeline"},
    adapter_pipelines={"txt2img": "StableDiffusionXLAdapterPipeline"},
    preview=(((0.3651, 0.4232, 0.4341), (-0.2533, -0.0042, 0.1068), (0.1076, 0.1111, -0.0362),
              (-0.3165, -0.2492, -0.2188)), (0.1084, -0.0175, -0.0011)),
    hub_patterns=HUB_PATTERNS, vae_scaling=VAE_SCALING, vae_may_upcast=True,
    config="sdxl", tiny_denoiser=TINY_UNET, tiny_base=tiny_base,
)
