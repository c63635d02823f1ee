"""Requests at once from several threads with different LoRAs: each image equals the one made alone;
a request with a LoRA, then one without: the second equals the no-LoRA image."""
from __future__ import annotations

import threading

import numpy as np
import pytest

import sdcompose

SMALL = dict(prompt="a red fox", model="tiny-sd15", width=64, height=64, steps=2)
REQUESTS = {
    "lora-a": dict(loras=[sdcompose.Lora("tiny-lora-sd15", 1.0)], seed=1),
    "lora-b": dict(loras=[sdcompose.Lora("tiny-lora-b", 0.7)], seed=1),
    "both": dict(loras=[sdcompose.Lora("tiny-lora-sd15", 0.5), sdcompose.Lora("tiny-lora-b", 0.5)], seed=2),
    "none": dict(loras=[], seed=1),
}


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One Pipeline with a second, differently seeded tiny LoRA, and each request's image made alone."""
    yaml = tmp_path_factory.mktemp("concurrency") / "models.yaml"
    yaml.write_text("version: 1\nmodels:\n  tiny-lora-b:\n    kind: lora\n    family: sd15\n    tiny: true\n")
    alone = {}
    for name, request in REQUESTS.items():  # each in its own Pipeline: no state from any other request
        alone[name] = sdcompose.Pipeline(yaml, device="cpu").generate(**SMALL, **request).arrays[0]
    assert not np.array_equal(alone["lora-a"], alone["lora-b"]) and not np.array_equal(alone["lora-a"], alone["none"])
    return sdcompose.Pipeline(yaml, device="cpu"), alone


def run_together(p, names: list[str]) -> dict[str, np.ndarray]:
    barrier, out, errors = threading.Barrier(len(names)), {}, []

    def work(index: int, name: str) -> None:
        try:
            barrier.wait(30)
            out[index] = p.generate(**SMALL, **REQUESTS[name]).arrays[0]
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i, name)) for i, name in enumerate(names)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    return out


def test_two_requests_at_once_with_different_loras_equal_each_alone(shared):
    p, alone = shared
    names = ["lora-a", "lora-b", "none", "both", "lora-b", "lora-a"]
    out = run_together(p, names)
    for index, name in enumerate(names):
        assert np.array_equal(out[index], alone[name]), name


def test_a_lora_request_then_one_without_equals_the_no_lora_image(shared):
    p, alone = shared
    for first in ("lora-a", "both", "lora-b"):
        assert np.array_equal(p.generate(**SMALL, **REQUESTS[first]).arrays[0], alone[first])
        assert np.array_equal(p.generate(**SMALL, **REQUESTS["none"]).arrays[0], alone["none"])


def test_same_lora_other_weight_is_not_a_stale_fuse(shared):
    p, alone = shared
    p.generate(**SMALL, loras=[sdcompose.Lora("tiny-lora-sd15", 0.2)], seed=1)
    assert np.array_equal(p.generate(**SMALL, **REQUESTS["lora-a"]).arrays[0], alone["lora-a"])
