"""One list of adapter uses (``adapters=[AdapterUse(...)]``): the same pixels as the ``loras`` / ``ip_adapters``
shorthands, both kinds in one request, reproduce from the PNG, and every bad use refused in one sentence before
anything loads."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import sdcompose
from conftest import max_diff
from test_reference import ours as _ours


def ours(pipe, **kw):
    return _ours(pipe, **{"model": "tiny-sd15", **kw})


@pytest.fixture(scope="module")
def reference_image():
    rng = np.random.RandomState(5)
    return Image.fromarray((rng.rand(64, 80, 3) * 255).astype(np.uint8))


def test_a_lora_use_is_the_lora_shorthand(pipe):
    short = ours(pipe, loras=[sdcompose.Lora("tiny-lora-sd15", 0.8)])
    listed = ours(pipe, adapters=[sdcompose.AdapterUse("tiny-lora-sd15", 0.8)])
    assert max_diff(listed.arrays[0], short.arrays[0]) == 0
    assert max_diff(listed.arrays[0], ours(pipe).arrays[0]) > 0.01  # the LoRA changes the image
    assert listed.metadata["adapter_reports"]["lora"]["tiny-lora-sd15"]["weight"] == 0.8
    assert listed.metadata["plugins"]["lora"]["api_version"] == "2.2"


def test_an_ip_adapter_use_is_the_ip_adapter_shorthand(pipe, reference_image):
    short = ours(pipe, ip_adapters=[sdcompose.IpAdapter("tiny-ip-adapter-sd15", reference_image, 0.7, end=0.6)])
    listed = ours(pipe, adapters=[sdcompose.AdapterUse("tiny-ip-adapter-sd15", 0.7, {"end": 0.6}, reference_image)])
    assert max_diff(listed.arrays[0], short.arrays[0]) == 0
    assert listed.metadata["adapter_reports"]["ip_adapter"]["tiny-ip-adapter-sd15"]["references"] == 1
    assert "adapter-0-0" in listed.inputs and "tiny-image-encoder" in listed.metadata["models"]


def test_both_kinds_in_one_list_reproduce_from_the_png(pipe, reference_image, tmp_path):
    both = [sdcompose.AdapterUse("tiny-lora-sd15", 0.5),
            sdcompose.AdapterUse("tiny-ip-adapter-sd15", 0.6, {"start": 0.2}, [reference_image, reference_image])]
    result = ours(pipe, adapters=both)
    same = ours(pipe, loras=[sdcompose.Lora("tiny-lora-sd15", 0.5)],
                ip_adapters=[sdcompose.IpAdapter("tiny-ip-adapter-sd15", [reference_image] * 2, 0.6, start=0.2)])
    assert max_diff(result.arrays[0], same.arrays[0]) == 0
    assert set(result.metadata["adapter_reports"]) == {"lora", "ip_adapter"}
    [out] = result.save(tmp_path / "both.png")
    again = pipe.reproduce(out)
    assert np.array_equal(np.asarray(again.images[0]), np.asarray(Image.open(out)))
    assert [a["id"] for a in again.metadata["request"]["adapters"]] == ["tiny-lora-sd15", "tiny-ip-adapter-sd15"]
    assert again.metadata["request"]["adapters"][1]["params"] == {"start": 0.2}


@pytest.mark.parametrize("use,message", [
    (sdcompose.AdapterUse("tiny-sd15"), "'tiny-sd15' is a base, which no adapter plugin serves"),
    (sdcompose.AdapterUse("tiny-lora-sd15", image="ref"), "lora 'tiny-lora-sd15' takes no image"),
    (sdcompose.AdapterUse("tiny-ip-adapter-sd15"), "IP-Adapter 'tiny-ip-adapter-sd15' needs a reference image"),
    (sdcompose.AdapterUse("tiny-ip-adapter-sd15", 3.0, image="ref"),
     "IP-Adapter 'tiny-ip-adapter-sd15': weight must be from 0 to 2, got 3"),
    (sdcompose.AdapterUse("tiny-ip-adapter-sd15", params={"stop": 1}, image="ref"),
     "IP-Adapter 'tiny-ip-adapter-sd15': unknown param 'stop' (known: start, end)"),
    (sdcompose.AdapterUse("tiny-ip-adapter-sd15", params={"end": 2}, image="ref"),
     "IP-Adapter 'tiny-ip-adapter-sd15': param 'end' must be <= 1.0, got 2"),
    (sdcompose.AdapterUse("tiny-lora-sdxl"), "lora 'tiny-lora-sdxl' is sdxl; base 'tiny-sd15' is sd15: pick an sd15 "
                                             "lora or an sdxl base"),
    ({"id": "tiny-lora-sd15", "weight": 5}, "adapters[0] (tiny-lora-sd15) weight must be"),
    ({"id": "tiny-lora-sd15", "params": [1]}, "adapters[0] (tiny-lora-sd15) params must be a mapping"),
    ({"id": "tiny-lora-sd15", "colour": 1}, "adapters[0]: AdapterUse has no field 'colour'"),
])
def test_a_bad_use_is_one_sentence_before_anything_loads(pipe, reference_image, use, message):
    loaded = pipe.cache.loaded()
    with pytest.raises(sdcompose.SdcomposeError) as err:
        ours(pipe, adapters=[use])
    assert str(err.value).startswith(message), str(err.value)
    assert "\n" not in str(err.value)
    assert pipe.cache.loaded() == loaded


def test_a_lora_given_twice_is_refused(pipe):
    with pytest.raises(sdcompose.ModelError, match="lora 'tiny-lora-sd15' is asked for twice"):
        ours(pipe, loras=[sdcompose.Lora("tiny-lora-sd15")], adapters=[sdcompose.AdapterUse("tiny-lora-sd15", 0.3)])


def test_fast_mode_refuses_image_adapters():
    with pytest.raises(sdcompose.ValidationError, match="fast mode does not run IP-Adapters"):
        sdcompose.GenerationRequest(fast=True, adapters=[sdcompose.AdapterUse("x", image="ref.png")])
