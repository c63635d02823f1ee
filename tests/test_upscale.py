"""Upscalers through spandrel: the tiny ESRGAN stand-in, tiling, multi-pass scales, size limits, hostile files."""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import sdcompose
from conftest import max_diff

MEMORY_LIMIT = 12 * 2**30  # address space for the hostile-file subprocesses (torch's CUDA build maps a lot)


def limited():
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def cli(*args):
    return subprocess.run([sys.executable, "-m", "sdcompose.cli", *map(str, args)], capture_output=True, text=True,
                          env=os.environ | {"SDCOMPOSE_DEBUG": ""}, timeout=600, preexec_fn=limited)


@pytest.fixture(scope="module")
def tiny_file(pipe):
    return pipe.loader.path(pipe.catalog.get("tiny-upscaler-x2"))


def test_the_tiny_stand_in_is_a_real_esrgan_file_and_matches_spandrel_untiled(pipe, photo, tiny_file):
    import spandrel
    assert tiny_file.name == "model.safetensors"
    result = pipe.upscale(photo, model="tiny-upscaler-x2", tile=32)
    assert result.images[0].size == (192, 160)
    done = result.metadata["upscale"]
    assert (done["architecture"], done["native_scale"], done["passes"], done["resized"]) == ("ESRGAN", 2, 1, False)
    assert result.metadata["models"]["tiny-upscaler-x2"]["sha256"]
    whole = spandrel.ModelLoader().load_from_file(tiny_file).eval()
    with torch.inference_mode():
        pixels = torch.from_numpy(np.asarray(Image.open(photo).convert("RGB")).copy()).permute(2, 0, 1)[None] / 255
        expected = whole(pixels)[0].clamp(0, 1).permute(1, 2, 0).mul(255).round().byte().numpy()
    assert max_diff(result.images[0], expected) <= 1  # tiles of 32 with 16 pixels of context meet without seams
    assert np.array_equal(np.asarray(result.images[0]), np.asarray(pipe.upscale(photo, model="tiny-upscaler-x2").images[0]))


def test_scales_other_than_the_networks_run_passes_then_resize(pipe, photo):
    result = pipe.upscale(photo, model="tiny-upscaler-x2", scale=3)
    assert result.images[0].size == (288, 240)
    assert (result.metadata["upscale"]["passes"], result.metadata["upscale"]["resized"]) == (2, True)
    assert pipe.upscale(photo, model="tiny-upscaler-x2", scale=1.5).images[0].size == (144, 120)


def test_bad_requests_are_one_sentence_before_any_work(pipe, photo):
    big = Image.new("RGB", (1024, 1024))
    with pytest.raises(sdcompose.ValidationError, match=r"1024x1024 at scale 8 would be 8192x8192, more than the limit"):
        pipe.upscale(big, model="tiny-upscaler-x2", scale=8)
    with pytest.raises(sdcompose.ValidationError, match="scale must be a number from 1 to 8"):
        pipe.upscale(photo, model="tiny-upscaler-x2", scale=float("nan"))
    with pytest.raises(sdcompose.ModelError, match="model 'tiny-sd15' is a base, not a upscaler"):
        pipe.upscale(photo, model="tiny-sd15")


class Payload:
    def __init__(self, sentinel):
        self.sentinel = sentinel

    def __reduce__(self):
        return exec, (f"open({str(self.sentinel)!r}, 'w').write('code ran')",)


def overlay(tmp_path, home, files: dict[str, dict]) -> Path:
    path = tmp_path / "models.yaml"
    path.write_text(json.dumps({"version": 1, "models": {
        model_id: {"kind": "upscaler", "file": f"upscale-faults/{tmp_path.name}/{name}", **extra}
        for model_id, (name, extra) in files.items()}}))
    return path


def test_a_pickle_with_code_is_refused_and_never_runs(pipe, home, tmp_path, photo):
    folder = home / "models" / "upscale-faults" / tmp_path.name
    folder.mkdir(parents=True, exist_ok=True)
    sentinel = tmp_path / "SENTINEL"
    torch.save({"model.0.weight": torch.zeros(2), "payload": Payload(sentinel)}, folder / "evil.pth")
    (folder / "legacy.pth").write_bytes(pickle.dumps({"payload": Payload(sentinel)}, protocol=2))
    torch.jit.save(torch.jit.script(torch.nn.Identity()), folder / "scripted.pt")
    (folder / "lora.safetensors").write_bytes(pipe.loader.path(pipe.catalog.get("tiny-lora-sd15")).read_bytes())
    digest = {name: hashlib.sha256((folder / name).read_bytes()).hexdigest()
              for name in ("evil.pth", "legacy.pth", "scripted.pt", "lora.safetensors")}
    models = overlay(tmp_path, home, {
        "evil": ("evil.pth", {"sha256": digest["evil.pth"], "allow_pickle": True}),
        "evil-plain": ("evil.pth", {"sha256": digest["evil.pth"]}),
        "legacy": ("legacy.pth", {"sha256": digest["legacy.pth"], "allow_pickle": True}),
        "scripted": ("scripted.pt", {"sha256": digest["scripted.pt"], "allow_pickle": True}),
        "not-an-upscaler": ("lora.safetensors", {"sha256": digest["lora.safetensors"]})})
    expected = {"evil": "weights-only loading refuses it", "evil-plain": "holds pickled weights",
                "legacy": "weights-only loading refuses it", "scripted": "weights-only loading refuses it",
                "not-an-upscaler": "match no architecture spandrel knows"}
    code = ("import json, sys, sdcompose\n"
            "pipe = sdcompose.Pipeline(models=sys.argv[1], device='cpu')\n"
            "out = {}\n"
            "for model_id in sys.argv[3:]:\n"
            "    try:\n"
            "        pipe.upscale(sys.argv[2], model=model_id)\n"
            "        out[model_id] = 'no error'\n"
            "    except (sdcompose.SdcomposeError, sdcompose.PluginError) as exc:\n"
            "        out[model_id] = str(exc)\n"
            "print(json.dumps(out))\n")
    run = subprocess.run([sys.executable, "-c", code, models, photo, *expected], capture_output=True, text=True,
                         timeout=600, preexec_fn=limited)
    assert run.returncode == 0, run.stderr
    errors = json.loads(run.stdout.strip().splitlines()[-1])
    for model_id, message in expected.items():
        assert message in errors[model_id] and "\n" not in errors[model_id], (model_id, errors[model_id])
    assert not sentinel.exists()
    run = cli("upscale", photo, "--model", "evil", "--models", models, "--device", "cpu", "-o", tmp_path / "x.png")
    assert run.returncode == 2 and "weights-only loading refuses it" in run.stderr and "Traceback" not in run.stderr
    assert not sentinel.exists() and not (tmp_path / "x.png").exists()


def test_cli_upscale_writes_a_png_with_its_record(tmp_path, photo, home):
    out = tmp_path / "big.png"
    run = cli("upscale", photo, "--model", "tiny-upscaler-x2", "--scale", "2", "--device", "cpu", "-o", out)
    assert run.returncode == 0, run.stderr
    assert f"{out}  192x160" in run.stdout and "noise from a random-weight test model" in run.stderr
    with Image.open(out) as image:
        meta = json.loads(image.text["sdcompose"])
        assert image.size == (192, 160) and meta["task"] == "upscale" and meta["upscale"]["model"] == "tiny-upscaler-x2"
    run = cli("upscale", photo, "--model", "tiny-upscaler-x2", "--scale", "100", "--device", "cpu", "-o", out)
    assert run.returncode == 2 and "scale must be a number from 1 to 8" in run.stderr
