"""Attention backends: the same image from sdpa and sliced, processors switched and back, clear refusals."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

import sdcompose
from sdcompose.pipelines import attention


def run(pipe, photo, backend):
    return pipe.generate("a red fox", model="tiny-sd15", controls=[sdcompose.Control("canny", image=photo)],
                         width=64, height=64, steps=2, seed=5, attention=backend)


def processors(pipe):
    unet = pipe.cache.components("tiny-sd15")["unet"]
    return {type(p).__name__ for p in unet.attn_processors.values()}


def test_sliced_matches_sdpa_and_switches_back(pipe, photo):
    sdpa = run(pipe, photo, "sdpa")
    assert processors(pipe) == {"AttnProcessor2_0"}
    sliced = run(pipe, photo, "sliced")
    assert processors(pipe) == {"SlicedAttnProcessor"}
    assert sliced.metadata["attention"] == {"backend": "sliced", "reason": "as asked"}
    assert np.abs(sliced.arrays[0] - sdpa.arrays[0]).max() < 1e-4
    again = run(pipe, photo, "auto")
    assert processors(pipe) == {"AttnProcessor2_0"}
    assert again.metadata["attention"]["backend"] == "sdpa"
    assert np.array_equal(again.arrays[0], sdpa.arrays[0])


def test_auto_never_depends_on_what_is_installed():
    assert attention.choose("auto", "cuda")[0] == "sdpa"
    assert attention.choose("auto", "cpu")[0] == "sdpa"


@pytest.mark.skipif(importlib.util.find_spec("xformers") is not None, reason="xformers is installed here")
def test_missing_xformers_says_how_to_get_it(pipe):
    with pytest.raises(sdcompose.ValidationError, match=r"needs the xformers package: pip install"):
        pipe.generate("x", model="tiny-sd15", width=64, height=64, steps=1, attention="xformers")


def test_xformers_is_cuda_only():
    if importlib.util.find_spec("xformers") is None:
        pytest.skip("xformers is not installed")
    with pytest.raises(sdcompose.ValidationError, match="CUDA only"):
        attention.choose("xformers", "cpu")
