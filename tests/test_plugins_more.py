"""tile, shuffle, scribble, mlsd, normal: maps equal controlnet-aux's on the same input and weight files; each drives
its tiny stand-in ControlNet."""
from __future__ import annotations

import contextlib
import io
import json
import types

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

import sdcompose
from conftest import max_diff


@pytest.fixture(scope="module")
def aux_folder(home):
    """Random networks of the real architectures, saved as the real files (NormalBae in float16 to stay small)."""
    from controlnet_aux.hed import ControlNetHED_Apache2
    from controlnet_aux.mlsd.models.mbv2_mlsd_large import MobileV2_MLSD_Large
    folder = home / "models" / "test-annotators" / "more"
    if not (folder / ".complete").is_file():
        from controlnet_aux.normalbae.nets.NNET import NNET
        folder.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(2)
        torch.save(ControlNetHED_Apache2().state_dict(), folder / "ControlNetHED.pth")
        mlsd = MobileV2_MLSD_Large()
        for param in mlsd.parameters():  # bold random weights, so some lines pass the thresholds
            torch.nn.init.normal_(param, std=0.3)
        torch.save(mlsd.state_dict(), folder / "mlsd_large_512_fp32.pth")
        args = types.SimpleNamespace(mode="client", architecture="BN", pretrained="scannet", sampling_ratio=0.4,
                                     importance_ratio=0.7)
        with contextlib.redirect_stdout(io.StringIO()):
            normal = NNET(args)
        # scannet.pt is a training checkpoint: the weights under "model", named as DataParallel saved them
        torch.save({"model": {f"module.{k}": v.half() if v.is_floating_point() else v
                              for k, v in normal.state_dict().items()}}, folder / "scannet.pt")
        (folder / ".complete").write_text("")
    return folder


@pytest.fixture(scope="module")
def aux_pipe(aux_folder, tmp_path_factory):
    files = {"annotator-hed": "ControlNetHED.pth", "annotator-mlsd": "mlsd_large_512_fp32.pth",
             "annotator-normalbae": "scannet.pt"}
    overlay = tmp_path_factory.mktemp("catalog") / "models.yaml"
    overlay.write_text(json.dumps({"version": 1, "models": {
        model_id: {"kind": "annotator", "path": "test-annotators/more", "filename": name, "allow_pickle": True}
        for model_id, name in files.items()}}))
    return sdcompose.Pipeline(models=overlay, device="cpu")


def same_as(ours, reference, size):
    assert ours.size == size
    assert np.array_equal(np.asarray(ours), np.asarray(reference.resize(size, Image.BILINEAR)))


def test_tile_is_the_image_downsampled_and_blurred(pipe, photo):
    source = Image.open(photo).convert("RGB")
    assert np.array_equal(np.asarray(pipe.preprocess("tile", photo)), np.asarray(source))
    loose = pipe.preprocess("tile", photo, downsample=4, blur=1.5)
    expected = source.resize((24, 20), Image.LANCZOS).resize((96, 80), Image.BICUBIC).filter(ImageFilter.GaussianBlur(1.5))
    assert np.array_equal(np.asarray(loose), np.asarray(expected))


def test_shuffle_equals_controlnet_aux_with_the_same_seed_and_leaves_numpy_alone(pipe, photo):
    from controlnet_aux import ContentShuffleDetector
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    ours = pipe.preprocess("shuffle", photo, seed=7, flow_size=32, detect_resolution=64)
    assert np.array_equal(np.random.get_state()[1], before)  # the caller's random state is untouched
    np.random.seed(7)
    reference = ContentShuffleDetector()(Image.open(photo).convert("RGB"), f=32, detect_resolution=64,
                                         image_resolution=64)
    same_as(ours, reference, (77, 64))
    assert max_diff(ours, pipe.preprocess("shuffle", photo, seed=8, flow_size=32, detect_resolution=64)) > 0


def test_scribble_from_a_photo_equals_controlnet_aux_and_a_drawing_is_inverted(aux_pipe, aux_folder, photo):
    from controlnet_aux import HEDdetector
    ours = aux_pipe.preprocess("scribble", photo, detect_resolution=64)
    reference = HEDdetector.from_pretrained(aux_folder)(Image.open(photo).convert("RGB"), detect_resolution=64,
                                                        image_resolution=64, scribble=True)
    same_as(ours, reference, (77, 64))
    page = np.full((64, 64, 3), 250, np.uint8)
    page[30:34, 8:56] = 10  # a dark stroke on a light page
    strokes = np.asarray(aux_pipe.preprocess("scribble", page, detector="drawing"))[..., 0]
    assert strokes[32, 8:56].min() == 255 and strokes[:20].max() == 0


def test_mlsd_equals_controlnet_aux_on_the_same_file(aux_pipe, aux_folder, photo):
    from controlnet_aux import MLSDdetector
    params = dict(score_threshold=0.0, distance_threshold=0.0, detect_resolution=128)
    ours = aux_pipe.preprocess("mlsd", photo, **params)
    reference = MLSDdetector.from_pretrained(aux_folder)(Image.open(photo).convert("RGB"), thr_v=0.0, thr_d=0.0,
                                                         detect_resolution=128, image_resolution=128)
    same_as(ours, reference, (154, 128))
    assert np.asarray(ours).max() == 255  # lines were drawn: the comparison is not of two black maps


def test_normal_equals_controlnet_aux_on_the_same_file(aux_pipe, aux_folder, photo):
    from controlnet_aux import NormalBaeDetector
    ours = aux_pipe.preprocess("normal", photo, detect_resolution=64)
    reference = NormalBaeDetector.from_pretrained(aux_folder)(Image.open(photo).convert("RGB"), detect_resolution=64,
                                                              image_resolution=64)
    same_as(ours, reference, (77, 64))
    assert np.asarray(ours).std() > 0


@pytest.mark.parametrize("plugin_id, controlnet", [("tile", "tiny-controlnet-tile-sd15"),
                                                   ("shuffle", "tiny-controlnet-shuffle-sd15"),
                                                   ("scribble", "tiny-controlnet-scribble-sd15")])
def test_each_drives_its_tiny_controlnet(aux_pipe, photo, plugin_id, controlnet):
    kw = dict(prompt="a room", model="tiny-sd15", width=64, height=64, steps=2, seed=3)
    params = {"detector": "drawing"} if plugin_id == "scribble" else {}
    result = aux_pipe.generate(controls=[sdcompose.Control(plugin_id, photo, params=params)], **kw)
    assert set(result.metadata["models"]) == {"tiny-sd15", controlnet}
    assert max_diff(result.arrays[0], aux_pipe.generate(**kw).arrays[0]) > 1e-3


def test_sd15_only_conditioners_refuse_sdxl_and_unpinned_controlnets_say_what_to_add(pipe, photo):
    with pytest.raises(sdcompose.PluginError, match="conditioner 'tile' supports sd15; base 'tiny-sdxl' is sdxl"):
        pipe.generate(model="tiny-sdxl", controls=[sdcompose.Control("tile", photo)], width=64, height=64, steps=1)
    with pytest.raises(sdcompose.ModelError, match="no ControlNet in models.yaml serves conditioner 'mlsd' for sd15: "
                                                   "add one with `conditioner: mlsd` to .*models.yaml"):
        pipe.generate(model="sd15", controls=[sdcompose.Control("mlsd", photo)], width=64, height=64, steps=1)
