"""Out of memory mid-generation and cancel at step 3 of 20: a clear error, adapters taken off, nothing held
by the error, and the next request equals one made by a fresh Pipeline."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

import sdcompose

SMALL = dict(prompt="a red fox", model="tiny-sd15", width=64, height=64, seed=11)
LORA = [sdcompose.Lora("tiny-lora-sd15", 0.9)]


@pytest.fixture(scope="module")
def fresh_images():
    """What a fresh Pipeline makes for the requests below, made before any fault."""
    p = sdcompose.Pipeline(device="cpu")
    return {name: p.generate(steps=steps, loras=loras, **SMALL).arrays[0]
            for name, steps, loras in (("plain-2", 2, []), ("lora-2", 2, LORA))}


def frames_of(exc: BaseException) -> list[str]:
    names, tb = [], exc.__traceback__
    while tb is not None:
        names.append(tb.tb_frame.f_globals.get("__name__", ""))
        tb = tb.tb_next
    return names


def oom_at(step: int):
    def progress(i: int, n: int) -> None:
        if i == step:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    return progress


@pytest.mark.parametrize("loras", [[], LORA], ids=["plain", "with-lora"])
def test_out_of_memory_mid_generation_then_next_request_equals_fresh(pipe, fresh_images, loras):
    with pytest.raises(sdcompose.OutOfMemory) as err:
        pipe.generate(steps=4, loras=loras, progress=oom_at(2), **SMALL)
    message = str(err.value)
    assert message.startswith("out of cpu memory at 64x64, batch 1") and "lower the size or batch" in message
    # the error holds no diffusers frame (and so no latents or activations) and no chained OOM traceback
    assert err.value.__context__ is None and err.value.__cause__ is None
    assert not any(name.startswith(("diffusers", "torch")) for name in frames_of(err.value))
    del err
    after_plain = pipe.generate(steps=2, **SMALL).arrays[0]
    assert np.array_equal(after_plain, fresh_images["plain-2"])  # the LoRA was taken off
    assert np.array_equal(pipe.generate(steps=2, loras=LORA, **SMALL).arrays[0], fresh_images["lora-2"])


@pytest.mark.parametrize("loras", [[], LORA], ids=["plain", "with-lora"])
def test_cancel_at_step_3_of_20_stops_within_a_step(pipe, fresh_images, loras):
    cancel, seen = threading.Event(), []

    def progress(i: int, n: int) -> None:
        seen.append((i, n))
        if i == 3:
            cancel.set()

    with pytest.raises(sdcompose.Cancelled, match="cancelled at step 4 of 20") as err:
        pipe.generate(steps=20, loras=loras, progress=progress, cancel=cancel, **SMALL)
    assert seen == [(1, 20), (2, 20), (3, 20)]  # no step after the 4th began
    assert err.value.__context__ is None
    assert not any(name.startswith("diffusers") for name in frames_of(err.value))
    assert np.array_equal(pipe.generate(steps=2, **SMALL).arrays[0], fresh_images["plain-2"])


def test_cancel_set_before_start_runs_no_step(pipe, fresh_images):
    cancel, seen = threading.Event(), []
    cancel.set()
    with pytest.raises(sdcompose.Cancelled, match="at step 1 of"):
        pipe.generate(steps=20, progress=lambda i, n: seen.append(i), cancel=cancel, **SMALL)
    assert seen == []
    assert np.array_equal(pipe.generate(steps=2, **SMALL).arrays[0], fresh_images["plain-2"])


def test_cancel_from_another_thread(pipe, fresh_images):
    cancel, started, seen = threading.Event(), threading.Event(), []

    def progress(i: int, n: int) -> None:
        seen.append(i)
        started.set()
        cancel.wait(5) if i == 2 else None  # hold step 2 until the other thread has cancelled

    threading.Thread(target=lambda: (started.wait(10), cancel.set()), daemon=True).start()
    with pytest.raises(sdcompose.Cancelled):
        pipe.generate(steps=20, progress=progress, cancel=cancel, **SMALL)
    assert max(seen) <= 3
    assert np.array_equal(pipe.generate(steps=2, **SMALL).arrays[0], fresh_images["plain-2"])


def test_an_error_in_the_progress_callback_is_the_callers_and_leaves_nothing_behind(pipe, fresh_images):
    def progress(i: int, n: int) -> None:
        if i == 2:
            raise KeyError("the caller's own bug")

    with pytest.raises(KeyError, match="the caller's own bug"):
        pipe.generate(steps=4, loras=LORA, progress=progress, **SMALL)
    assert np.array_equal(pipe.generate(steps=2, **SMALL).arrays[0], fresh_images["plain-2"])
