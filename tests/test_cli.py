"""The sdcompose command as a user runs it: a real subprocess, real files, one-line errors."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "sdcompose.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=os.environ | {"SDCOMPOSE_DEBUG": ""}, timeout=600)


def test_generate_then_reproduce_gives_identical_pixels(tmp_path, photo, home):
    out = tmp_path / "out.png"
    run = cli("generate", "--model", "tiny-sd15", "--control", f"canny={photo}:weight=0.8:low_threshold=50",
              "--lora", "tiny-lora-sd15:0.8", "--seed", "1", "-W", "64", "-H", "64", "--steps", "3", "-o", out,
              "a", "castle")
    assert run.returncode == 0, run.stderr
    assert f"{out}  seed 1" in run.stdout and "noise from a random-weight test model" in run.stderr
    with Image.open(out) as image:
        assert "sdcompose" in image.text and image.size == (64, 64)
    again = cli("reproduce", out, "-o", tmp_path / "again.png")
    assert again.returncode == 0, again.stderr
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(tmp_path / "again.png")))


def test_a_lora_tag_in_the_prompt_equals_the_lora_flag(tmp_path, home):
    run = ["generate", "--model", "tiny-sd15", "--seed", "2", "-W", "64", "-H", "64", "--steps", "2"]
    tagged = cli(*run, "-o", tmp_path / "tag.png", "a castle <lora:tiny-lora-sd15:0.8>")
    flagged = cli(*run, "--lora", "tiny-lora-sd15:0.8", "-o", tmp_path / "flag.png", "a castle")
    plain = cli(*run, "-o", tmp_path / "plain.png", "a castle")
    assert tagged.returncode == flagged.returncode == plain.returncode == 0, tagged.stderr + flagged.stderr
    pixels = {name: np.asarray(Image.open(tmp_path / f"{name}.png")) for name in ("tag", "flag", "plain")}
    assert np.array_equal(pixels["tag"], pixels["flag"]) and not np.array_equal(pixels["tag"], pixels["plain"])


@pytest.mark.parametrize("args,message", [
    (["generate", "--model", "tiny-sd15", "-W", "100"], "width must be a multiple of 8, got 100"),
    (["generate", "--model", "tiny-sd16"], "no model 'tiny-sd16' in models.yaml (did you mean 'tiny-sd15'?)"),
    (["generate", "--model", "tiny-sd15", "--control", "canny"], "expected ID=IMAGE"),
    (["generate", "--model", "tiny-sd15", "--lora", "tiny-lora-sd15:x"], "expected ID[:WEIGHT]"),
    (["generate", "--model", "tiny-sd15", "--control", "canny=/nonexistent.png"], "does not exist"),
    (["reproduce", "/nonexistent.png"], "does not exist"),
])
def test_errors_are_one_line_without_traceback(args, message, home):
    run = cli(*args)
    assert run.returncode == 2
    assert message in run.stderr and "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("command", [["generate", "--model", "tiny-sd15", "-W", "64", "-H", "64", "--steps", "1"],
                                     ["preprocess", "canny", "{photo}"]])
def test_an_output_that_cannot_be_written_is_a_one_line_error(command, tmp_path, photo, home):
    (tmp_path / "file").write_text("not a folder")
    run = cli(*[arg.format(photo=photo) for arg in command], "-o", tmp_path / "file" / "out.png")
    assert run.returncode == 2, run.stderr
    assert f"sdcompose: error: cannot write {tmp_path / 'file' / 'out.png'}" in run.stderr
    assert "Traceback" not in run.stderr


def test_lists_models_and_plugins(home):
    models = cli("models", "list")
    assert models.returncode == 0 and "tiny-sd15" in models.stdout and "stabilityai/stable-diffusion-xl-base-1.0" in models.stdout
    plugins = cli("plugins", "list")
    assert plugins.returncode == 0
    rows = {line.split()[0]: line for line in plugins.stdout.splitlines()}
    assert "conditioner" in rows["canny"] and "loaded" in rows["canny"] and "adapter" in rows["lora"]


def test_models_check_hashes_local_models(home):
    run = cli("models", "check", "tiny-sd15", "tiny-lora-sd15")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "tiny-sd15" in run.stdout and " ok " in run.stdout


def test_preprocess_writes_the_control_map(tmp_path, photo, home):
    out = tmp_path / "edges.png"
    run = cli("preprocess", "canny", photo, "-o", out, "--param", "low_threshold=20")
    assert run.returncode == 0, run.stderr
    assert np.asarray(Image.open(out)).max() == 255


def test_models_check_reports_hub_models_not_downloaded(home):
    run = cli("models", "check", "sd15")
    assert run.returncode == 0, run.stderr
    assert "not downloaded" in run.stdout and "--download" in run.stdout


def test_ui_without_gradio_is_a_one_line_error(home):
    """The CLI imports no gradio until `sdcompose ui`, which says how to install it where it is missing."""
    code = ("import sys; sys.modules['gradio'] = None; from sdcompose.cli import main; "
            "assert 'gradio' not in [m.split('.')[0] for m in sys.modules if sys.modules[m] is not None]; "
            "sys.exit(main(['ui']))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env=os.environ | {"SDCOMPOSE_DEBUG": ""})
    assert run.returncode == 2, run.stderr
    assert "the web UI needs gradio" in run.stderr and "Traceback" not in run.stderr
