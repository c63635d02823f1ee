"""sdcompose's output equals plain diffusers pipelines built independently from the same files."""
from __future__ import annotations

import cv2
import diffusers
import numpy as np
import pytest
import torch
from PIL import Image

import sdcompose
from conftest import max_diff

SIZE, STEPS, SEED = 64, 3, 7
DPMPP = dict(algorithm_type="dpmsolver++", solver_order=2)


def model_dir(pipe, model_id):
    return pipe.loader.path(pipe.catalog.get(model_id))


def reference(pipe, family, class_name, controlnets=(), lora=None, **call):
    """A diffusers pipeline loaded straight from the tiny model folders, run with the same seed."""
    base = model_dir(pipe, f"tiny-{family}")
    cls = getattr(diffusers, class_name)
    extra = {"safety_checker": None, "requires_safety_checker": False} if family == "sd15" else {}
    if controlnets:
        models = [diffusers.ControlNetModel.from_pretrained(model_dir(pipe, c)) for c in controlnets]
        extra["controlnet"] = models[0] if len(models) == 1 else models
    ref = cls.from_pretrained(base, **extra)
    ref.scheduler = diffusers.DPMSolverMultistepScheduler.from_config(ref.scheduler.config, **DPMPP)
    ref.set_progress_bar_config(disable=True)
    if lora is not None:
        ref.load_lora_weights(str(model_dir(pipe, lora[0])), adapter_name="ref")
        ref.set_adapters(["ref"], adapter_weights=[lora[1]])
    out = ref(prompt="a red fox", negative_prompt="blurry", num_inference_steps=STEPS, guidance_scale=6.0,
              generator=[torch.Generator("cpu").manual_seed(SEED)], output_type="np", **call)
    return out.images[0]


def ours(pipe, **kw):
    kw = dict(prompt="a red fox", negative_prompt="blurry", width=SIZE, height=SIZE, steps=STEPS, guidance=6.0,
              seed=SEED, scheduler="dpmpp_2m") | kw
    return pipe.generate(**kw)


def canny_map(photo):
    gray = cv2.cvtColor(np.asarray(Image.open(photo).convert("RGB")), cv2.COLOR_RGB2GRAY)
    return Image.fromarray(cv2.Canny(gray, 100, 200)).convert("RGB").resize((SIZE, SIZE), Image.LANCZOS)


@pytest.mark.parametrize("family,class_name", [("sd15", "StableDiffusionPipeline"),
                                               ("sdxl", "StableDiffusionXLPipeline")])
def test_txt2img_matches_diffusers(pipe, family, class_name):
    result = ours(pipe, model=f"tiny-{family}")
    expected = reference(pipe, family, class_name, height=SIZE, width=SIZE)
    assert result.arrays[0].shape == (SIZE, SIZE, 3)
    assert max_diff(result.arrays[0], expected) <= 1e-5


def test_one_controlnet_matches_diffusers(pipe, photo):
    control = sdcompose.Control("canny", image=photo, weight=0.8, start=0.0, end=0.6, resize_mode="just_resize")
    result = ours(pipe, model="tiny-sd15", controls=[control])
    expected = reference(pipe, "sd15", "StableDiffusionControlNetPipeline", ["tiny-controlnet-canny-sd15"],
                         image=canny_map(photo), controlnet_conditioning_scale=0.8, control_guidance_start=0.0,
                         control_guidance_end=0.6, height=SIZE, width=SIZE)
    assert max_diff(result.arrays[0], expected) <= 1e-5
    plain = ours(pipe, model="tiny-sd15")
    assert max_diff(result.arrays[0], plain.arrays[0]) > 1e-3, "the ControlNet must change the image"


def test_two_controlnets_match_diffusers(pipe, photo):
    flipped = canny_map(photo).transpose(Image.FLIP_LEFT_RIGHT)
    controls = [sdcompose.Control("canny", image=photo, weight=1.0, resize_mode="just_resize"),
                sdcompose.Control("canny", image=flipped, weight=0.5, start=0.2, preprocessed=True)]
    result = ours(pipe, model="tiny-sd15", controls=controls)
    cn = "tiny-controlnet-canny-sd15"
    expected = reference(pipe, "sd15", "StableDiffusionControlNetPipeline", [cn, cn],
                         image=[canny_map(photo), flipped], controlnet_conditioning_scale=[1.0, 0.5],
                         control_guidance_start=[0.0, 0.2], control_guidance_end=[1.0, 1.0], height=SIZE, width=SIZE)
    assert max_diff(result.arrays[0], expected) <= 1e-5


def test_img2img_matches_diffusers(pipe, photo):
    init = Image.open(photo).convert("RGB").resize((SIZE, SIZE), Image.LANCZOS)
    result = ours(pipe, model="tiny-sd15", init_image=photo, strength=0.6)
    expected = reference(pipe, "sd15", "StableDiffusionImg2ImgPipeline", image=init, strength=0.6)
    assert max_diff(result.arrays[0], expected) <= 1e-5


def test_inpaint_matches_diffusers(pipe, photo, mask):
    init = Image.open(photo).convert("RGB").resize((SIZE, SIZE), Image.LANCZOS)
    result = ours(pipe, model="tiny-sd15", init_image=photo, mask=mask, strength=0.9)
    expected = reference(pipe, "sd15", "StableDiffusionInpaintPipeline", image=init,
                         mask_image=Image.open(mask).convert("L"), strength=0.9, height=SIZE, width=SIZE)
    assert max_diff(result.arrays[0], expected) <= 1e-5


def test_sdxl_controlnet_inpaint_runs(pipe, photo, mask):
    control = sdcompose.Control("canny", image=photo)
    result = ours(pipe, model="tiny-sdxl", controls=[control], init_image=photo, mask=mask, strength=0.9)
    assert result.images[0].size == (SIZE, SIZE)
    assert result.metadata["task"] == "inpaint"


def test_lora_matches_diffusers(pipe):
    result = ours(pipe, model="tiny-sd15", loras=[sdcompose.Lora("tiny-lora-sd15", 0.7)])
    expected = reference(pipe, "sd15", "StableDiffusionPipeline", lora=("tiny-lora-sd15", 0.7),
                         height=SIZE, width=SIZE)
    assert max_diff(result.arrays[0], expected) <= 1e-5


def test_control_weight_zero_equals_no_control(pipe, photo):
    without = ours(pipe, model="tiny-sd15")
    zero = ours(pipe, model="tiny-sd15", controls=[sdcompose.Control("canny", image=photo, weight=0.0)])
    assert max_diff(without.arrays[0], zero.arrays[0]) <= 1e-5
