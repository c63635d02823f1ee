"""The depth conditioner: depth-map files (8/16-bit, normalised, inverted) and the estimator's real loading code."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import sdcompose
from conftest import max_diff


def gradient16(low=10_000, high=30_000, size=(64, 48)):
    """A 16-bit depth map rising left to right: values far below 65535, as a real render's depth pass."""
    row = np.linspace(low, high, size[0]).round().astype(np.uint16)
    return Image.fromarray(np.tile(row, (size[1], 1)))


def grey(image):
    array = np.asarray(image)
    assert (array[..., 0] == array[..., 1]).all() and (array[..., 1] == array[..., 2]).all()
    return array[..., 0].astype(int)


def test_16_bit_depth_map_round_trip(pipe, tmp_path):
    path = tmp_path / "depth16.png"
    gradient16().save(path)
    with Image.open(path) as saved:
        assert saved.mode.startswith("I")  # really stored as 16-bit
    depth = grey(pipe.preprocess("depth", path))
    assert depth.shape == (48, 64) and depth[:, 0].max() == 0 and depth[:, -1].min() == 255
    expected = np.round(np.linspace(0, 255, 64)).astype(int)
    assert np.abs(depth[0] - expected).max() <= 1  # normalised linearly, precision kept from 16 bits
    inverted = grey(pipe.preprocess("depth", path, invert=True))
    assert np.abs(inverted - (255 - depth)).max() <= 1
    raw = grey(pipe.preprocess("depth", path, normalize=False))
    assert abs(raw[0, 0] - round(10_000 / 65535 * 255)) <= 1 and abs(raw[0, -1] - round(30_000 / 65535 * 255)) <= 1


def test_8_bit_depth_maps_in_grey_or_rgb_are_read_as_depth(pipe):
    ramp = np.tile(np.linspace(40, 200, 32).round().astype(np.uint8), (16, 1))
    as_l = grey(pipe.preprocess("depth", ramp))
    as_rgb = grey(pipe.preprocess("depth", np.stack([ramp] * 3, axis=-1)))
    assert np.array_equal(as_l, as_rgb) and as_l.min() == 0 and as_l.max() == 255
    flat = grey(pipe.preprocess("depth", np.full((8, 8), 90, np.uint8)))
    assert flat.max() == 0  # a constant map has no depth to stretch


def test_depth_map_drives_a_generation(pipe, tmp_path):
    path = tmp_path / "depth16.png"
    gradient16().save(path)
    kw = dict(prompt="a room", model="tiny-sd15", width=64, height=64, steps=2, seed=2)
    half = pipe.generate(controls=[sdcompose.Control("depth", image=path, weight=0.5)], **kw)
    assert half.metadata["models"].keys() == {"tiny-sd15", "tiny-controlnet-depth-sd15"}
    assert half.inputs["control-0"].size == (64, 64)  # the map is sized to the output
    full = pipe.generate(controls=[sdcompose.Control("depth", image=path, weight=1.0)], **kw)
    plain = pipe.generate(**kw)
    assert 1e-4 < max_diff(plain.arrays[0], half.arrays[0]) < max_diff(plain.arrays[0], full.arrays[0])


# ---- the estimator: a Depth Anything network of the real architecture, saved as transformers does ------
@pytest.fixture(scope="module")
def estimator(home, tmp_path_factory):
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessor
    folder = home / "models" / "test-annotators" / "depth-anything"
    torch.manual_seed(0)
    backbone = Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                            patch_size=14, image_size=56, out_features=["stage1", "stage2", "stage3", "stage4"],
                            reshape_hidden_states=False)
    config = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=32, neck_hidden_sizes=[8, 16, 32, 32],
                                 fusion_hidden_size=16, head_hidden_size=8, depth_estimation_type="relative")
    DepthAnythingForDepthEstimation(config).save_pretrained(folder, safe_serialization=True)
    DPTImageProcessor(size={"height": 56, "width": 56}, keep_aspect_ratio=True, ensure_multiple_of=14,
                      image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]).save_pretrained(folder)
    overlay = tmp_path_factory.mktemp("catalog") / "models.yaml"
    overlay.write_text(json.dumps({"version": 1, "models": {"annotator-depth-anything-v2-small": {
        "kind": "annotator", "path": "test-annotators/depth-anything"}}}))
    return overlay


def test_estimator_loads_the_real_folder_and_makes_a_full_range_map(estimator, photo):
    pipe = sdcompose.Pipeline(models=estimator, device="cpu")
    calls = []
    plugin = pipe.registry.get("depth")
    original = plugin._estimate
    plugin._estimate = lambda *a: calls.append(a) or original(*a)  # counts estimator runs
    depth = pipe.preprocess("depth", photo, detect_resolution=56)
    assert depth.size == (67, 56)  # the 96x80 photo at a short side of 56
    values = grey(depth)
    assert values.min() == 0 and values.max() == 255
    again = pipe.preprocess("depth", photo, detect_resolution=56)
    assert np.array_equal(np.asarray(again), np.asarray(depth)) and len(calls) == 1  # the content-hash cache
    pipe.preprocess("depth", photo, detect_resolution=70)
    assert len(calls) == 2  # other params: computed again
    sized = pipe.preprocess("depth", photo, width=64, height=64, detect_resolution=56)
    assert sized.size == (64, 64) and len(calls) == 2


def test_photo_input_forces_estimation_on_a_grey_picture(estimator):
    pipe = sdcompose.Pipeline(models=estimator, device="cpu")
    picture = np.tile(np.linspace(0, 255, 70).astype(np.uint8), (56, 1))
    as_map = pipe.preprocess("depth", picture)
    assert as_map.size == (70, 56)
    estimated = pipe.preprocess("depth", picture, input="photo", detect_resolution=56)
    assert not np.array_equal(np.asarray(estimated), np.asarray(as_map))


def test_estimator_folder_without_weights_is_a_clear_error(home, tmp_path, photo):
    empty = home / "models" / "test-annotators" / "empty-depth"
    empty.mkdir(parents=True, exist_ok=True)
    overlay = tmp_path / "models.yaml"
    overlay.write_text(json.dumps({"version": 1, "models": {"annotator-depth-anything-v2-small": {
        "kind": "annotator", "path": "test-annotators/empty-depth"}}}))
    with pytest.raises(sdcompose.ModelError, match="no weight files"):
        sdcompose.Pipeline(models=overlay, device="cpu").preprocess("depth", photo)


# ---- depth files from other tools: colour maps, invalid zeros, metric depth, far backgrounds ---------------
def test_colour_mapped_depth_pictures_are_refused(pipe, photo):
    import cv2
    from sdcompose.plugins.builtin.depth_maps import colormap
    ramp = np.tile(np.linspace(0, 255, 96).astype(np.uint8), (64, 1))
    for name in ("INFERNO", "TURBO"):
        coloured = cv2.applyColorMap(ramp, getattr(cv2, f"COLORMAP_{name}"))[..., ::-1].copy()
        with pytest.raises(sdcompose.PluginError, match=rf"colour-mapped picture of depth \({name.lower()} colours\).*"
                                                        "input=photo"):
            pipe.preprocess("depth", coloured)
        with pytest.raises(sdcompose.PluginError, match="colour-mapped"):
            pipe.preprocess("depth", coloured, input="depth_map")
    with Image.open(photo) as picture:
        assert colormap(np.asarray(picture.convert("RGB"))) is None
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    assert colormap(noise) is None and colormap(np.stack([ramp] * 3, axis=-1)) is None


def test_invalid_zeros_and_nan_are_left_out_of_the_range(pipe):
    clean = gradient16()
    array = np.asarray(clean).copy()
    array[10:20, 20:40] = 0
    holes = grey(pipe.preprocess("depth", Image.fromarray(array)))
    expected = grey(pipe.preprocess("depth", clean))
    mask = np.zeros_like(holes, dtype=bool)
    mask[10:20, 20:40] = True
    assert np.array_equal(holes[~mask], expected[~mask]) and holes[mask].max() == 0
    assert grey(pipe.preprocess("depth", Image.fromarray(array), zeros="depth"))[0, 0] > 0  # zeros as depth: stretched
    floats = np.asarray(clean, dtype=np.float32)
    floats[10:20, 20:40] = np.nan
    assert np.array_equal(grey(pipe.preprocess("depth", Image.fromarray(floats, mode="F")))[~mask], expected[~mask])


def test_metric_depth_inverse_with_a_far_background(pipe, tmp_path):
    """A float TIFF in metres (1 to 10) with a 1e10 background over 40% of it, as renderers write the sky."""
    z = np.tile(np.linspace(1.0, 10.0, 64, dtype=np.float32), (48, 1))
    z[:20] = 1e10
    path = tmp_path / "metric.tiff"
    Image.fromarray(z, mode="F").save(path)
    inverse = grey(pipe.preprocess("depth", path, inverse=True))
    expected = np.round((1 / z[30] - 0.1) / 0.9 * 255)
    assert np.abs(inverse[30] - expected).max() <= 1 and inverse[:20].max() == 0  # near bright; the sky the far end
    linear = grey(pipe.preprocess("depth", path, invert=True))
    assert np.abs(linear[30] - np.round((10 - z[30]) / 9 * 255)).max() <= 1 and linear[:20].max() == 0
    z[:20] = np.inf
    Image.fromarray(z, mode="F").save(path)
    assert np.array_equal(grey(pipe.preprocess("depth", path, inverse=True)), inverse)
    with pytest.raises(sdcompose.PluginError, match=r"inverse \(1/depth, for metric depth\) needs positive values"):
        pipe.preprocess("depth", np.full((8, 8), 0, np.uint8) + np.eye(8, dtype=np.uint8), inverse=True)
