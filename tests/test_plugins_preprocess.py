"""Preprocess-only (Python and CLI), resize modes, the content-hash cache, and what `plugins list` shows."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import sdcompose


def cli(*args):
    return subprocess.run([sys.executable, "-m", "sdcompose.cli", *map(str, args)], capture_output=True, text=True,
                          env=os.environ | {"SDCOMPOSE_DEBUG": ""}, timeout=600)


def halves(width=128, height=64):
    """A grey depth map: left half at pure red's luma, right half at pure blue's, with a 1-px frame at green's
    (a grey picture: a coloured one would be refused as a colour-mapped depth picture): resize modes show in it."""
    array = np.zeros((height, width, 3), np.uint8)
    array[:, : width // 2] = round(0.299 * 255)
    array[:, width // 2:] = round(0.114 * 255)
    array[[0, -1], :] = array[:, [0, -1]] = round(0.587 * 255)
    return array


def test_resize_modes_size_the_map_as_named(pipe):
    def make(mode):
        return np.asarray(pipe.preprocess("depth", halves(), width=64, height=64, resize_mode=mode,
                                          input="depth_map", normalize=False)).astype(int)

    stretched, cropped, filled = make("just_resize"), make("crop_and_resize"), make("resize_and_fill")
    assert stretched.shape == cropped.shape == filled.shape == (64, 64, 3)
    red, blue = round(0.299 * 255), round(0.114 * 255)  # the halves' grey values
    # just_resize: the whole picture squeezed in, both halves side by side, the frame on all four sides
    assert abs(stretched[32, 16, 0] - red) <= 2 and abs(stretched[32, 48, 0] - blue) <= 2
    assert stretched[0, 32, 0] > blue and stretched[32, 0, 0] > red
    # crop_and_resize: scaled to cover, the middle kept: left and right frame columns cut away
    assert abs(cropped[32, 2, 0] - red) <= 2 and abs(cropped[32, 61, 0] - blue) <= 2
    # resize_and_fill: scaled to fit, black bars above and below
    assert filled[:14, :, 0].max() == 0 and filled[-14:, :, 0].max() == 0
    assert abs(filled[32, 16, 0] - red) <= 2


def test_one_side_keeps_the_aspect_and_bad_sizes_are_refused(pipe, photo):
    assert pipe.preprocess("canny", photo, width=192).size == (192, 160)
    assert pipe.preprocess("canny", photo, height=64).size == (77, 64)
    for bad in (0, -8, 100_000, 12.5):
        with pytest.raises(sdcompose.ValidationError, match="width must be a whole number from 64 to 4096"):
            pipe.preprocess("canny", photo, width=bad)
    with pytest.raises(sdcompose.ValidationError, match="resize_mode must be one of"):
        pipe.preprocess("canny", photo, width=64, height=64, resize_mode="stretch")


def test_control_maps_are_sized_to_the_output_in_each_mode(pipe, photo):
    kw = dict(prompt="x", model="tiny-sd15", width=64, height=128, steps=1, seed=0)
    for mode in ("just_resize", "crop_and_resize", "resize_and_fill"):
        result = pipe.generate(controls=[sdcompose.Control("canny", photo, resize_mode=mode)], **kw)
        assert result.inputs["control-0"].size == (64, 128)
        assert np.asarray(result.inputs["control-0"]).max() > 100  # the edges survive the resampling


def test_the_same_input_is_processed_once(pipe, photo):
    plugin = pipe.registry.get("canny")
    calls = []
    original = plugin.preprocess
    plugin.preprocess = lambda *a: calls.append(1) or original(*a)  # counts runs of the detector
    try:
        first = pipe.preprocess("canny", photo, low_threshold=33)
        copy = Image.open(photo).copy()  # same pixels, another object: the key is the content
        second = pipe.preprocess("canny", copy, low_threshold=33)
        pipe.preprocess("canny", photo, low_threshold=34)
    finally:
        del plugin.preprocess
    assert np.array_equal(np.asarray(first), np.asarray(second)) and len(calls) == 2
    first.paste((255, 0, 0), (0, 0, 10, 10))  # callers get their own copy, never the cached map
    assert np.array_equal(np.asarray(pipe.preprocess("canny", photo, low_threshold=33)), np.asarray(second))


def test_cli_preprocess_writes_a_sized_map(tmp_path, home):
    depth = tmp_path / "depth16.png"
    Image.fromarray(np.tile(np.linspace(1_000, 50_000, 96).astype(np.uint16), (80, 1))).save(depth)
    out = tmp_path / "maps" / "depth.png"
    run = cli("preprocess", "depth", depth, "-o", out, "--param", "invert=true", "-W", "64", "-H", "64",
              "--resize-mode", "just_resize")
    assert run.returncode == 0, run.stderr
    with Image.open(out) as image:
        array = np.asarray(image.convert("L"))
    assert image.size == (64, 64) and array[:, 0].min() >= 250 and array[:, -1].max() <= 5
    bad = cli("preprocess", "depth", depth, "-o", tmp_path / "depth.unknown")
    assert bad.returncode == 2 and bad.stderr.startswith("sdcompose: error: cannot write")
    assert "Traceback" not in bad.stderr


def test_cli_generate_runs_pose_json_and_a_16_bit_depth_map_offline(tmp_path, home):
    pose = {"canvas_width": 64, "canvas_height": 64, "people": [{"pose_keypoints_2d": [
        v for i in range(18) for v in (10 + 2 * i, 8 + 3 * i, 1)]}]}
    (tmp_path / "pose.json").write_text(json.dumps(pose))
    Image.fromarray(np.tile(np.linspace(0, 65_535, 64).astype(np.uint16), (64, 1))).save(tmp_path / "depth16.png")
    out = tmp_path / "out.png"
    run = cli("generate", "--model", "tiny-sd15", "--control", f"pose={tmp_path / 'pose.json'}",
              "--control", f"depth={tmp_path / 'depth16.png'}:weight=0.5", "-W", "64", "-H", "64", "--steps", "2",
              "--seed", "9", "-q", "-o", out, "a", "dancer")
    assert run.returncode == 0, run.stderr
    with Image.open(out) as image:
        meta = json.loads(image.text["sdcompose"])
    assert [(c["id"], c["weight"]) for c in meta["request"]["controls"]] == [("pose", 1.0), ("depth", 0.5)]
    assert {"tiny-controlnet-openpose-sd15", "tiny-controlnet-depth-sd15"} <= set(meta["models"])


def test_plugins_list_shows_every_builtin_with_families_and_status(home):
    run = cli("plugins", "list")
    assert run.returncode == 0, run.stderr
    rows = {line.split()[0]: line.split() for line in run.stdout.splitlines()}
    expected = {"canny": "sd15,sdxl", "depth": "sd15,sdxl", "pose": "sd15,sdxl", "softedge": "sd15,sdxl",
                "lineart": "sd15", "lora": "sd15,sdxl"}
    for plugin_id, families in expected.items():
        assert rows[plugin_id][2:4] == [families, "loaded"], rows[plugin_id]
    assert rows["lora"][1] == "adapter" and rows["pose"][1] == "conditioner"
    described = {p["id"]: p for p in json.loads(cli("plugins", "list", "--json").stdout)}
    assert {spec["name"] for spec in described["pose"]["params"]} >= {"include_hand", "include_face", "stick_width"}
    assert next(s for s in described["depth"]["params"] if s["name"] == "input")["choices"] == \
        ["auto", "photo", "depth_map"]
