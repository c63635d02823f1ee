"""SD1.5 ControlNet or LoRA with an SDXL base (or the reverse): refused before anything loads, in one sentence."""
from __future__ import annotations

import pytest

import sdcompose

SMALL = dict(prompt="x", width=64, height=64, steps=2, seed=1)


@pytest.fixture
def fresh(tmp_path, monkeypatch):
    """A Pipeline over an empty models root: any load would build or download something into it."""
    monkeypatch.setenv("SDCOMPOSE_HOME", str(tmp_path / "home"))
    return sdcompose.Pipeline(device="cpu"), tmp_path / "home"


def one_sentence(message: str) -> None:
    assert "\n" not in message and ". " not in message, message


def nothing_loaded(p, home) -> None:
    assert p.cache.loaded() == {"base": [], "controlnet": [], "t2i_adapter": []}
    assert not (home / "models").exists(), sorted(str(x) for x in (home / "models").rglob("*"))


@pytest.mark.parametrize("base,lora", [("tiny-sdxl", "tiny-lora-sd15"), ("tiny-sd15", "tiny-lora-sdxl")])
def test_lora_of_the_other_family_refused_before_loading(fresh, base, lora):
    p, home = fresh
    with pytest.raises(sdcompose.ModelError) as err:
        p.generate(model=base, loras=[sdcompose.Lora(lora)], **SMALL)
    message = str(err.value)
    one_sentence(message)
    lora_family, base_family = ("sd15", "sdxl") if base == "tiny-sdxl" else ("sdxl", "sd15")
    assert message == (f"lora {lora!r} is {lora_family}; base {base!r} is {base_family}: "
                       f"pick an {base_family} lora or an {lora_family} base")
    nothing_loaded(p, home)


@pytest.mark.parametrize("base,controlnet", [("tiny-sdxl", "tiny-controlnet-canny-sd15"),
                                             ("tiny-sd15", "tiny-controlnet-canny-sdxl"),
                                             ("sdxl-base", "controlnet-canny-sd15"),
                                             ("sd15", "controlnet-depth-sdxl")])
def test_controlnet_of_the_other_family_refused_before_loading(fresh, photo, base, controlnet):
    p, home = fresh
    with pytest.raises(sdcompose.ModelError) as err:
        p.generate(model=base, controls=[sdcompose.Control("canny", photo, model=controlnet)], **SMALL)
    message = str(err.value)
    one_sentence(message)
    assert message.startswith(f"ControlNet {controlnet!r} is ") and f"base {base!r} is " in message
    assert "pick an" in message
    nothing_loaded(p, home)


def test_mismatch_refused_before_even_the_sha256_cache_is_touched(fresh, photo):
    p, home = fresh
    with pytest.raises(sdcompose.ModelError):
        p.generate(model="tiny-sdxl", loras=[sdcompose.Lora("tiny-lora-sdxl")],
                   controls=[sdcompose.Control("canny", photo, model="tiny-controlnet-canny-sd15")], **SMALL)
    assert not home.exists() or not any(home.iterdir())
