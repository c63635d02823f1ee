"""Pickled weights (.ckpt/.pt/.bin, or a pickle renamed .safetensors) are refused by content: no code runs.

Every malicious file here carries a live payload (checked once by unpickling it for real into a
separate sentinel) that would write a sentinel file; the tests assert the sentinel never appears.
"""
from __future__ import annotations

import hashlib
import pickle
import shutil
import uuid
from pathlib import Path

import pytest
import torch

import sdcompose
from sdcompose.pipelines import weights

SMALL = dict(prompt="a red fox", width=64, height=64, steps=2, seed=3)


class Payload:
    """Unpickling this writes ``sentinel``: the shape of a malicious checkpoint."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return exec, (f"open({str(self.sentinel)!r}, 'w').write('code ran')",)


def evil_pickle(target: Path, sentinel: Path, zipped: bool = False) -> Path:
    """A pickle (legacy protocol 2, or torch's zip format) that writes ``sentinel`` when unpickled."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if zipped:
        torch.save({"conv.weight": torch.zeros(2), "payload": Payload(sentinel)}, target)
    else:
        target.write_bytes(pickle.dumps({"conv.weight": [0.0, 0.0], "payload": Payload(sentinel)}, protocol=2))
    return target


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def root(pipe, home) -> Path:
    """A fresh folder under the models root, and the tiny sd15 base built."""
    pipe.loader.path(pipe.catalog.get("tiny-sd15"))
    folder = home / "models" / "faults" / uuid.uuid4().hex[:8]
    folder.mkdir(parents=True)
    return folder


@pytest.fixture
def sentinel(tmp_path) -> Path:
    return tmp_path / "SENTINEL"


def catalog(tmp_path: Path, root: Path, models: dict[str, dict]) -> Path:
    """A models.yaml whose paths are relative to the models root."""
    rel = root.relative_to(_models_root(root))
    lines = ["version: 1", "models:"]
    for model_id, fields in models.items():
        lines.append(f"  {model_id}:")
        for key, value in fields.items():
            if key in ("path", "file"):
                value = f"{rel}/{value}"
            lines.append(f"    {key}: {value}")
    path = tmp_path / f"models-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _models_root(folder: Path) -> Path:
    while folder.name != "models":
        folder = folder.parent
    return folder


def copy_base(pipe, root: Path, name: str = "base") -> Path:
    """A real diffusers folder (the tiny sd15 weights) to use as a non-test `path:` base."""
    source = pipe.loader.path(pipe.catalog.get("tiny-sd15"))
    target = root / name
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(".complete"))
    return target


def test_payload_is_live(tmp_path):
    """The payload used below really runs when unpickled the unsafe way, so its absence means something."""
    probe = tmp_path / "probe"
    pickle.loads(evil_pickle(tmp_path / "x.bin", probe).read_bytes())  # noqa: S301 - the point of the test
    assert probe.read_text() == "code ran"


@pytest.mark.parametrize("name", ["diffusion_pytorch_model.bin", "diffusion_pytorch_model.safetensors"])
def test_pickled_unet_in_base_folder_refused_by_content(pipe, root, sentinel, tmp_path, name):
    base = copy_base(pipe, root)
    (base / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    evil_pickle(base / "unet" / name, sentinel)
    p = sdcompose.Pipeline(catalog(tmp_path, root, {"evil-base": dict(kind="base", family="sd15", path="base")}),
                           device="cpu")
    with pytest.raises(sdcompose.ModelError) as err:
        p.generate(model="evil-base", **SMALL)
    message = str(err.value)
    assert name in message and "allow_pickle" in message and "safetensors" in message
    assert "pickle" in message
    assert not sentinel.exists()
    assert p.cache.loaded()["base"] == []


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".safetensors"])
def test_pickled_single_file_base_refused_by_content(pipe, root, sentinel, tmp_path, suffix):
    file = evil_pickle(root / f"model{suffix}", sentinel, zipped=suffix == ".pt")
    yaml = catalog(tmp_path, root, {"evil": dict(kind="base", family="sd15", file=file.name, sha256=sha(file),
                                                 config="sd15")})
    with pytest.raises(sdcompose.ModelError, match="pickled weights.*allow_pickle"):
        sdcompose.Pipeline(yaml, device="cpu").generate(model="evil", **SMALL)
    assert not sentinel.exists()


@pytest.mark.parametrize("suffix", [".bin", ".ckpt", ".safetensors"])
def test_pickled_lora_file_refused_by_content(pipe, root, sentinel, tmp_path, suffix):
    copy_base(pipe, root)
    file = evil_pickle(root / f"style{suffix}", sentinel)
    yaml = catalog(tmp_path, root, {
        "local-base": dict(kind="base", family="sd15", path="base"),
        "evil-lora": dict(kind="lora", family="sd15", file=file.name, sha256=sha(file))})
    p = sdcompose.Pipeline(yaml, device="cpu")
    with pytest.raises(sdcompose.ModelError, match=f"style\\{suffix} holds pickled weights.*allow_pickle"):
        p.generate(model="local-base", loras=[sdcompose.Lora("evil-lora")], **SMALL)
    assert not sentinel.exists()
    # the pipeline is unharmed: the same base without the LoRA still works
    assert p.generate(model="local-base", **SMALL).images[0].size == (64, 64)


@pytest.mark.parametrize("layout", ["folder-bin", "file-ckpt"])
def test_pickled_controlnet_refused_by_content(pipe, root, sentinel, tmp_path, photo, layout):
    copy_base(pipe, root)
    if layout == "folder-bin":
        source = pipe.loader.path(pipe.catalog.get("tiny-controlnet-canny-sd15"))
        (root / "cn").mkdir()
        shutil.copy(source / "config.json", root / "cn" / "config.json")
        evil_pickle(root / "cn" / "diffusion_pytorch_model.bin", sentinel, zipped=True)
        entry = dict(kind="controlnet", family="sd15", path="cn")
    else:
        file = evil_pickle(root / "cn.ckpt", sentinel)
        entry = dict(kind="controlnet", family="sd15", file="cn.ckpt", sha256=sha(file), config="sd15")
    yaml = catalog(tmp_path, root, {"local-base": dict(kind="base", family="sd15", path="base"), "evil-cn": entry})
    p = sdcompose.Pipeline(yaml, device="cpu")
    with pytest.raises(sdcompose.ModelError, match="pickled weights.*allow_pickle"):
        p.generate(model="local-base", controls=[sdcompose.Control("canny", photo, model="evil-cn")], **SMALL)
    assert not sentinel.exists()
    assert p.cache.loaded()["controlnet"] == []


# ---- allow_pickle: true loads weights-only; a malicious pickle is still refused -----------------------------------

@pytest.mark.parametrize("zipped", [False, True], ids=["legacy-pickle", "torch-zip"])
def test_allow_pickle_base_folder_is_weights_only(pipe, root, sentinel, tmp_path, zipped):
    base = copy_base(pipe, root)
    (base / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    evil_pickle(base / "unet" / "diffusion_pytorch_model.bin", sentinel, zipped=zipped)
    yaml = catalog(tmp_path, root, {"opted-in": dict(kind="base", family="sd15", path="base", allow_pickle="true")})
    with pytest.raises(sdcompose.ModelError, match=r"not plain weights \(.*exec\).*do not use this file"):
        sdcompose.Pipeline(yaml, device="cpu").generate(model="opted-in", **SMALL)
    assert not sentinel.exists()


def test_allow_pickle_lora_and_single_file_are_weights_only(pipe, root, sentinel, tmp_path):
    copy_base(pipe, root)
    lora = evil_pickle(root / "style.bin", sentinel)
    ckpt = evil_pickle(root / "model.ckpt", sentinel, zipped=True)
    yaml = catalog(tmp_path, root, {
        "local-base": dict(kind="base", family="sd15", path="base"),
        "ckpt-base": dict(kind="base", family="sd15", file="model.ckpt", sha256=sha(ckpt), config="sd15",
                          allow_pickle="true"),
        "opted-lora": dict(kind="lora", family="sd15", file="style.bin", sha256=sha(lora), allow_pickle="true")})
    p = sdcompose.Pipeline(yaml, device="cpu")
    with pytest.raises(sdcompose.ModelError, match="not plain weights"):
        p.generate(model="local-base", loras=[sdcompose.Lora("opted-lora")], **SMALL)
    with pytest.raises(sdcompose.ModelError, match="not plain weights"):
        p.generate(model="ckpt-base", **SMALL)
    assert not sentinel.exists()


def test_diffusers_own_loader_is_weights_only(tmp_path, sentinel):
    """What diffusers runs for an opted-in .bin/.ckpt (models, single files, LoRAs): its load_state_dict."""
    from diffusers.models.model_loading_utils import load_state_dict
    for zipped in (False, True):
        file = evil_pickle(tmp_path / f"diffusion_pytorch_model{zipped}.bin", sentinel, zipped=zipped)
        with pytest.raises(OSError):
            load_state_dict(str(file))
        assert not sentinel.exists()


def test_allow_pickle_controlnet_is_weights_only(pipe, root, sentinel, tmp_path, photo):
    copy_base(pipe, root)
    source = pipe.loader.path(pipe.catalog.get("tiny-controlnet-canny-sd15"))
    (root / "cn").mkdir()
    shutil.copy(source / "config.json", root / "cn" / "config.json")
    evil_pickle(root / "cn" / "diffusion_pytorch_model.bin", sentinel)
    yaml = catalog(tmp_path, root, {"local-base": dict(kind="base", family="sd15", path="base"),
                                    "cn": dict(kind="controlnet", family="sd15", path="cn", allow_pickle="true")})
    p = sdcompose.Pipeline(yaml, device="cpu")
    with pytest.raises(sdcompose.ModelError, match="not plain weights"):
        p.generate(model="local-base", controls=[sdcompose.Control("canny", photo, model="cn")], **SMALL)
    assert not sentinel.exists() and p.cache.loaded()["controlnet"] == []


def test_torch_load_itself_refuses_the_payload(tmp_path, sentinel):
    """What diffusers calls for an opted-in .bin: torch.load(weights_only=True) never runs the payload."""
    for zipped in (False, True):
        file = evil_pickle(tmp_path / f"w{zipped}.bin", sentinel, zipped=zipped)
        with pytest.raises(pickle.UnpicklingError):
            torch.load(file, weights_only=True)
        assert not sentinel.exists()


def test_allow_pickle_loads_plain_weights(pipe, root, tmp_path, photo):
    """A benign torch.save'd ControlNet opted in with allow_pickle loads weights-only and equals its .safetensors."""
    copy_base(pipe, root)
    source = pipe.loader.path(pipe.catalog.get("tiny-controlnet-canny-sd15"))
    for name, pickled in (("cn-st", False), ("cn-bin", True)):
        (root / name).mkdir()
        shutil.copy(source / "config.json", root / name / "config.json")
        if pickled:
            from safetensors.torch import load_file
            torch.save(load_file(source / "diffusion_pytorch_model.safetensors"),
                       root / name / "diffusion_pytorch_model.bin")
        else:
            shutil.copy(source / "diffusion_pytorch_model.safetensors", root / name)
    yaml = catalog(tmp_path, root, {
        "local-base": dict(kind="base", family="sd15", path="base"),
        "cn-st": dict(kind="controlnet", family="sd15", path="cn-st"),
        "cn-bin": dict(kind="controlnet", family="sd15", path="cn-bin", allow_pickle="true")})
    p = sdcompose.Pipeline(yaml, device="cpu")
    a = p.generate(model="local-base", controls=[sdcompose.Control("canny", photo, model="cn-st")], **SMALL)
    b = p.generate(model="local-base", controls=[sdcompose.Control("canny", photo, model="cn-bin")], **SMALL)
    assert (a.arrays[0] == b.arrays[0]).all()
    assert weights.inspect(root / "cn-bin" / "diffusion_pytorch_model.bin") == "zip"
