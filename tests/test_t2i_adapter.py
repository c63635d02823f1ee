"""T2I-Adapter units: a ControlNet unit whose model is a models.yaml ``t2i_adapter`` runs through diffusers' own
adapter pipelines, pixel for pixel; what those pipelines cannot run is refused before any work."""
from __future__ import annotations

from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch
from PIL import Image

import sdcompose
from conftest import max_diff
from sdcompose.errors import SdcomposeError
from sdcompose.pipelines import memory
from sdcompose.pipelines.resolve import resolve
from test_reference import DPMPP, SEED, SIZE, STEPS, canny_map, model_dir, ours

CANNY15, DEPTH15, CANNYXL, LINEXL = ("tiny-t2iadapter-canny-sd15", "tiny-t2iadapter-depth-sd15",
                                     "tiny-t2iadapter-canny-sdxl", "tiny-t2iadapter-lineart-sdxl")


def adapter_reference(pipe, family, class_name, adapters, ip_adapter=None, **call):
    """diffusers' adapter pipeline loaded straight from the tiny folders, with the same seed; ``ip_adapter``: an
    IP-Adapter id loaded with diffusers' own load_ip_adapter (its scale and references go in ``call``)."""
    nets = [diffusers.T2IAdapter.from_pretrained(model_dir(pipe, a)) for a in adapters]
    extra = {"safety_checker": None, "requires_safety_checker": False} if family == "sd15" else {}
    ref = getattr(diffusers, class_name).from_pretrained(
        model_dir(pipe, f"tiny-{family}"), adapter=nets[0] if len(nets) == 1 else diffusers.MultiAdapter(nets), **extra)
    ref.scheduler = diffusers.DPMSolverMultistepScheduler.from_config(ref.scheduler.config, **DPMPP)
    ref.set_progress_bar_config(disable=True)
    if ip_adapter is not None:
        from transformers import CLIPVisionModelWithProjection
        ref.register_modules(image_encoder=CLIPVisionModelWithProjection.from_pretrained(
            model_dir(pipe, "tiny-image-encoder")))
        weights = Path(model_dir(pipe, ip_adapter))
        ref.load_ip_adapter(str(weights.parent), subfolder="", weight_name=weights.name, image_encoder_folder=None)
        ref.set_ip_adapter_scale(call.pop("ip_scale"))
    out = ref(prompt="a red fox", negative_prompt="blurry", num_inference_steps=STEPS, guidance_scale=6.0,
              generator=[torch.Generator("cpu").manual_seed(SEED)], output_type="np", height=SIZE, width=SIZE,
              **call)
    return out.images[0]


def test_one_sd15_adapter_matches_diffusers(pipe, photo):
    control = sdcompose.Control("canny", image=photo, weight=0.8, model=CANNY15, resize_mode="just_resize")
    result = ours(pipe, model="tiny-sd15", controls=[control])
    expected = adapter_reference(pipe, "sd15", "StableDiffusionAdapterPipeline", [CANNY15], image=canny_map(photo),
                                 adapter_conditioning_scale=0.8)
    assert max_diff(result.arrays[0], expected) <= 1e-5
    plain = ours(pipe, model="tiny-sd15")
    assert max_diff(result.arrays[0], plain.arrays[0]) > 1e-3, "the T2I-Adapter must change the image"
    assert result.metadata["models"][CANNY15]["kind"] == "t2i_adapter"
    assert len(result.metadata["models"][CANNY15]["sha256"]) >= 1
    assert CANNY15 in pipe.cache.loaded()["t2i_adapter"] and CANNY15 not in pipe.cache.loaded()["controlnet"]


def test_loras_before_and_with_a_sd15_adapter(pipe, photo):
    """SD1.5's T2I-Adapter pipeline has no LoRA methods: LoRAs go through the family's text-to-image pipeline over
    the same modules, so a LoRA an earlier request left fused is taken off, and a LoRA runs with the adapter."""
    control = sdcompose.Control("canny", image=photo, weight=0.8, model=CANNY15, resize_mode="just_resize")
    lora = sdcompose.Lora("tiny-lora-sd15", 0.9)
    alone = ours(pipe, model="tiny-sd15", controls=[control])
    ours(pipe, model="tiny-sd15", loras=[lora])  # fused, and kept fused for a next request with the same LoRA
    assert np.array_equal(ours(pipe, model="tiny-sd15", controls=[control]).arrays[0], alone.arrays[0])
    with_lora = ours(pipe, model="tiny-sd15", controls=[control], loras=[lora])
    assert max_diff(with_lora.arrays[0], alone.arrays[0]) > 1e-3, "the LoRA must change the image"
    assert "tiny-lora-sd15" in with_lora.metadata["models"]
    assert np.array_equal(ours(pipe, model="tiny-sd15", controls=[control]).arrays[0], alone.arrays[0])


def test_two_sdxl_adapters_with_an_end_match_diffusers_multiadapter(pipe, photo):
    flipped = canny_map(photo).transpose(Image.FLIP_LEFT_RIGHT)
    controls = [sdcompose.Control("canny", image=photo, weight=1.0, end=0.5, model=CANNYXL, resize_mode="just_resize"),
                sdcompose.Control("lineart", image=flipped, weight=0.6, end=0.5, model=LINEXL, preprocessed=True)]
    result = ours(pipe, model="tiny-sdxl", controls=controls)
    expected = adapter_reference(pipe, "sdxl", "StableDiffusionXLAdapterPipeline", [CANNYXL, LINEXL],
                                 image=[canny_map(photo), flipped], adapter_conditioning_scale=[1.0, 0.6],
                                 adapter_conditioning_factor=0.5)
    assert max_diff(result.arrays[0], expected) <= 1e-5


def test_reproduce_gives_identical_pixels(pipe, photo, tmp_path):
    grey = Image.new("RGB", (SIZE, SIZE), (90, 90, 90))  # a depth map drawn by hand: no depth estimator runs
    control = sdcompose.Control("depth", image=grey, weight=0.9, model=DEPTH15, preprocessed=True)
    first = ours(pipe, model="tiny-sd15", controls=[control], seed=11)
    path = first.save(tmp_path / "t2i.png")[0]
    again = pipe.reproduce(path)
    assert np.array_equal(np.asarray(first.images[0]), np.asarray(again.images[0]))
    assert again.metadata["models"][DEPTH15] == first.metadata["models"][DEPTH15]
    assert again.metadata["request"]["controls"][0]["model"] == DEPTH15


def test_the_memory_planner_counts_the_adapter(pipe, photo):
    control = sdcompose.Control("canny", image=photo, model=CANNY15)
    plan = resolve(sdcompose.GenerationRequest(model="tiny-sd15", controls=[control]), pipe.catalog, pipe.registry)
    modules = pipe.cache.plan_modules(plan)
    load = memory.workload(modules, SIZE, SIZE, 1, 6.0, torch.float32, "sd15")
    size = sum(p.numel() * p.element_size() for p in modules["adapter:0"].parameters())
    assert load.weights["adapter:0"] == size > 0
    without = memory.workload({k: v for k, v in modules.items() if k != "adapter:0"}, SIZE, SIZE, 1, 6.0,
                              torch.float32, "sd15")
    plan_none = memory.MemoryPlan()
    assert memory.estimate(load, plan_none) - memory.estimate(without, plan_none) >= size


def test_sdxl_adapter_units_and_an_ip_adapter_together_match_diffusers(pipe, photo):
    reference = Image.fromarray((np.random.RandomState(3).rand(72, 88, 3) * 255).astype(np.uint8))
    control = sdcompose.Control("canny", image=photo, weight=0.8, model=CANNYXL, resize_mode="just_resize")
    ip = sdcompose.IpAdapter("tiny-ip-adapter-sdxl", reference, weight=0.7)
    result = ours(pipe, model="tiny-sdxl", controls=[control], ip_adapters=[ip])
    expected = adapter_reference(pipe, "sdxl", "StableDiffusionXLAdapterPipeline", [CANNYXL], "tiny-ip-adapter-sdxl",
                                 image=canny_map(photo), adapter_conditioning_scale=0.8, ip_scale=0.7,
                                 ip_adapter_image=[[reference]])
    assert max_diff(result.arrays[0], expected) <= 1e-5
    without = ours(pipe, model="tiny-sdxl", controls=[control])
    assert max_diff(result.arrays[0], without.arrays[0]) > 1e-3, "the IP-Adapter must change the image"
    assert {CANNYXL, "tiny-ip-adapter-sdxl", "tiny-image-encoder"} <= set(result.metadata["models"])
    unet = pipe.cache.components("tiny-sdxl")["unet"]
    assert unet.encoder_hid_proj is None, "the IP-Adapter is taken off after the run"


MISSING = "/nonexistent/never-read.png"  # a refusal before any work never opens the control image


@pytest.mark.parametrize("fields,words", [
    (dict(controls=[sdcompose.Control("canny", image=MISSING, model=CANNY15)], init_image="photo"),
     "T2I-Adapters run text-to-image only"),
    (dict(controls=[sdcompose.Control("canny", image=MISSING, model=CANNY15),
                    sdcompose.Control("canny", image=MISSING)]), "cannot run in one request"),
    (dict(controls=[sdcompose.Control("canny", image=MISSING, model=CANNY15, start=0.2)]), "set start to 0"),
    (dict(controls=[sdcompose.Control("canny", image=MISSING, model=CANNY15, end=0.5)]),
     "has no adapter_conditioning_factor"),
    (dict(model="tiny-sdxl", controls=[sdcompose.Control("canny", image=MISSING, model=CANNYXL, end=0.5),
                                       sdcompose.Control("lineart", image=MISSING, model=LINEXL)]),
     "give every unit the same end"),
    (dict(controls=[sdcompose.Control("canny", image=MISSING, model=CANNY15, control_mode="prompt_first")]),
     "has no control modes"),
    (dict(controls=[sdcompose.Control("canny", image=MISSING, model=CANNY15)], hires={"scale": 2}),
     "hires fix cannot run with T2I-Adapter units"),
    (dict(controls=[sdcompose.Control("canny", image=MISSING, model=CANNY15)],
          ip_adapters=[sdcompose.IpAdapter("tiny-ip-adapter-sd15", MISSING)]),
     "IP-Adapters cannot run with T2I-Adapter units on a sd15 base"),
    (dict(controls=[sdcompose.Control("canny", image=MISSING, model=CANNYXL)]), "is sdxl; base 'tiny-sd15' is sd15"),
], ids=["img2img", "mixed", "start", "sd15-end", "ends", "control-mode", "hires", "sd15-ip-adapter", "family"])
def test_what_adapter_pipelines_cannot_run_is_refused_in_one_sentence(pipe, photo, fields, words):
    fields = dict(fields)
    if fields.get("init_image") == "photo":
        fields["init_image"] = photo
    fields.setdefault("model", "tiny-sd15")
    with pytest.raises(SdcomposeError) as caught:
        pipe.generate("a fox", width=SIZE, height=SIZE, steps=1, **fields)
    message = str(caught.value)
    assert words in message and "\n" not in message and "never-read" not in message


def test_cli_unit_with_an_adapter_model_then_reproduce(tmp_path, photo, home):
    from test_cli import cli
    out = tmp_path / "t2i.png"
    run = cli("generate", "--model", "tiny-sd15", "--control", f"canny={photo}:weight=0.7:model={CANNY15}",
              "--seed", "3", "-W", "64", "-H", "64", "--steps", "2", "-o", out, "a", "castle")
    assert run.returncode == 0, run.stderr
    again = cli("reproduce", out, "-o", tmp_path / "again.png")
    assert again.returncode == 0, again.stderr
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(tmp_path / "again.png")))
    refused = cli("generate", "--model", "tiny-sd15", "--control", f"canny={photo}:start=0.3:model={CANNY15}",
                  "-W", "64", "-H", "64", "--steps", "1", "-o", tmp_path / "no.png", "a castle")
    assert refused.returncode == 2 and "set start to 0" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and not (tmp_path / "no.png").exists()


def test_the_ui_unit_model_list_offers_the_family_t2i_adapters(pipe, tmp_path):
    from sdcompose.ui.form import Form
    from sdcompose.ui.handlers import Handlers
    from sdcompose.ui.sessions import Sessions
    from sdcompose.ui.widgets import conditioners
    form = Form(conditioners(pipe)[0], [], 1)
    handlers = Handlers(pipe, form, Sessions(tmp_path / "out"), ["tiny-sd15", "tiny-sdxl"])
    _loras, unit, _status = handlers.follow_model("tiny-sdxl", [], CANNYXL)
    offered = dict((value, label) for label, value in unit["choices"])
    assert unit["value"] == CANNYXL and "T2I-Adapter" in offered[CANNYXL] and LINEXL in offered
    assert "tiny-controlnet-canny-sdxl" in offered and CANNY15 not in offered
    _loras, unit, status = handlers.follow_model("tiny-sd15", [], CANNYXL)
    assert unit["value"] == "auto" and f"model {CANNYXL} is for sdxl; set to auto" in status
    kwargs = form.to_kwargs(form.defaults() | {"model": "tiny-sd15", "prompt": "a fox", "cn0_enable": True,
                                               "cn0_plugin": "canny", "cn0_image": Image.new("RGB", (64, 64)),
                                               "cn0_model": CANNY15})
    assert kwargs["controls"][0].model == CANNY15


def test_an_a1111_unit_naming_a_t2i_adapter_runs_it(pipe, photo):
    import base64

    from sdcompose.errors import FieldError
    from sdcompose.server.a1111_request import plan
    image = base64.b64encode(photo.read_bytes()).decode()

    def unit(model):
        return {"prompt": "a red fox", "seed": 5, "width": 64, "height": 64, "steps": 2, "cfg_scale": 6,
                "alwayson_scripts": {"controlnet": {"args": [{"module": "canny", "model": model, "image": image,
                                                              "weight": 0.9}]}}}
    named = plan(unit("t2iadapter_canny_sd15v2 [c2d6b5f4]"), "txt2img", "tiny-sd15", pipe.catalog).requests[0]
    assert named.controls[0].model == CANNY15  # the tiny base's stand-in for the family's canny T2I-Adapter
    by_id = plan(unit(f"{CANNY15} [0123abcd]"), "txt2img", "tiny-sd15", pipe.catalog).requests[0]
    assert by_id.controls[0].model == CANNY15
    direct = pipe.run(named.with_(controls=[sdcompose.Control("canny", photo, weight=0.9, model=CANNY15)]))
    assert np.array_equal(np.asarray(pipe.run(named).images[0]), np.asarray(direct.images[0]))
    with pytest.raises(FieldError, match="is a T2I-Adapter models.yaml lacks: add a sdxl t2i_adapter entry with "
                                         "conditioner: pose"):
        plan(unit("t2i-adapter-openpose-sdxl-1.0") | {"alwayson_scripts": {"controlnet": {"args": [
            {"module": "openpose", "model": "t2i-adapter-openpose-sdxl-1.0", "image": image}]}}},
             "txt2img", "tiny-sdxl", pipe.catalog)
