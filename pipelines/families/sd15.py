"""Stable Diffusion 1.x/2.x-shaped models: one CLIP text encoder, a 4-channel UNet, sizes in multiples of 8."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from sdcompose.pipelines.families import Family

HUB_PATTERNS = ("model_index.json", "scheduler/*", "tokenizer*/*", "text_encoder*/config.json",
                "text_encoder*/model.safetensors", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
                "vae/config.json", "vae/diffusion_pytorch_model.safetensors")
TINY_UNET = dict(block_out_channels=(32, 64), layers_per_block=1, sample_size=32, in_channels=4, out_channels=4,
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32, attention_head_dim=8)


def tiny_base(out: Path, parts: dict[str, Any], vocab: int) -> tuple[Any, dict[str, Any]]:
    """The tiny test model's family-specific parts: its scheduler and model_index.json entries."""
    from diffusers import PNDMScheduler

    from sdcompose.pipelines.tiny import SCHEDULER
    scheduler = PNDMScheduler(**SCHEDULER, skip_prk_steps=True, set_alpha_to_one=False)
    return scheduler, {"_class_name": "StableDiffusionPipeline", "requires_safety_checker": False,
                       "safety_checker": [None, None], "feature_extractor": [None, None]}


SD15 = Family(
    name="sd15", label="Stable Diffusion 1.5",
    pipelines={("txt2img", False): "StableDiffusionPipeline",
               ("img2img", False): "StableDiffusionImg2ImgPipeline",
               ("inpaint", False): "StableDiffusionInpaintPipeline",
               ("txt2img", True): "StableDiffusionControlNetPipeline",
               ("img2img", True): "StableDiffusionControlNetImg2ImgPipeline",
               ("inpaint", True): "StableDiffusionControlNetInpaintPipeline"},
    adapter_pipelines={"txt2img": "StableDiffusionAdapterPipeline"},
    # the latent-to-RGB approximation other SD front ends use for live previews
    preview=(((0.3512, 0.2297, 0.3227), (0.3250, 0.4974, 0.2350), (-0.2829, 0.1762, 0.2721),
              (-0.2120, -0.2616, -0.7177)), (0.0, 0.0, 0.0)),
    hub_patterns=HUB_PATTERNS, vae_scaling=0.18215,
    load_kwargs={"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False},
    config="sd15", tiny_denoiser=TINY_UNET, tiny_base=tiny_base,
)
