"""The public Python API as users call it: the documented snippet, metadata, reproduce, batches, LoRA state."""
from __future__ import annotations

import json
import shutil

import diffusers
import numpy as np
import pytest
from PIL import Image

import sdcompose
from sdcompose.images import open_image
from conftest import max_diff


def small(pipe, **kw):
    kw = dict(prompt="a lighthouse", model="tiny-sd15", width=64, height=64, steps=2, seed=3) | kw
    return pipe.generate(**kw)


def test_readme_snippet_runs_as_written(tmp_path, photo, monkeypatch):
    shutil.copy(photo, tmp_path / "photo.png")
    monkeypatch.chdir(tmp_path)
    pipe = sdcompose.Pipeline(models=None, device=None, dtype=None)
    result = pipe.generate(
        prompt="a knight, oil painting", negative_prompt="",
        model="tiny-sd15",
        controls=[sdcompose.Control("canny", image="photo.png", weight=1.0, start=0.0, end=1.0, params={})],
        loras=[sdcompose.Lora("tiny-lora-sd15", weight=0.8)],
        init_image=None, strength=0.75, mask=None,
        width=512, height=512, steps=20, guidance=7.5, scheduler="dpmpp_2m", seed=0, batch=1)
    assert [im.size for im in result.images] == [(512, 512)]
    assert result.metadata["request"]["prompt"] == "a knight, oil painting"
    result.save("out.png")
    again = pipe.reproduce("out.png")
    assert np.array_equal(np.asarray(again.images[0]), np.asarray(Image.open("out.png").convert("RGB")))
    composed = pipe.diffusers_pipeline(model="tiny-sd15", controls=[sdcompose.Control("canny", image="photo.png")])
    assert isinstance(composed, diffusers.StableDiffusionControlNetPipeline)
    assert {p["id"] for p in pipe.plugins()} >= {"canny", "lora"}


def test_metadata_names_every_parameter_model_hash_and_version(pipe, photo):
    result = small(pipe, controls=[sdcompose.Control("canny", image=photo, params={"low_threshold": 50})],
                   loras=[sdcompose.Lora("tiny-lora-sd15", 0.5)])
    meta = result.metadata
    assert meta["request"]["steps"] == 2 and meta["request"]["controls"][0]["params"] == {"low_threshold": 50}
    assert set(meta["models"]) == {"tiny-sd15", "tiny-controlnet-canny-sd15", "tiny-lora-sd15"}
    unet_hash = meta["models"]["tiny-sd15"]["sha256"]["unet/diffusion_pytorch_model.safetensors"]
    assert len(unet_hash) == 64
    assert meta["plugins"]["canny"]["package"] == "sdcompose"
    assert meta["versions"]["diffusers"] == diffusers.__version__
    assert meta["dtype"] == "float32" and meta["device"] == "cpu"
    assert "noise" in meta["note"]


def test_saved_png_carries_metadata_and_inputs(pipe, photo, tmp_path):
    result = small(pipe, controls=[sdcompose.Control("canny", image=photo)])
    [path] = result.save(tmp_path / "one.png")
    with Image.open(path) as image:
        stored = json.loads(image.text["sdcompose"])
        assert "Steps: 2" in image.text["parameters"]
    assert stored["seed"] == 3 and stored["models"] == json.loads(json.dumps(result.metadata["models"]))
    meta, inputs = sdcompose.metadata.read_png(path)
    assert np.array_equal(np.asarray(open_image(inputs["control-0"])), np.asarray(result.inputs["control-0"]))


def test_batch_gets_one_seed_per_image_and_numbered_files(pipe, tmp_path):
    result = small(pipe, batch=2, seed=10)
    assert result.metadata["seeds"] == [10, 11]
    paths = result.save(tmp_path / "b.png")
    assert [p.name for p in paths] == ["b-1.png", "b-2.png"]
    second = pipe.reproduce(paths[1])
    assert max_diff(second.arrays[0], result.arrays[1]) <= 1e-5
    assert max_diff(result.arrays[0], result.arrays[1]) > 1e-3


@pytest.mark.parametrize("task", ["img2img", "inpaint"])
def test_reproduce_is_pixel_identical_with_embedded_inputs(pipe, photo, mask, tmp_path, task):
    extra = {"init_image": photo, "strength": 0.7} | ({"mask": mask} if task == "inpaint" else {})
    result = small(pipe, controls=[sdcompose.Control("canny", image=photo, weight=0.6)],
                   loras=[sdcompose.Lora("tiny-lora-sd15", 0.9)], **extra)
    [path] = result.save(tmp_path / f"{task}.png")
    again = pipe.reproduce(path)
    assert again.metadata["task"] == task
    assert np.array_equal(np.asarray(again.images[0]), np.asarray(Image.open(path).convert("RGB")))


def test_lora_state_does_not_leak_between_requests(pipe):
    before = small(pipe)
    with_lora = small(pipe, loras=[sdcompose.Lora("tiny-lora-sd15", 1.0)])
    after = small(pipe)
    assert max_diff(before.arrays[0], with_lora.arrays[0]) > 1e-3
    assert max_diff(before.arrays[0], after.arrays[0]) <= 1e-6
    fresh = small(sdcompose.Pipeline(device="cpu"))
    assert max_diff(fresh.arrays[0], after.arrays[0]) <= 1e-6


def test_lora_weight_scales_its_effect(pipe):
    base = small(pipe)
    half = small(pipe, loras=[sdcompose.Lora("tiny-lora-sd15", 0.5)])
    full = small(pipe, loras=[sdcompose.Lora("tiny-lora-sd15", 1.0)])
    assert 0 < max_diff(base.arrays[0], half.arrays[0]) < max_diff(base.arrays[0], full.arrays[0])


def test_trigger_words_added_only_when_asked(pipe):
    plain = small(pipe, loras=[sdcompose.Lora("tiny-lora-sd15", 0.5)])
    asked = small(pipe, loras=[sdcompose.Lora("tiny-lora-sd15", 0.5)], add_trigger_words=True)
    spelled = small(pipe, prompt="a lighthouse, tinystyle", loras=[sdcompose.Lora("tiny-lora-sd15", 0.5)])
    assert max_diff(asked.arrays[0], spelled.arrays[0]) <= 1e-6
    assert max_diff(asked.arrays[0], plain.arrays[0]) > 1e-4


@pytest.mark.parametrize("scheduler", ["ddim", "euler", "euler_a", "dpmpp_2m", "dpmpp_2m_karras", "unipc"])
def test_every_scheduler_runs_and_is_deterministic(pipe, photo, scheduler):
    """Schedulers are kept between requests: an img2img run of another length in between changes nothing."""
    a = small(pipe, scheduler=scheduler)
    small(pipe, scheduler=scheduler, steps=5, init_image=photo, strength=0.5, seed=9)
    b = small(pipe, scheduler=scheduler)
    assert np.isfinite(a.arrays[0]).all()
    assert max_diff(a.arrays[0], b.arrays[0]) == 0


def test_family_mismatch_is_refused_before_loading(home):
    pipe = sdcompose.Pipeline(device="cpu")
    with pytest.raises(sdcompose.ModelError, match="lora 'tiny-lora-sd15' is sd15; base 'tiny-sdxl' is sdxl"):
        pipe.generate(model="tiny-sdxl", loras=[sdcompose.Lora("tiny-lora-sd15")], width=64, height=64, steps=1)
    with pytest.raises(sdcompose.ModelError, match="is sdxl; base 'tiny-sd15' is sd15"):
        pipe.generate(model="tiny-sd15", controls=[sdcompose.Control("canny", image=np.zeros((8, 8, 3), np.uint8),
                                                                     model="tiny-controlnet-canny-sdxl")],
                      width=64, height=64, steps=1)
    assert pipe.cache.loaded() == {"base": [], "controlnet": [], "t2i_adapter": []}


def test_five_controlnets_in_one_request_are_each_loaded_once_and_run(home, photo):
    """More ControlNets than the cache keeps between requests: the pipeline runs the very modules that were placed."""
    pipe = sdcompose.Pipeline(device="cpu")
    loaded = []
    load = pipe.loader.controlnet
    pipe.loader.controlnet = lambda entry, dtype: (loaded.append(entry.id), load(entry, dtype))[1]
    kinds = ["canny", "depth", "openpose", "softedge", "lineart"]
    controls = [sdcompose.Control("canny", photo, preprocessed=True, model=f"tiny-controlnet-{k}-sd15") for k in kinds]
    small(pipe, controls=controls)
    assert sorted(loaded) == sorted(f"tiny-controlnet-{k}-sd15" for k in kinds)
    composed = pipe.diffusers_pipeline("tiny-sd15", controls)
    assert [id(net) for net in composed.controlnet.nets] == [id(pipe.cache.controlnet_module(i)) for i in pipe.cache.loaded()["controlnet"]]
    assert len(loaded) == 5


def test_unknown_ids_suggest_the_nearest(pipe):
    with pytest.raises(sdcompose.ModelError, match="did you mean 'tiny-sd15'"):
        small(pipe, model="tiny-sd51")
    with pytest.raises(sdcompose.PluginError, match="did you mean 'canny'"):
        small(pipe, controls=[sdcompose.Control("cany", image=np.zeros((8, 8, 3), np.uint8))])
    with pytest.raises(sdcompose.ValidationError, match="did you mean 'euler_a'"):
        small(pipe, scheduler="euler-a")


def test_preprocess_returns_the_control_map(pipe, photo):
    edges = pipe.preprocess("canny", photo, low_threshold=50, high_threshold=150)
    array = np.asarray(edges)
    assert edges.size == Image.open(photo).size and set(np.unique(array)) <= {0, 255} and array.max() == 255


@pytest.mark.parametrize("model", ["tiny-sd15", "tiny-sdxl"])
def test_step_previews_come_every_step_without_changing_the_image(pipe, model):
    seen = []
    result = small(pipe, model=model, steps=3, preview=lambda step, total, image: seen.append((step, total, image)))
    assert [(s, t) for s, t, _ in seen] == [(1, 3), (2, 3), (3, 3)]
    assert all(image.size == (32, 32) and image.mode == "RGB" for _, _, image in seen)
    assert np.asarray(seen[0][2]).std() > 0
    assert max_diff(result.arrays[0], small(pipe, model=model, steps=3).arrays[0]) == 0
