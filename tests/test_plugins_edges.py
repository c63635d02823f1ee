"""Edge conditioners: canny on a drawn shape; soft edge (HED, PiDiNet) and line art through their real weight files."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import sdcompose
from conftest import max_diff


def square(value=255, size=64, inset=16):
    array = np.zeros((size, size), np.uint8)
    array[inset:size - inset, inset:size - inset] = value
    return array


def test_canny_traces_a_drawn_square(pipe):
    edges = np.asarray(pipe.preprocess("canny", square()))[..., 0]
    ys, xs = np.nonzero(edges)
    assert set(np.unique(edges)) == {0, 255}
    near_border = (np.minimum(np.abs(ys[:, None] - [15, 16, 47, 48]).min(1), np.abs(xs[:, None] - [15, 16, 47, 48]).min(1))
                   == 0)
    assert near_border.all()  # every edge pixel sits on the square's outline
    for side in (edges[15:17, 20:44], edges[47:49, 20:44], edges[20:44, 15:17], edges[20:44, 47:49]):
        assert (side > 0).sum() >= 20  # and every side is traced
    assert edges[24:40, 24:40].max() == 0 and edges[:8, :8].max() == 0


def test_canny_thresholds_decide_which_edges_count(pipe):
    faint = square(value=30)
    assert np.asarray(pipe.preprocess("canny", faint, low_threshold=20, high_threshold=50)).max() == 255
    assert np.asarray(pipe.preprocess("canny", faint, low_threshold=200, high_threshold=250)).max() == 0
    with pytest.raises(sdcompose.PluginError, match="low_threshold must not exceed high_threshold"):
        pipe.preprocess("canny", faint, low_threshold=120, high_threshold=60)
    with pytest.raises(sdcompose.PluginError, match="param 'low_threshold' must be <= 255"):
        pipe.preprocess("canny", faint, low_threshold=900)


# ---- soft edge and line art: random networks of the real architectures, in the real files ----------
@pytest.fixture(scope="module")
def edge_models(home, tmp_path_factory):
    from controlnet_aux.hed import ControlNetHED_Apache2
    from controlnet_aux.lineart import Generator
    from controlnet_aux.pidi.model import pidinet
    folder = home / "models" / "test-annotators" / "edges"
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(1)
    torch.save(ControlNetHED_Apache2().state_dict(), folder / "ControlNetHED.pth")
    # PiDiNet's file is its training checkpoint: the weights under "state_dict", named as DataParallel saved them.
    torch.save({"epoch": 14, "state_dict": {f"module.{k}": v for k, v in pidinet().state_dict().items()}},
               folder / "table5_pidinet.pth")
    torch.save(Generator(3, 1, 3).state_dict(), folder / "sk_model.pth")
    torch.save(Generator(3, 1, 3).state_dict(), folder / "sk_model2.pth")
    files = {"annotator-hed": "ControlNetHED.pth", "annotator-pidinet": "table5_pidinet.pth",
             "annotator-lineart": "sk_model.pth", "annotator-lineart-coarse": "sk_model2.pth"}
    overlay = tmp_path_factory.mktemp("catalog") / "models.yaml"
    overlay.write_text(json.dumps({"version": 1, "models": {
        model_id: {"kind": "annotator", "path": "test-annotators/edges", "filename": name, "allow_pickle": True}
        for model_id, name in files.items()}}))
    return overlay


@pytest.fixture(scope="module")
def edges_pipe(edge_models):
    return sdcompose.Pipeline(models=edge_models, device="cpu")


def grey(image):
    array = np.asarray(image)
    assert (array[..., 0] == array[..., 1]).all() and (array[..., 1] == array[..., 2]).all()
    return array[..., 0]


@pytest.mark.parametrize("detector", ["hed", "pidinet"])
def test_soft_edge_detectors_match_controlnet_aux_on_the_same_files(edges_pipe, home, photo, detector):
    from controlnet_aux import HEDdetector, PidiNetDetector
    soft = edges_pipe.preprocess("softedge", photo, detector=detector, detect_resolution=64)
    assert soft.size == (77, 64)  # the 96x80 photo at a short side of 64
    reference = (HEDdetector if detector == "hed" else PidiNetDetector).from_pretrained(
        home / "models" / "test-annotators" / "edges")  # controlnet-aux's own loader, from the local folder
    expected = reference(Image.open(photo).convert("RGB"), detect_resolution=64, image_resolution=64)
    assert np.array_equal(np.asarray(soft), np.asarray(expected.resize((77, 64), Image.BILINEAR)))
    wide = Image.new("RGB", (128, 64), (200, 200, 200))
    wide.paste((20, 20, 200), (30, 10, 90, 54))
    safe = grey(edges_pipe.preprocess("softedge", wide, detector=detector, detect_resolution=64, safe=True))
    assert set(np.unique(safe)) <= {0, 127, 255}  # safe mode quantises to a few levels


def test_soft_edge_detectors_differ_and_are_cached(edges_pipe, photo):
    hed = edges_pipe.preprocess("softedge", photo, detector="hed", detect_resolution=64)
    pidi = edges_pipe.preprocess("softedge", photo, detector="pidinet", detect_resolution=64)
    assert max_diff(hed, pidi) > 0
    assert len(edges_pipe.registry.get("softedge")._nets._nets) == 2


def test_line_art_fine_and_coarse_match_controlnet_aux_on_the_same_files(edges_pipe, home, photo):
    from controlnet_aux import LineartDetector
    reference = LineartDetector.from_pretrained(home / "models" / "test-annotators" / "edges")
    source = Image.open(photo).convert("RGB")
    for coarse in (False, True):
        lines = edges_pipe.preprocess("lineart", photo, detect_resolution=64, coarse=coarse)
        expected = reference(source, coarse=coarse, detect_resolution=64, image_resolution=64)
        assert lines.size == (77, 64)
        assert np.array_equal(np.asarray(lines), np.asarray(expected.resize((77, 64), Image.BILINEAR)))
    fine, coarse = (edges_pipe.preprocess("lineart", photo, detect_resolution=64, coarse=c) for c in (False, True))
    assert max_diff(grey(fine), grey(coarse)) > 0  # two files, two networks


def test_soft_edge_drives_a_generation(edges_pipe, photo):
    kw = dict(prompt="a vase", model="tiny-sd15", width=64, height=64, steps=2, seed=4)
    result = edges_pipe.generate(controls=[sdcompose.Control("softedge", photo, params={"detect_resolution": 64})],
                                 **kw)
    assert set(result.metadata["models"]) == {"tiny-sd15", "tiny-controlnet-softedge-sd15"}
    assert max_diff(result.arrays[0], edges_pipe.generate(**kw).arrays[0]) > 1e-3


def test_line_art_has_no_sdxl_family(edges_pipe, photo):
    with pytest.raises(sdcompose.PluginError, match="conditioner 'lineart' supports sd15; base 'tiny-sdxl' is sdxl"):
        edges_pipe.generate(model="tiny-sdxl", controls=[sdcompose.Control("lineart", photo)], width=64, height=64,
                            steps=1)


def test_a_weight_file_for_another_network_is_one_clear_error(home, edge_models, photo, tmp_path):
    overlay = tmp_path / "models.yaml"  # the PiDiNet entry pointing at HED's file
    overlay.write_text(json.dumps({"version": 1, "models": {"annotator-pidinet": {
        "kind": "annotator", "path": "test-annotators/edges", "filename": "ControlNetHED.pth", "allow_pickle": True}}}))
    pipe = sdcompose.Pipeline(models=overlay, device="cpu")
    with pytest.raises(sdcompose.PluginError, match="ControlNetHED.pth do not fit the PiDiNet network"):
        pipe.preprocess("softedge", photo, detector="pidinet")
