"""Bad input for the few-step samplers and the hires fix: one sentence each, before any model loads, from the Python
API and the CLI (the HTTP APIs' and the page's: test_server_http.py, test_ui_hires.py)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from PIL import Image

import sdcompose


@pytest.mark.parametrize("changes, message", [
    (dict(scheduler="lcm", steps=100), "steps 100 is too many for the lcm sampler: it takes at most 50 (its"),
    (dict(scheduler="LCM", steps=51), "steps 51 is too many for the lcm sampler"),
    (dict(scheduler="tcd", steps=40, init_image=Image.new("RGB", (64, 64)), strength=0.5),
     "steps 40 is too many for the tcd sampler: it takes at most 25 at strength 0.5"),
    (dict(scheduler="lcm", steps=8, hires={"steps": 40, "denoise": 0.5}),
     "hires steps 40 is too many for the lcm sampler: it takes at most 25 at strength 0.5"),
    (dict(scheduler="lcm", steps=60, hires={"denoise": 0.5}), "steps 60 is too many"),
])
def test_a_few_step_sampler_with_more_steps_than_its_schedule_is_one_sentence(changes, message):
    with pytest.raises(sdcompose.ValidationError) as caught:
        sdcompose.GenerationRequest(prompt="x", model="tiny-sd15", width=64, height=64, **changes)
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_the_few_step_limit_leaves_the_usual_requests_alone():
    assert sdcompose.GenerationRequest(scheduler="lcm", steps=50).steps == 50
    assert sdcompose.GenerationRequest(scheduler="lcm", steps=4, init_image=Image.new("RGB", (64, 64)),
                                       strength=0.1).steps == 4
    assert sdcompose.GenerationRequest(scheduler="euler", steps=150).steps == 150


@pytest.mark.parametrize("args, message", [
    (["--sampler", "lcm", "--steps", "100"], "steps 100 is too many for the lcm sampler"),
    (["-W", "2048", "-H", "2048", "--hires-scale", "4"], "hires scale 4 makes 2048x2048 into 8192x8192"),
])
def test_the_cli_says_it_in_one_line_and_loads_nothing(home, tmp_path, args, message):
    run = subprocess.run([sys.executable, "-m", "sdcompose.cli", "generate", "--model", "tiny-sd15", "--device", "cpu",
                          "-o", str(tmp_path / "x.png"), *args, "a castle"], capture_output=True, text=True,
                         env=os.environ | {"SDCOMPOSE_DEBUG": ""}, timeout=300)
    assert run.returncode != 0 and message in run.stderr, run.stderr
    assert "Traceback" not in run.stderr and len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert not (tmp_path / "x.png").exists()
