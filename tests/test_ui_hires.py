"""The page's hires fix section and Upscale tab without a server: form -> request, PNG -> form, the handlers."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import sdcompose
from sdcompose.ui.form import HIRES_DEFAULTS, RANGES, Form, Rejected
from sdcompose.ui.hires import Upscaling, upscaler_models
from test_ui_handlers import handlers_for, run_in_page

SMALL = dict(model="tiny-sd15", width=64, height=64, steps=2, seed=3, prompt="a castle")


def test_the_sections_defaults_and_ranges_are_the_request_schemas():
    assert HIRES_DEFAULTS == {"hires_enable": False, "hires_scale": 2.0, "hires_upscaler": "lanczos", "hires_steps": 0,
                              "hires_denoise": 0.5}
    assert RANGES["hires_scale"] == (1.0, 4.0) and RANGES["hires_steps"] == (0, 500)
    form = Form()
    assert "hires" not in form.to_kwargs(form.defaults() | SMALL), "off by default"
    values = form.defaults() | SMALL | dict(hires_enable=True, hires_scale=1.5, hires_steps=3, hires_denoise=0.4)
    assert form.to_kwargs(values)["hires"] == sdcompose.Hires(scale=1.5, upscaler="lanczos", steps=3, denoise=0.4)
    assert "hires" not in form.to_kwargs(values | {"task": "img2img", "init_image": Image.new("RGB", (64, 64))}), \
        "text to image only"


def test_a_hires_run_from_the_page_lists_both_passes_and_restores_the_section(pipe, tmp_path):
    handlers = handlers_for(tmp_path, pipe)
    values = dict(SMALL, hires_enable=True, hires_scale=2, hires_upscaler="tiny-upscaler-x2", hires_steps=2,
                  hires_denoise=0.6)
    *_, (gallery, info, status, seed, _, paths) = run_in_page(handlers, **values)
    assert "1 image(s), seed 3" in status, status
    image = Image.open(paths[0])
    meta = json.loads(image.text["sdcompose"])
    assert image.size == (128, 128) and [p["width"] for p in meta["passes"]] == [64, 128]
    assert meta["passes"][1]["upscaler"] == "tiny-upscaler-x2"
    restored, warnings = handlers.form.from_metadata(meta, {}, None)
    assert warnings == [] and {k: restored[k] for k in HIRES_DEFAULTS} == {
        "hires_enable": True, "hires_scale": 2.0, "hires_upscaler": "tiny-upscaler-x2", "hires_steps": 2,
        "hires_denoise": 0.6}
    direct = pipe.generate(**SMALL, hires=sdcompose.Hires(2, "tiny-upscaler-x2", 2, 0.6))
    assert np.array_equal(np.asarray(image.convert("RGB")), np.asarray(direct.images[0]))


def test_a_hires_scale_over_the_size_limit_is_one_sentence_in_the_status_line(pipe, tmp_path):
    handlers = handlers_for(tmp_path, pipe)
    *_, (*_, status, _, _, _) = run_in_page(handlers, **dict(SMALL, width=2048, height=2048, hires_enable=True,
                                                             hires_scale=4))
    assert status.startswith('<span class="sdc-error">') and "hires scale 4 makes 2048x2048 into 8192x8192" in status


def test_the_upscale_tab_saves_the_upscaled_image_with_its_metadata(pipe, photo, tmp_path):
    handlers = handlers_for(tmp_path, pipe)
    assert ("tiny-upscaler-x2 (test model: its output is noise)", "tiny-upscaler-x2") in upscaler_models(pipe)
    *_, (path, status) = Upscaling(pipe, handlers).run(None, str(photo), "tiny-upscaler-x2", 2)
    assert status.startswith("192x160 with tiny-upscaler-x2") and path.startswith(str(tmp_path / "out"))
    image = Image.open(path)
    assert "tiny-upscaler-x2" in json.loads(image.text["sdcompose"])["models"]
    direct = pipe.upscale(photo, model="tiny-upscaler-x2", scale=2)
    assert np.array_equal(np.asarray(image.convert("RGB")), np.asarray(direct.images[0]))


@pytest.mark.parametrize("image, model, scale, message", [
    (None, "tiny-upscaler-x2", 2, "upload an image to upscale first"),
    (Rejected("this file is not an image"), "tiny-upscaler-x2", 2, "The image to upscale: this file is not an image"),
    ("photo", "no-such-upscaler", 2, "no-such-upscaler"),
    ("photo", "tiny-upscaler-x2", 99, "scale must be a number from 1 to 8"),
])
def test_upscale_tab_errors_are_one_sentence_in_red(pipe, photo, tmp_path, image, model, scale, message):
    outputs = list(Upscaling(pipe, handlers_for(tmp_path, pipe)).run(None, str(photo) if image == "photo" else image,
                                                                     model, scale))
    _, status = outputs[-1]
    assert status.startswith('<span class="sdc-error">') and message in status and "Traceback" not in status
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("*.png"))
