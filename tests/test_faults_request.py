"""Out-of-bounds requests (sizes, steps, guidance NaN, negative seed, a 1 MB prompt, batch, too many
controls/LoRAs): a ValidationError with one clear sentence before any model loads or GPU work starts."""
from __future__ import annotations

import math

import pytest

import sdcompose
from sdcompose.request import GenerationRequest, validate

OK = dict(prompt="x", model="tiny-sd15", width=64, height=64, steps=2, seed=1)


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    """A Pipeline over an empty models root: any load would build something into it."""
    import os
    home = tmp_path_factory.mktemp("fresh-home")
    old = os.environ["SDCOMPOSE_HOME"]
    os.environ["SDCOMPOSE_HOME"] = str(home)
    try:
        p = sdcompose.Pipeline(device="cpu")
    finally:
        os.environ["SDCOMPOSE_HOME"] = old
    return p, home


def refused(fresh, match: str, **changes) -> str:
    p, home = fresh
    with pytest.raises(sdcompose.ValidationError, match=match) as err:
        p.generate(**(OK | changes))
    assert p.cache.loaded()["base"] == [] and not (home / "models").exists()
    message = str(err.value)
    assert "\n" not in message and len(message) < 300, message
    return message


@pytest.mark.parametrize("name", ["width", "height"])
@pytest.mark.parametrize("value,match", [
    (100, r"must be a multiple of 8, got 100 \(try 96\)"),
    (0, "must be between 64 and 4096, got 0"),
    (100000, "must be between 64 and 4096, got 100000"),
    (-64, "must be between"),
    (64.5, "must be a whole number"),
    ("wide", "must be a number"),
    (math.inf, "must be a finite number"),
    (10**400, "must be between 64 and 4096, got a 401-digit number"),
])
def test_bad_width_and_height(fresh, name, value, match):
    refused(fresh, f"{name} {match}", **{name: value})


@pytest.mark.parametrize("value,match", [(0, "steps must be between 1 and 500, got 0"),
                                         (10**6, "steps must be between 1 and 500, got 1000000"),
                                         (2.5, "steps must be a whole number")])
def test_bad_steps(fresh, value, match):
    refused(fresh, match, steps=value)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, float("nan")])
def test_guidance_nan_or_infinite(fresh, value):
    refused(fresh, "guidance must be a finite number", guidance=value)


@pytest.mark.parametrize("value,match", [(-1, r"seed must be >= 0"), (-(2**70), "seed must be >= 0"),
                                         (2**64, "seed must be between"), (1.5, "whole number"),
                                         ("abc", "must be a number"), (10**400, "digit number")])
def test_negative_or_bad_seed(fresh, value, match):
    refused(fresh, match, seed=value)


def test_one_megabyte_prompt(fresh):
    message = refused(fresh, "prompt is 1048576 characters; the limit is 20000", prompt="a" * 2**20)
    assert "aaaa" not in message  # the prompt itself is not echoed back
    refused(fresh, "negative_prompt is", negative_prompt="b" * 2**20)


@pytest.mark.parametrize("prompt,match", [("a\x00b", "NUL"), ("\ud800", "lone surrogate"), (b"bytes", "must be text"),
                                          (None, "must be text")])
def test_prompt_that_is_not_clean_text(fresh, prompt, match):
    refused(fresh, match, prompt=prompt)


@pytest.mark.parametrize("value,match", [(0, "batch must be between 1 and 16, got 0"),
                                         (1000, "batch must be between 1 and 16, got 1000")])
def test_bad_batch(fresh, value, match):
    refused(fresh, match, batch=value)


def test_too_many_controls_and_loras(fresh, photo):
    refused(fresh, "at most 8 controls per request, got 9", controls=[sdcompose.Control("canny", photo)] * 9)
    loras = [sdcompose.Lora(f"l{i}") for i in range(17)]
    refused(fresh, "at most 16 LoRAs per request, got 17", loras=loras)


@pytest.mark.parametrize("changes,match", [
    (dict(scheduler="euler_ancestral"), "scheduler 'euler_ancestral' is not one of"),
    (dict(scheduler=["ddim"]), "scheduler"),
    (dict(model=""), "model"),
    (dict(model=["tiny-sd15"]), "model"),
    (dict(strength=2.0), "strength must be between 0 and 1"),
    (dict(loras=[sdcompose.Lora("a", weight=math.nan)]), "finite"),
    (dict(loras=[sdcompose.Lora(["a"])]), r"loras\[0\] id"),
    (dict(loras=["tiny-lora-sd15"]), r"loras\[0\] must be sdcompose.Lora"),
    (dict(loras=[sdcompose.Lora("a"), sdcompose.Lora("a")]), "listed twice"),
    (dict(controls=[sdcompose.Control("canny", None)]), "needs an image"),
    (dict(controls=[sdcompose.Control({"x": 1}, "img.png")]), r"controls\[0\] id"),
    (dict(controls=[sdcompose.Control("canny", "img.png", start=0.8, end=0.2)]), "must be below end"),
    (dict(controls=[sdcompose.Control("canny", "img.png", weight=-1)]), "weight must be between 0 and 4"),
    (dict(controls=[sdcompose.Control("canny", "img.png", model=5)]), "model"),
    (dict(controls=[sdcompose.Control("canny", "img.png", params=[1])]), "params must be a mapping"),
    (dict(controls=[sdcompose.Control("canny", "img.png", resize_mode="stretch")]), "resize_mode"),
    (dict(add_trigger_words="yes"), "add_trigger_words"),
    (dict(mask="m.png"), "a mask needs an init_image"),
])
def test_other_bad_fields(fresh, changes, match):
    refused(fresh, match, **changes)


def test_not_a_list_of_controls_or_loras():
    for name in ("controls", "loras"):
        with pytest.raises(sdcompose.ValidationError, match=f"{name} must be a list"):
            validate(GenerationRequest(**{name: None}))
    with pytest.raises(sdcompose.ValidationError, match="expected a GenerationRequest"):
        validate({"prompt": "x"})


def test_a_valid_request_is_normalised():
    req = validate(GenerationRequest(width="64", height=64.0, steps="3", guidance=7, seed="12", batch=2.0,
                                     controls=(sdcompose.Control("canny", "x.png", weight=1),)))
    assert (req.width, req.height, req.steps, req.guidance, req.seed, req.batch) == (64, 64, 3, 7.0, 12, 2)
    assert isinstance(req.controls, list) and isinstance(req.controls[0].weight, float)
