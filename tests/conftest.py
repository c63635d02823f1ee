"""Shared fixtures: an isolated SDCOMPOSE_HOME (tiny models built once per session), small images."""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings
from PIL import Image, ImageDraw

# Whatever a run writes to the temp folder (the tiny models, pytest's folders, gradio_client's downloads, the
# subprocesses' files) goes in one folder removed at exit, so repeated runs do not fill the disk.
_SCRATCH = Path(tempfile.mkdtemp(prefix="sdcompose-test-"))
atexit.register(shutil.rmtree, _SCRATCH, True)
os.environ["TMPDIR"] = tempfile.tempdir = str(_SCRATCH)
_HOME = Path(os.environ.get("SDCOMPOSE_TEST_HOME") or _SCRATCH / "home")
_HOME.mkdir(parents=True, exist_ok=True)
os.environ["SDCOMPOSE_HOME"] = str(_HOME)
os.environ["SDCOMPOSE_MODELS_YAML"] = str(_HOME / "no-user-models.yaml")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The control-map disk cache is off unless a test turns it on with its own folder (tests/test_map_cache.py):
# tests that count, fail or replace detector runs never see a map another test (or an earlier run) stored.
os.environ["SDCOMPOSE_MAP_CACHE"] = "off"

# CI replays the same examples every run (a new failing input is found locally, not in a landing).
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture(scope="session")
def home() -> Path:
    return _HOME


@pytest.fixture(scope="session")
def pipe():
    import sdcompose
    return sdcompose.Pipeline(device="cpu")


@pytest.fixture(scope="session")
def photo(tmp_path_factory) -> Path:
    """A drawn test picture with clear edges."""
    image = Image.new("RGB", (96, 80), (230, 220, 200))
    draw = ImageDraw.Draw(image)
    draw.ellipse((10, 10, 60, 60), fill=(40, 60, 160))
    draw.rectangle((50, 30, 90, 75), fill=(200, 40, 40))
    path = tmp_path_factory.mktemp("inputs") / "photo.png"
    image.save(path)
    return path


@pytest.fixture(scope="session")
def mask(tmp_path_factory) -> Path:
    array = np.zeros((64, 64), dtype=np.uint8)
    array[16:48, 16:48] = 255
    path = tmp_path_factory.mktemp("inputs") / "mask.png"
    Image.fromarray(array).save(path)
    return path


def max_diff(a, b) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())
