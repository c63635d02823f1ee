"""The UI's form without a server: fields -> Pipeline arguments, PNG metadata -> fields, errors as page text."""
from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

import sdcompose
from sdcompose.metadata import read_png, save_png
from sdcompose.plugins.api import ParamSpec
from sdcompose.request import GenerationRequest
from sdcompose.ui.form import Form

CANNY = (ParamSpec("low_threshold", "int", 100, min=1, max=255),
         ParamSpec("high_threshold", "int", 200, min=1, max=255))


@pytest.fixture
def form():
    conditioners = {"canny": CANNY, "my-edges": (ParamSpec("blur", "float", 1.0),)}
    return Form(conditioners, ["tiny-lora-sd15", "tiny_lora_sd15"], 2)


@pytest.fixture
def handlers(pipe, tmp_path):
    from sdcompose.ui.handlers import Handlers
    from sdcompose.ui.sessions import Sessions
    form = Form({"canny": CANNY}, ["tiny-lora-sd15", "tiny-lora-sdxl"], 2)
    return Handlers(pipe, form, Sessions(tmp_path / "out"), ["tiny-sd15", "tiny-sdxl"])


def crafted_png(path, **request):
    """A PNG carrying sdcompose metadata for ``request`` (its control maps embedded), made without running a model."""
    req = GenerationRequest(**request)
    meta = {"format": 1, "task": "txt2img", "request": req.summary(), "seed": req.seed, "seeds": [req.seed]}
    inputs = {f"control-{i}": control.image for i, control in enumerate(req.controls)}
    return save_png(Image.new("RGB", (req.width, req.height), "gray"), meta, inputs, path)


def choice_ids(update):
    return [value for _, value in update["choices"]]


def test_defaults_make_a_plain_txt2img_request_with_a_random_seed(form):
    kwargs = form.to_kwargs(form.defaults() | {"model": "tiny-sd15", "prompt": "a fox"})
    assert kwargs["seed"] is None and kwargs["controls"] == [] and kwargs["loras"] == []
    assert "init_image" not in kwargs and "mask" not in kwargs and "strength" not in kwargs
    assert [kwargs[k] for k in ("prompt", "steps", "guidance", "scheduler")] == ["a fox", 20, 7.5, "dpmpp_2m"]
    assert (kwargs["memory"], kwargs["attention"], kwargs["vram"], kwargs["fast"]) == ("auto", "auto", None, False)
    assert form.to_kwargs(form.defaults() | {"vram": "6GB", "memory": "vae_tiling"})["vram"] == "6GB"


def test_units_loras_and_params_become_controls(form, photo):
    values = form.defaults() | {"seed": 42, "cn1_enable": True, "cn1_plugin": "canny", "cn1_image": str(photo),
                                "cn1_canny_low_threshold": 50, "cn1_weight": 0.6,
                                "cn1_model": "tiny-controlnet-canny-sd15",
                                "cn0_image": str(photo), "loras": ["tiny_lora_sd15"], form.lora("tiny_lora_sd15"): -0.5}
    kwargs = form.to_kwargs(values)
    [control] = kwargs["controls"]  # unit 0 has an image but is not enabled
    assert (control.id, control.weight, control.model, control.image) == ("canny", 0.6, "tiny-controlnet-canny-sd15",
                                                                          str(photo))
    assert control.params == {"low_threshold": 50, "high_threshold": 200}
    assert [(lora.id, lora.weight) for lora in kwargs["loras"]] == [("tiny_lora_sd15", -0.5)]
    assert kwargs["seed"] == 42
    assert form.lora("tiny-lora-sd15") != form.lora("tiny_lora_sd15"), "ids that slug alike keep distinct fields"
    assert form.param(0, "my-edges", "blur") == "cn0_my_edges_blur"


@pytest.mark.parametrize("changes,message", [
    ({"cn0_enable": True}, "ControlNet unit 1 has no image: upload one"),
    ({"cn0_enable": True, "cn0_plugin": "nope", "cn0_image": "x.png"}, "ControlNet unit 1: pick a conditioner"),
    ({"task": "img2img"}, "image to image needs an input image"),
    ({"task": "inpaint"}, "inpaint needs an image"),
    ({"task": "inpaint", "inpaint": {"background": "x.png", "layers": []}}, "inpaint needs a mask"),
    ({"task": "outpaint"}, "task must be one of txt2img, img2img, inpaint"),
    ({"seed": 1.5}, "seed must be a whole number"),
    ({"seed": "abc"}, "seed must be a whole number"),
    ({"seed": float("inf")}, "seed must be a whole number"),
    ({"seed": -2}, "seed must be -1 (random) or between 0 and 9223372036854775807, got -2"),
    ({"loras": ["papercut"]}, "no LoRA 'papercut' on offer"),
])
def test_what_the_form_must_fix_is_one_sentence(form, changes, message):
    with pytest.raises(sdcompose.ValidationError, match=re.escape(message)):
        form.to_kwargs(form.defaults() | changes)


def test_inpaint_mask_comes_from_painted_strokes_or_an_uploaded_mask(form, photo, mask):
    layer = np.zeros((64, 64, 4), np.uint8)
    layer[10:20, 30:40] = (255, 0, 102, 153)  # a stroke of the page's brush, 60% opaque
    values = form.defaults() | {"task": "inpaint", "strength": 0.5,
                                "inpaint": {"background": str(photo), "layers": [Image.fromarray(layer)]}}
    kwargs = form.to_kwargs(values)
    drawn = np.asarray(kwargs["mask"])
    assert kwargs["init_image"] == str(photo) and kwargs["strength"] == 0.5
    assert drawn[10:20, 30:40].min() == 255 and drawn.sum() == 255 * 100
    assert form.to_kwargs(values | {"mask": str(mask)})["mask"] == str(mask)


def test_metadata_restores_every_field_and_the_same_image(form, pipe, photo, tmp_path):
    form = Form({"canny": CANNY}, ["tiny-lora-sd15"], 2)
    made = pipe.generate(prompt="a <b>castle</b>", negative_prompt="fog", model="tiny-sd15", width=64, height=64,
                         steps=2, guidance=5.0, scheduler="euler", seed=11, init_image=photo, strength=0.6,
                         memory="vae_slicing", attention="sliced", vram="3GB",
                         controls=[sdcompose.Control("canny", photo, weight=0.7, end=0.8,
                                                     params={"low_threshold": 40})],
                         loras=[sdcompose.Lora("tiny-lora-sd15", 0.8)])
    [png] = made.save(tmp_path / "made.png")
    stored = []

    def store(name, image):
        stored.append(name)
        image.save(tmp_path / f"{name}.png")
        return str(tmp_path / f"{name}.png")

    values, warnings = form.from_metadata(*read_png(png), store)
    assert warnings == [] and list(values) == list(form.defaults())
    assert {k: values[k] for k in ("task", "prompt", "negative_prompt", "seed", "steps", "guidance", "scheduler",
                                   "strength", "loras", "lora_tiny_lora_sd15", "memory", "attention", "vram")} == {
        "task": "img2img", "prompt": "a <b>castle</b>", "negative_prompt": "fog", "seed": 11, "steps": 2,
        "guidance": 5.0, "scheduler": "euler", "strength": 0.6, "loras": ["tiny-lora-sd15"], "lora_tiny_lora_sd15": 0.8,
        "memory": "vae_slicing", "attention": "sliced", "vram": "3072MB"}
    assert values["cn0_enable"] and values["cn0_preprocessed"] and not values["cn1_enable"]
    assert (values["cn0_weight"], values["cn0_end"], values["cn0_canny_low_threshold"]) == (0.7, 0.8, 40)
    assert sorted(stored) == ["control-0", "init_image"]
    again = pipe.generate(**form.to_kwargs(values))
    assert np.array_equal(np.asarray(again.images[0]), np.asarray(made.images[0]))


def test_metadata_for_what_this_page_lacks_gives_warnings(form, pipe, photo, tmp_path):
    made = pipe.generate(model="tiny-sd15", width=64, height=64, steps=1, seed=1,
                         controls=[sdcompose.Control("canny", photo)], loras=[sdcompose.Lora("tiny-lora-sd15", 0.5)])
    [png] = made.save(tmp_path / "made.png")
    narrow = Form({}, [], 1)
    values, warnings = narrow.from_metadata(*read_png(png), lambda name, image: name)
    assert warnings == ["LoRA 'tiny-lora-sd15' is not in this server's models.yaml; left out",
                        "conditioner 'canny' is not installed here; its unit was left out"]
    assert values["loras"] == [] and values["cn0_enable"] is False


def test_errors_reach_the_page_as_escaped_text():
    import gradio as gr
    from sdcompose.ui.handlers import errors_in_page
    with pytest.raises(gr.Error) as caught, errors_in_page():
        raise sdcompose.ValidationError("no model '<img src=x onerror=alert(1)>'")
    assert caught.value.message == "no model '&lt;img src=x onerror=alert(1)&gt;'"
    assert caught.value.title == "Invalid request"
    with pytest.raises(gr.Error) as caught, errors_in_page():
        raise KeyError("<b>")
    assert caught.value.title == "Internal error" and "&lt;b&gt;" in caught.value.message


def test_importing_the_ui_loads_no_model_code():
    import subprocess
    import sys
    code = ("import sys, sdcompose.ui.app, sdcompose.ui.serve; "
            "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "[]", run.stderr


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_lora_and_controlnet_choices_follow_the_models_family(handlers, pipe, family):
    import gradio as gr
    families = {entry.id: entry.family for entry in pipe.catalog.entries.values()}
    lora, controlnet = f"tiny-lora-{family}", f"tiny-controlnet-canny-{family}"
    loras, *units, status = handlers.follow_model(f"tiny-{family}", [lora], controlnet, "auto")
    assert lora in choice_ids(loras) and {families[x] for x in choice_ids(loras)} == {family}
    assert loras["value"] == [lora]
    for unit, value in zip(units, [controlnet, "auto"]):
        first, *rest = choice_ids(unit)
        assert first == "auto" and controlnet in rest and {families[x] for x in rest} == {family}
        assert unit["value"] == value
    assert status == gr.skip(), "nothing cleared: the status line keeps what it said"
    everything = handlers.follow_model("not-in-the-catalogue", [], "auto", "auto")
    assert {families[x] for x in choice_ids(everything[0])} == {"sd15", "sdxl"}


def test_selections_of_the_other_family_are_cleared_with_a_note(handlers):
    loras, unit0, unit1, status = handlers.follow_model(
        "tiny-sdxl", ["tiny-lora-sd15", "tiny-lora-sdxl"], "tiny-controlnet-canny-sd15", "no-such-controlnet")
    assert loras["value"] == ["tiny-lora-sdxl"] and unit0["value"] == unit1["value"] == "auto"
    assert status == ("LoRA tiny-lora-sd15 is for sd15; cleared. ControlNet unit 1: model tiny-controlnet-canny-sd15 "
                      "is for sd15; set to auto. ControlNet unit 2: model no-such-controlnet is not in this server's "
                      "models.yaml; set to auto.")


def test_restoring_an_image_of_the_other_family_keeps_its_loras_and_controlnet(handlers, tmp_path):
    control = sdcompose.Control("canny", Image.new("RGB", (64, 64)), model="tiny-controlnet-canny-sdxl",
                                preprocessed=True)
    png = crafted_png(tmp_path / "sdxl.png", prompt="a tower", model="tiny-sdxl", width=64, height=64, steps=2,
                      seed=9, loras=[sdcompose.Lora("tiny-lora-sdxl", 0.6)], controls=[control])
    restored = dict(zip(handlers.names, handlers.restore(None, str(png))))
    assert (restored["model"], restored["prompt"], restored["seed"]) == ("tiny-sdxl", "a tower", 9)
    assert (restored["loras"], restored["lora_tiny_lora_sdxl"]) == (["tiny-lora-sdxl"], 0.6)
    assert restored["cn0_enable"] and restored["cn0_model"] == "tiny-controlnet-canny-sdxl"
    assert Image.open(restored["cn0_image"]).size == (64, 64)
    # The page then narrows the pickers to the restored model's family: the restored selections stay.
    loras, unit0, unit1, status = handlers.follow_model(restored["model"], restored["loras"], restored["cn0_model"],
                                                        restored["cn1_model"])
    assert loras["value"] == ["tiny-lora-sdxl"] and (unit0["value"], unit1["value"]) == (control.model, "auto")
    assert "tiny-lora-sd15" not in choice_ids(loras)


def test_the_adapters_list_restores_its_loras_and_names_what_the_page_lacks(form, tmp_path):
    png = crafted_png(tmp_path / "adapters.png", model="tiny-sd15", seed=4,
                      adapters=[sdcompose.AdapterUse("tiny-lora-sd15", -0.5), sdcompose.AdapterUse("other-lora", 0.3)])
    values, warnings = form.from_metadata(*read_png(png), lambda name, image: name)
    assert values["loras"] == ["tiny-lora-sd15"] and values[form.lora("tiny-lora-sd15")] == -0.5
    assert warnings == ["adapter 'other-lora' (from the request's adapters list) is not offered on this page; left out"]
