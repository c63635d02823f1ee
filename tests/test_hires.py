"""Hires fix: two passes in one request over one model cache, recorded pass by pass, reproduced pixel for pixel."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import sdcompose

SMALL = dict(prompt="a castle", model="tiny-sd15", width=64, height=64, steps=2, seed=5)


def test_two_passes_recorded_and_reproduced_with_an_upscaler_and_a_control(pipe, photo, tmp_path):
    result = pipe.generate(**SMALL, controls=[sdcompose.Control("canny", photo)],
                           hires=sdcompose.Hires(scale=2, upscaler="tiny-upscaler-x2", steps=3, denoise=0.6))
    assert result.images[0].size == (128, 128)
    first, second = result.metadata["passes"]
    assert (first["width"], first["steps"], second["width"], second["steps"], second["strength"]) == (64, 2, 128, 3, 0.6)
    assert second["upscaler"] == "tiny-upscaler-x2" and second["task"] == "img2img"
    assert set(result.metadata["models"]) == {"tiny-sd15", "tiny-controlnet-canny-sd15", "tiny-upscaler-x2"}
    assert result.metadata["request"]["hires"] == {"scale": 2.0, "upscaler": "tiny-upscaler-x2", "steps": 3,
                                                   "denoise": 0.6}
    path, = result.save(tmp_path / "h.png")
    assert np.array_equal(np.asarray(pipe.reproduce(path).images[0]), np.asarray(result.images[0]))


@pytest.mark.parametrize("hires, changes, message", [
    ({"scale": 4}, {"width": 2048, "height": 2048}, "hires scale 4 makes 2048x2048 into 8192x8192, more than the limit"),
    ({"scale": 5}, {}, "hires.scale"),
    ({"denoise": 0}, {}, "hires denoise must be above 0"),
    ({}, {"init_image": Image.new("RGB", (64, 64))}, "hires fix is for text to image"),
])
def test_bad_hires_requests_are_one_sentence_before_any_work(hires, changes, message):
    with pytest.raises(sdcompose.ValidationError, match=message):
        sdcompose.GenerationRequest(**{**SMALL, **changes}, hires=hires)


def test_an_unknown_upscaler_is_refused_before_the_first_pass(pipe):
    steps = []
    with pytest.raises(sdcompose.ModelError, match="no model 'no-such-upscaler'"):
        pipe.generate(**SMALL, hires={"upscaler": "no-such-upscaler"}, progress=lambda s, t: steps.append(s))
    assert steps == []


def test_the_cli_runs_64_to_128_and_reproduces_it(tmp_path, home):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "sdcompose.cli", *map(str, args)], capture_output=True, text=True,
                              env=os.environ | {"SDCOMPOSE_DEBUG": ""}, timeout=600)
    out = tmp_path / "hires.png"
    run = cli("generate", "--model", "tiny-sd15", "-W", "64", "-H", "64", "--steps", "2", "--seed", "7", "--hires-scale",
              "2", "--hires-steps", "2", "--device", "cpu", "-q", "-o", out, "a castle")
    assert run.returncode == 0, run.stderr
    again = cli("reproduce", out, "-o", tmp_path / "again.png", "--device", "cpu")
    assert again.returncode == 0, again.stderr
    with Image.open(out) as image:
        meta = json.loads(image.text["sdcompose"])
        assert image.size == (128, 128)
        assert [(p["pass"], p["width"], p["height"]) for p in meta["passes"]] == [(1, 64, 64), (2, 128, 128)]
        assert np.array_equal(np.asarray(image), np.asarray(Image.open(tmp_path / "again.png")))
