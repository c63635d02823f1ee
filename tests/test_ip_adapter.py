"""IP-Adapter image prompts on the tiny stand-ins: pixels against plain diffusers, start/end, reproduce, bad input."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPVisionModelWithProjection

import sdcompose
from bounded import run_bounded
from conftest import max_diff
from test_faults_images import bomb_png
from test_reference import DPMPP, SEED, SIZE, STEPS, model_dir
from test_reference import ours as _ours

from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0  # noqa: E402

IP_PROCESSORS = (IPAdapterAttnProcessor2_0,)


def ours(pipe, **kw):
    return _ours(pipe, **{"model": "tiny-sd15", **kw})


@pytest.fixture(scope="module")
def reference_image():
    rng = np.random.RandomState(3)
    return Image.fromarray((rng.rand(72, 88, 3) * 255).astype(np.uint8))


def plain_diffusers(pipe, family, adapters, scale, image, **call):
    """diffusers alone: the tiny base, its own load_ip_adapter on the tiny files, the tiny encoder registered."""
    cls = diffusers.StableDiffusionPipeline if family == "sd15" else diffusers.StableDiffusionXLPipeline
    extra = {"safety_checker": None, "requires_safety_checker": False} if family == "sd15" else {}
    ref = cls.from_pretrained(model_dir(pipe, f"tiny-{family}"), **extra)
    ref.scheduler = diffusers.DPMSolverMultistepScheduler.from_config(ref.scheduler.config, **DPMPP)
    ref.set_progress_bar_config(disable=True)
    ref.register_modules(image_encoder=CLIPVisionModelWithProjection.from_pretrained(
        model_dir(pipe, "tiny-image-encoder")))
    files = [Path(model_dir(pipe, a)) for a in adapters]
    ref.load_ip_adapter([str(f.parent) for f in files], subfolder=[""] * len(files),
                        weight_name=[f.name for f in files], image_encoder_folder=None)
    ref.set_ip_adapter_scale(scale)
    out = ref(prompt="a red fox", negative_prompt="blurry", num_inference_steps=STEPS, guidance_scale=6.0,
              generator=[torch.Generator("cpu").manual_seed(SEED)], output_type="np", height=SIZE, width=SIZE,
              ip_adapter_image=image, **call)
    return out.images[0]


def clean(unet) -> bool:
    """No IP-Adapter left on a UNet: no image projection, no IP attention processors."""
    return unet.encoder_hid_proj is None and unet.config.encoder_hid_dim_type is None and \
        not any(isinstance(p, IP_PROCESSORS) for p in unet.attn_processors.values())


@pytest.mark.parametrize("family,adapter", [("sd15", "tiny-ip-adapter-sd15"), ("sd15", "tiny-ip-adapter-plus-sd15"),
                                            ("sdxl", "tiny-ip-adapter-sdxl")])
def test_matches_plain_diffusers(pipe, reference_image, family, adapter):
    result = ours(pipe, model=f"tiny-{family}", ip_adapters=[sdcompose.IpAdapter(adapter, reference_image, weight=0.7)])
    expected = plain_diffusers(pipe, family, [adapter], [0.7], [[reference_image]])
    assert max_diff(result.arrays[0], expected) <= 1e-5
    plain = ours(pipe, model=f"tiny-{family}")
    assert max_diff(result.arrays[0], plain.arrays[0]) > 0.05  # the reference changes the image
    assert clean(pipe.cache.components(f"tiny-{family}")["unet"])
    assert result.metadata["adapter_reports"]["ip_adapter"][adapter]["references"] == 1
    assert {adapter, "tiny-image-encoder"} <= set(result.metadata["models"])


def test_two_adapters_and_two_references_match_diffusers(pipe, reference_image):
    flipped = reference_image.transpose(Image.FLIP_LEFT_RIGHT)
    result = ours(pipe, ip_adapters=[sdcompose.IpAdapter("tiny-ip-adapter-sd15", [reference_image, flipped], weight=0.5),
                                     sdcompose.IpAdapter("tiny-ip-adapter-full-face-sd15", flipped, weight=0.9)])
    expected = plain_diffusers(pipe, "sd15", ["tiny-ip-adapter-sd15", "tiny-ip-adapter-full-face-sd15"], [0.5, 0.9],
                               [[reference_image, flipped], [flipped]])
    assert max_diff(result.arrays[0], expected) <= 1e-5


def test_start_end_and_weight_zero(pipe, reference_image):
    plain = ours(pipe).arrays[0]
    full = ours(pipe, ip_adapters=[sdcompose.IpAdapter("tiny-ip-adapter-sd15", reference_image)]).arrays[0]
    late = ours(pipe, ip_adapters=[sdcompose.IpAdapter("tiny-ip-adapter-sd15", reference_image, start=0.5)]).arrays[0]
    off = ours(pipe, ip_adapters=[sdcompose.IpAdapter("tiny-ip-adapter-sd15", reference_image, weight=0.0)]).arrays[0]
    assert max_diff(off, plain) <= 1e-6
    assert max_diff(late, full) > 0.01 and max_diff(late, plain) > 0.01


def test_reproduce_from_the_png_gives_identical_pixels(pipe, reference_image, tmp_path):
    ref = tmp_path / "ref.png"
    reference_image.save(ref)
    result = ours(pipe, ip_adapters=[sdcompose.IpAdapter("tiny-ip-adapter-plus-sd15", [ref, reference_image], weight=0.6,
                                                         end=0.7)])
    [out] = result.save(tmp_path / "out.png")
    again = pipe.reproduce(out)
    assert np.array_equal(np.asarray(again.images[0]), np.asarray(Image.open(out)))
    assert again.metadata["request"]["ip_adapters"][0]["end"] == 0.7


def test_other_family_is_one_sentence_before_loading(pipe, reference_image):
    with pytest.raises(sdcompose.ModelError, match=r"^IP-Adapter 'tiny-ip-adapter-sdxl' is sdxl; base 'tiny-sd15' is sd15: "
                                                   r"pick an sd15 IP-Adapter or an sdxl base$"):
        ours(pipe, ip_adapters=[sdcompose.IpAdapter("tiny-ip-adapter-sdxl", reference_image)])


def test_a_file_of_the_other_family_is_refused_by_its_shapes(pipe, reference_image):
    """An SDXL adapter file given to an SD1.5 UNet (a models.yaml entry with the wrong family): refused before diffusers
    reads it, in one sentence."""
    from sdcompose.plugins.api import Use
    from sdcompose.plugins.builtin.ip_adapter import DiffusersIpAdapter
    entry = pipe.catalog.get("tiny-ip-adapter-sdxl")
    use = Use(entry.id, pipe.loader.verified_path(entry), pipe.catalog.get("tiny-ip-adapter-sd15"), 1.0,
              images=[reference_image], modules={"image_encoder": None})
    diffusers_pipe = pipe.diffusers_pipeline(model="tiny-sd15")
    with pytest.raises(sdcompose.PluginError, match="cross-attention layers 80 wide; this sd15 base has 4 layers 32 "
                                                    "wide .*pick an IP-Adapter of the base's family"):
        DiffusersIpAdapter().contribute(diffusers_pipe, [use], None)
    assert clean(diffusers_pipe.unet)


def test_a_cancelled_request_leaves_nothing_applied(pipe, reference_image):
    plain = ours(pipe).arrays[0]
    cancel = threading.Event()
    with pytest.raises(sdcompose.Cancelled):
        ours(pipe, ip_adapters=[sdcompose.IpAdapter("tiny-ip-adapter-plus-sd15", reference_image)],
             progress=lambda step, total: cancel.set(), cancel=cancel)
    assert clean(pipe.cache.components("tiny-sd15")["unet"])
    assert max_diff(ours(pipe).arrays[0], plain) == 0


@pytest.mark.parametrize("adapter,message", [
    (dict(id="tiny-ip-adapter-sd15"), r"ip_adapters\[0\] \(tiny-ip-adapter-sd15\) needs a reference image"),
    (dict(id="tiny-ip-adapter-sd15", image="r.png", start=0.6, end=0.5), r"start \(0.6\) must be below end \(0.5\)"),
    (dict(id="tiny-ip-adapter-sd15", image="r.png", weight=9), r"weight must be between 0 and 2, got 9"),
    (dict(id="tiny-ip-adapter-sd15", image=["r.png"] * 9), r"has 9 reference images; the limit is 8"),
])
def test_bad_units_are_one_sentence(adapter, message):
    with pytest.raises(sdcompose.ValidationError, match=message):
        sdcompose.GenerationRequest(ip_adapters=[adapter])


def test_fast_mode_with_an_ip_adapter_is_refused():
    with pytest.raises(sdcompose.ValidationError, match="fast mode does not run IP-Adapters"):
        sdcompose.GenerationRequest(fast=True, ip_adapters=[dict(id="a", image="r.png")])


def test_the_schema_has_the_field():
    schema = sdcompose.GenerationRequest.model_json_schema()
    assert schema["properties"]["ip_adapters"]["maxItems"] == 4
    assert set(schema["$defs"]["IpAdapter"]["properties"]) == {"id", "image", "weight", "start", "end"}


def test_a_bomb_reference_is_refused_under_a_memory_limit(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(bomb_png(100_000, 100_000))
    out = run_bounded(f"""
        import sdcompose
        pipe = sdcompose.Pipeline(device="cpu")
        try:
            pipe.generate(model="tiny-sd15", width=64, height=64, steps=1,
                          ip_adapters=[sdcompose.IpAdapter("tiny-ip-adapter-sd15", {str(bomb)!r})])
            emit("ran")
        except sdcompose.ValidationError as exc:
            emit(str(exc))
    """, memory_mb=3000, cpu_s=120)
    assert "reference 1" in out and "pixels" in out and "\n" not in out


def test_cli_generates_with_an_ip_adapter_and_reproduces(tmp_path, reference_image, home):
    ref = tmp_path / "ref.png"
    reference_image.save(ref)
    out = tmp_path / "out.png"
    env = os.environ | {"SDCOMPOSE_DEBUG": ""}
    run = subprocess.run([sys.executable, "-m", "sdcompose.cli", "generate", "--model", "tiny-sd15", "--ip-adapter",
                          f"tiny-ip-adapter-sd15={ref}:image={ref}:weight=0.7:end=0.8", "-W", "64", "-H", "64",
                          "--steps", "2", "--seed", "4", "-o", str(out), "a fox"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr
    again = subprocess.run([sys.executable, "-m", "sdcompose.cli", "reproduce", str(out), "-o", str(tmp_path / "b.png")],
                           capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0, again.stderr
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(tmp_path / "b.png")))
    bad = subprocess.run([sys.executable, "-m", "sdcompose.cli", "generate", "--model", "tiny-sd15", "--ip-adapter",
                          f"tiny-ip-adapter-sd15={ref}:size=3"], capture_output=True, text=True, env=env, timeout=600)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "unknown option 'size'" in bad.stderr


def test_an_unknown_id_is_one_sentence_before_loading(reference_image):
    fresh = sdcompose.Pipeline(device="cpu")
    with pytest.raises(sdcompose.ModelError, match="ip-adapter-nope") as info:
        fresh.generate(model="tiny-sd15", width=64, height=64, steps=1,
                       ip_adapters=[sdcompose.IpAdapter("ip-adapter-nope", reference_image)])
    assert "\n" not in str(info.value) and fresh.cache.loaded()["base"] == []


def test_the_ui_form_reads_and_restores_its_ip_adapter_section(reference_image, tmp_path):
    from sdcompose.ui.form import Form
    form = Form()
    values = form.defaults() | dict(ip_enable=True, ip_model="tiny-ip-adapter-sd15", ip_image=reference_image,
                                    ip_weight=0.4, ip_end=0.6)
    [adapter] = form.to_kwargs(values)["ip_adapters"]
    assert (adapter.id, adapter.weight, adapter.start, adapter.end) == ("tiny-ip-adapter-sd15", 0.4, 0.0, 0.6)
    with pytest.raises(sdcompose.ValidationError, match="upload a reference image in the IP-Adapter section"):
        form.to_kwargs(values | {"ip_image": None})
    assert form.to_kwargs(values | {"ip_enable": False})["ip_adapters"] == []
    meta = {"request": sdcompose.GenerationRequest(ip_adapters=[adapter]).summary(), "seed": 3}
    restored, warnings = form.from_metadata(meta, {"ip-adapter-0-0": reference_image},
                                            lambda name, image: f"/stored/{name}.png")
    assert restored["ip_enable"] and restored["ip_image"] == "/stored/ip-adapter-0-0.png" and warnings == []
    assert (restored["ip_model"], restored["ip_weight"], restored["ip_end"]) == ("tiny-ip-adapter-sd15", 0.4, 0.6)
