"""Memory plans: the estimate against measured peaks, the planner's choices, and switching modes on CPU."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import sdcompose
from sdcompose.pipelines import memory
from sdcompose.pipelines.catalog import CONFIGS
from sdcompose.pipelines.resolve import resolve
from sdcompose.request import parse_size, validate

GB = 2**30
P = memory.MemoryPlan


def full_size(family: str, controlnets: int = 1) -> dict[str, torch.nn.Module]:
    """The real SD1.5/SDXL architectures (shipped configs) on the meta device: sizes without weights."""
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection
    folder = CONFIGS / family
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
        models = {"unet": unet, "vae": AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae")),
                  "text_encoder": CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder"))}
        if family == "sdxl":
            models["text_encoder_2"] = CLIPTextModelWithProjection(
                CLIPTextConfig.from_pretrained(folder / "text_encoder_2"))
        models.update({f"controlnet:{i}": ControlNetModel.from_unet(unet) for i in range(controlnets)})
    return {name: m.half() for name, m in models.items()}


@pytest.fixture(scope="module")
def sd15():
    return full_size("sd15", controlnets=2)


def workload(models, width=512, height=512, batch=1, family="sd15"):
    return memory.workload(models, width, height, batch, 7.5, torch.float16, family)


def without(models, *names):
    return {k: v for k, v in models.items() if k not in names}


# Plain diffusers on an H200 (../shared/anchors.md): SD1.5, fp16, 20 steps, CFG. The script built two
# ControlNets up front and kept both on the GPU, so a second (or both) ControlNet(s) count as resident.
ANCHORS = [  # (setting, composition, extra resident ControlNets, plan, measured GB)
    ("txt2img", dict(names=()), 2, P(), 4.01),
    ("+1 ControlNet", dict(names=("controlnet:0",)), 1, P(), 4.04),
    ("+2 ControlNets", dict(names=("controlnet:0", "controlnet:1")), 0, P(), 4.05),
    ("+1 ControlNet, batch 4", dict(names=("controlnet:0",), batch=4), 1, P(), 5.53),
    ("+1 ControlNet, 1024", dict(names=("controlnet:0",), size=1024), 1, P(), 5.91),
    ("+1 ControlNet, 1024, VAE tiling", dict(names=("controlnet:0",), size=1024), 1, P(vae_tiling=True), 4.19),
    ("+1 ControlNet, model offload", dict(names=("controlnet:0",)), 1, P("model_offload"), 3.23),
    ("+1 ControlNet, sequential offload", dict(names=("controlnet:0",)), 1, P("sequential_offload"), 1.34),
]


@pytest.mark.parametrize("setting,comp,extra,plan,measured", ANCHORS, ids=[a[0] for a in ANCHORS])
def test_estimate_within_15_percent_of_measured_peaks(sd15, setting, comp, extra, plan, measured):
    models = without(sd15, *{"controlnet:0", "controlnet:1"} - set(comp["names"]))
    size = comp.get("size", 512)
    w = workload(models, size, size, comp.get("batch", 1))
    estimate = (memory.estimate(w, plan) + extra * memory._bytes(sd15["controlnet:0"])) / GB
    assert abs(estimate - measured) / measured <= 0.15, f"{setting}: estimated {estimate:.2f} GB, measured {measured}"


@pytest.mark.parametrize("budget,mode", [(1, "sequential_offload"), (2, "group_offload"), (4, "none"), (8, "none"),
                                         (24, "none")])
def test_auto_picks_the_fastest_plan_that_fits(sd15, budget, mode):
    w = workload(without(sd15, "controlnet:1"))
    plan = memory.choose("auto", w, "cuda", budget * GB)
    assert plan.mode == mode
    assert plan.estimate <= memory.HEADROOM * budget * GB
    assert f"{budget:.2f} GB" in plan.reason


def test_auto_prefers_vae_slicing_or_tiling_to_offloading(sd15):
    one_cn = without(sd15, "controlnet:1")
    assert memory.choose("auto", workload(one_cn, batch=4), "cuda", 4 * GB).mode == "vae_slicing"
    assert memory.choose("auto", workload(one_cn, 1024, 1024), "cuda", 4 * GB).mode == "vae_tiling"
    slower = memory.estimate(workload(one_cn, 1024, 1024), P("model_offload"))
    assert slower < 4 * GB * memory.HEADROOM, "offloading would fit too: the planner chose tiling for speed"


def test_sdxl_with_a_controlnet_at_1024_is_planned_under_8gb():
    w = workload(full_size("sdxl"), 1024, 1024, family="sdxl")
    assert w.vae_upcast, "SDXL's VAE decodes in float32 (force_upcast)"
    plan = memory.choose("auto", w, "cuda", 8 * GB)
    assert plan.placement in ("model_offload", "group_offload")
    assert plan.estimate <= 0.9 * 8 * GB
    assert memory.estimate(w, P()) > 8 * GB, "without a plan it would not fit"


def test_nothing_fits_says_so_and_takes_the_smallest(sd15):
    plan = memory.choose("auto", workload(without(sd15, "controlnet:1"), 2048, 2048, batch=4), "cuda", GB // 2)
    assert plan.placement == "sequential_offload" and "nothing fits" in plan.reason


def test_explicit_modes_are_kept_with_their_estimate(sd15):
    w = workload(without(sd15, "controlnet:1"))
    plan = memory.choose("model_offload", w, "cuda", 2 * GB)
    assert (plan.mode, plan.reason, plan.budget) == ("model_offload", "as asked", 2 * GB)
    assert plan.describe()["estimate_gb"] == pytest.approx(plan.estimate / GB, abs=0.01)


@pytest.mark.parametrize("text,gb", [("4GB", 4), ("4 GiB", 4), ("512MB", 0.5), ("2.5g", 2.5), ("8G", 8)])
def test_vram_sizes(text, gb):
    assert parse_size(text, "vram") == int(gb * GB)


@pytest.mark.parametrize("field,value,message", [
    ("vram", "4", "a size such as 4GB"), ("vram", "100MB", "between 256MB"), ("vram", True, "a size such as"),
    ("memory", "fast", "memory 'fast' is not one of auto, none"), ("attention", "flash", "not one of auto, sdpa"),
    ("fast", "yes", "fast must be true or false")])
def test_bad_settings_are_refused_before_any_work(pipe, field, value, message):
    with pytest.raises(sdcompose.ValidationError, match=message):
        pipe.generate("x", model="tiny-sd15", width=64, height=64, steps=1, **{field: value})


def test_cli_vram_error_is_one_line(capsys):
    from sdcompose.cli import main
    assert main(["generate", "x", "-m", "tiny-sd15", "--vram", "4", "--steps", "1", "-W", "64", "-H", "64"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "vram must be a size" in err


def test_cpu_auto_records_no_plan(pipe):
    result = pipe.generate("a fox", model="tiny-sd15", width=64, height=64, steps=2, seed=3)
    assert result.metadata["memory_plan"] == {"mode": "none", "estimate_gb": None, "budget_gb": None,
                                              "reason": "cpu: no memory plan"}
    assert result.metadata["request"]["memory"] == "auto"


def _hooked(module: torch.nn.Module) -> bool:
    return any(hasattr(m, "_hf_hook") or getattr(getattr(m, "_diffusers_hook", None), "hooks", None)
               for m in module.modules())


def test_switching_modes_back_and_forth_gives_identical_images(pipe, photo):
    control = [sdcompose.Control("canny", image=photo)]
    run = lambda mode: pipe.generate("a red fox", model="tiny-sd15", controls=control, width=64, height=64,
                                     steps=2, seed=11, batch=2, memory=mode)
    first = run("none")
    request = validate(sdcompose.GenerationRequest(model="tiny-sd15", controls=control))
    modules = pipe.cache.plan_modules(resolve(request, pipe.catalog, pipe.registry))
    for mode in ("model_offload", "group_offload", "sequential_offload", "vae_slicing", "model_offload", "none"):
        result = run(mode)
        assert result.metadata["memory_plan"]["mode"] == mode
        # moving weights changes nothing; decoding a batch image by image rounds differently, by ~1e-7
        tolerance = 1e-5 if mode == "vae_slicing" else 0
        assert np.abs(np.stack(result.arrays) - np.stack(first.arrays)).max() <= tolerance, mode
        if mode in ("none", "vae_slicing"):
            assert not any(_hooked(m) for m in modules.values()), f"hooks left after switching to {mode}"
            assert all(p.device.type == "cpu" for m in modules.values() for p in m.parameters())
