"""The example third-party package, installed with pip as a user would: discovered, listed, used, removed."""
from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import sdcompose
from conftest import max_diff

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "sdcompose-sobel"


def pip(*args):
    run = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    return run


def cli(*args):
    return subprocess.run([sys.executable, "-m", "sdcompose.cli", *map(str, args)], capture_output=True, text=True,
                          env=os.environ | {"SDCOMPOSE_DEBUG": ""}, timeout=600)


@pytest.fixture
def installed(tmp_path):
    """``pip install ./examples/sdcompose-sobel`` into this environment (from a copy: no build files in the tree)."""
    source = shutil.copytree(EXAMPLE, tmp_path / "sdcompose-sobel", ignore=shutil.ignore_patterns("build", "*.egg-info"))
    pip("install", "--no-deps", "--no-build-isolation", "--no-index", "-q", str(source))
    importlib.invalidate_caches()
    try:
        yield
    finally:
        pip("uninstall", "-y", "-q", "sdcompose-sobel")
        importlib.invalidate_caches()
        sys.modules.pop("sdcompose_sobel", None)


def square(size=64):
    array = np.zeros((size, size, 3), np.uint8)
    array[16:48, 16:48] = 255
    return array


def test_installed_package_is_discovered_listed_and_used(installed, home):
    pipe = sdcompose.Pipeline(device="cpu")  # a new registry sees the new entry point
    [row] = [p for p in pipe.plugins() if p["id"] == "sobel"]
    assert (row["package"], row["status"], row["kind"], row["families"]) == \
        ("sdcompose-sobel", "loaded", "conditioner", ["sd15", "sdxl"])
    assert [p["name"] for p in row["params"]] == ["ksize", "blur", "gamma"]
    listed = cli("plugins", "list")
    assert any(line.split()[:5] == ["sobel", "conditioner", "sd15,sdxl", "loaded", "sdcompose-sobel"]
               for line in listed.stdout.splitlines()), listed.stdout
    edges = np.asarray(pipe.preprocess("sobel", square(), blur=0))[..., 0]
    assert edges[32, 15:17].max() > 100 and edges[32, 32] == 0 and edges[2, 2] == 0
    kw = dict(prompt="a box", model="tiny-sd15", width=64, height=64, steps=2, seed=8)
    result = pipe.generate(controls=[sdcompose.Control("sobel", square(), params={"ksize": 5})], **kw)
    assert result.metadata["plugins"]["sobel"] == {"version": "0.1.0", "package": "sdcompose-sobel",
                                                        "api_version": "1.0"}
    assert "tiny-controlnet-softedge-sd15" in result.metadata["models"]
    assert max_diff(result.arrays[0], pipe.generate(**kw).arrays[0]) > 1e-3
    with pytest.raises(sdcompose.PluginError, match="sobel: ksize must be odd"):
        pipe.preprocess("sobel", square(), ksize=4)


def test_uninstalled_package_is_gone_and_its_own_tests_pass(tmp_path, home):
    assert "sobel" not in {p["id"] for p in sdcompose.Pipeline(device="cpu").plugins()}
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLE / "tests")],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path,
                         env=os.environ | {"PYTHONPATH": str(EXAMPLE)})
    assert run.returncode == 0, run.stdout + run.stderr
