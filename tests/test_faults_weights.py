"""Truncated or corrupt .safetensors, git-LFS pointers, sha256 checks: a clear error naming the file with a
re-download hint, nothing cached as good, and the fixed file works afterwards."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path

import pytest

import sdcompose
from sdcompose.pipelines import weights

SMALL = dict(prompt="a red fox", width=64, height=64, steps=2, seed=5)
LFS_POINTER = (b"version https://git-lfs.github.com/spec/v1\n"
               b"oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 3438167534\n")


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def root(pipe, home) -> Path:
    folder = home / "models" / "faults" / uuid.uuid4().hex[:8]
    folder.mkdir(parents=True)
    return folder


def write_yaml(tmp_path: Path, home: Path, models: dict[str, dict]) -> Path:
    lines = ["version: 1", "models:"]
    for model_id, fields in models.items():
        lines.append(f"  {model_id}:")
        lines += [f"    {k}: {v}" for k, v in fields.items()]
    path = tmp_path / f"models-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def rel(home: Path, path: Path) -> str:
    return str(path.relative_to(home / "models"))


def tiny_lora(pipe) -> Path:
    return pipe.loader.path(pipe.catalog.get("tiny-lora-sd15"))


def base_copy(pipe, root: Path) -> Path:
    source = pipe.loader.path(pipe.catalog.get("tiny-sd15"))
    shutil.copytree(source, root / "base", ignore=shutil.ignore_patterns(".complete"))
    return root / "base"


def cached_paths(home: Path) -> set[str]:
    try:
        cache = json.loads((home / "sha256.json").read_text())
    except FileNotFoundError:
        return set()
    return {key.split("|")[0] for key in cache}


def setup_lora(pipe, home, root, tmp_path, broken: bytes | None):
    """A local sd15 base and a LoRA `file:` whose models.yaml sha256 is the good file's; the file itself broken."""
    base_copy(pipe, root)
    good = tiny_lora(pipe).read_bytes()
    file = root / "style.safetensors"
    file.write_bytes(good if broken is None else broken)
    yaml = write_yaml(tmp_path, home, {
        "local-base": dict(kind="base", family="sd15", path=rel(home, root / "base")),
        "style": dict(kind="lora", family="sd15", file=rel(home, file), sha256=hashlib.sha256(good).hexdigest())})
    return sdcompose.Pipeline(yaml, device="cpu"), file, good


def run_lora(p):
    return p.generate(model="local-base", loras=[sdcompose.Lora("style", 0.8)], **SMALL)


def test_truncated_safetensors_lora_named_with_redownload_hint_then_fixed_file_works(pipe, home, root, tmp_path):
    good = tiny_lora(pipe).read_bytes()
    p, file, good = setup_lora(pipe, home, root, tmp_path, broken=good[: len(good) // 2])
    with pytest.raises(sdcompose.ModelError) as err:
        run_lora(p)
    assert str(file) in str(err.value) and "truncated" in str(err.value) and "download it again" in str(err.value)
    assert str(file.resolve()) not in cached_paths(home)  # nothing cached for the bad file
    file.write_bytes(good)  # re-downloaded
    fixed = run_lora(p)
    assert fixed.metadata["models"]["style"]["sha256"] == {"style.safetensors": hashlib.sha256(good).hexdigest()}


def test_git_lfs_pointer_instead_of_weights(pipe, home, root, tmp_path):
    p, file, good = setup_lora(pipe, home, root, tmp_path, broken=LFS_POINTER)
    with pytest.raises(sdcompose.ModelError, match=r"git-LFS pointer.*git lfs pull.*download it again") as err:
        run_lora(p)
    assert str(file) in str(err.value)
    file.write_bytes(good)
    run_lora(p)


def test_git_lfs_pointer_in_a_base_folder_refused_before_loading(pipe, home, root, tmp_path):
    base = base_copy(pipe, root)
    weights_file = base / "unet" / "diffusion_pytorch_model.safetensors"
    good = weights_file.read_bytes()
    weights_file.write_bytes(LFS_POINTER)
    yaml = write_yaml(tmp_path, home, {"local-base": dict(kind="base", family="sd15", path=rel(home, base))})
    p = sdcompose.Pipeline(yaml, device="cpu")
    with pytest.raises(sdcompose.ModelError, match="unet/diffusion_pytorch_model.safetensors is a git-LFS pointer"):
        p.generate(model="local-base", **SMALL)
    assert p.cache.loaded()["base"] == []
    weights_file.write_bytes(good)
    p.generate(model="local-base", **SMALL)


@pytest.mark.parametrize("damage", ["random-bytes", "header-garbage", "extra-bytes", "empty"])
def test_corrupt_safetensors_in_base_folder(pipe, home, root, tmp_path, damage):
    base = base_copy(pipe, root)
    weights_file = base / "vae" / "diffusion_pytorch_model.safetensors"
    good = weights_file.read_bytes()
    broken = {"random-bytes": os.urandom(4096), "header-garbage": good[:8] + b"}" * 40 + good[48:],
              "extra-bytes": good + b"\0" * 100, "empty": b""}[damage]
    weights_file.write_bytes(broken)
    yaml = write_yaml(tmp_path, home, {"local-base": dict(kind="base", family="sd15", path=rel(home, base))})
    p = sdcompose.Pipeline(yaml, device="cpu")
    with pytest.raises(sdcompose.ModelError) as err:
        p.generate(model="local-base", **SMALL)
    assert "vae/diffusion_pytorch_model.safetensors" in str(err.value) and "download it again" in str(err.value)
    assert p.cache.loaded()["base"] == []
    assert str(weights_file.resolve()) not in cached_paths(home)
    weights_file.write_bytes(good)
    p.generate(model="local-base", **SMALL)


def test_sha256_verified_on_first_load(pipe, home, root, tmp_path):
    """A whole, valid .safetensors that is not the file models.yaml pins (a different version) is refused."""
    other = pipe.loader.path(pipe.catalog.get("tiny-lora-sdxl")).read_bytes()  # valid file, wrong content
    p, file, good = setup_lora(pipe, home, root, tmp_path, broken=other)
    with pytest.raises(sdcompose.ModelError, match=r"has sha256 .*models.yaml expects .*download it again"):
        run_lora(p)
    file.write_bytes(good)
    run_lora(p)


def test_sha256_cached_by_size_and_mtime_and_rehashed_when_changed(home, tmp_path):
    file = tmp_path / "w.safetensors"
    file.write_bytes(b"a" * 1000)
    first = weights.sha256(file)
    assert first == hashlib.sha256(b"a" * 1000).hexdigest()
    assert str(file.resolve()) in cached_paths(home)
    # the cache is used: a stale entry for the same (path, size, mtime, inode, ctime) is what comes back
    st = file.stat()
    cache = json.loads((home / "sha256.json").read_text())
    [key] = [k for k in cache if k.startswith(f"{file.resolve()}|")]
    assert key.split("|")[1:3] == [str(st.st_size), str(st.st_mtime_ns)]
    # same size, old mtime put back: still re-hashed (inode/ctime are part of the key)
    file.write_bytes(b"b" * 1000)
    os.utime(file, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert weights.sha256(file) == hashlib.sha256(b"b" * 1000).hexdigest()
    # one entry per path: the stale one is dropped
    cache = json.loads((home / "sha256.json").read_text())
    assert len([k for k in cache if k.startswith(f"{file.resolve()}|")]) == 1


def test_corrupt_sha256_cache_is_ignored(home, tmp_path):
    file = tmp_path / "w.bin"
    file.write_bytes(b"x" * 10)
    cache = home / "sha256.json"
    saved = cache.read_bytes() if cache.exists() else None
    try:
        for junk in (b"[1, 2, 3]", b"{not json", b'{"' + str(file.resolve()).encode() + b'|10|1|2|3": 5}'):
            cache.write_bytes(junk)
            assert weights.sha256(file) == hashlib.sha256(b"x" * 10).hexdigest()
    finally:
        if saved is not None:
            cache.write_bytes(saved)


def test_a_loading_error_with_no_message_is_still_one_sentence(pipe, monkeypatch):
    """diffusers can fail on a bare ``assert``: the error names the model instead of raising an IndexError."""
    from sdcompose.pipelines import loader

    class Failing:
        @staticmethod
        def from_pretrained(*args, **kwargs):
            raise AssertionError()

    monkeypatch.setattr(loader, "pipeline_class", lambda family: Failing)
    with pytest.raises(sdcompose.ModelError, match=r"model 'tiny-sd15' from .* did not load as a sd15 model: $"):
        pipe.loader.base(pipe.catalog.get("tiny-sd15"), pipe.dtype)
