"""The pose conditioner: OpenPose JSON drawn as the standard skeleton, the detector's real loading code, errors."""
from __future__ import annotations

import io
import json
import pathlib
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

import sdcompose
from conftest import max_diff

# 18 COCO points on a 128x128 canvas, spread out so no limb crosses another limb's midpoint.
BODY = [(64, 20), (64, 44), (40, 44), (30, 70), (24, 100), (88, 44), (98, 70), (104, 100), (52, 90), (48, 112),
        (46, 126), (76, 90), (80, 112), (82, 126), (58, 12), (70, 12), (50, 16), (78, 16)]
LIMBS = [(1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13),
         (1, 0), (0, 14), (14, 16), (0, 15), (15, 17)]
COLORS = [(255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
          (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
          (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85)]


def pose_json(points=BODY, **extra):
    flat = [v for x, y in points for v in (x, y, 1.0)]
    return {"canvas_width": 128, "canvas_height": 128, "people": [{"pose_keypoints_2d": flat, **extra}]}


def render(pipe, data, **params):
    return np.asarray(pipe.preprocess("pose", data, **params))


def test_json_draws_the_standard_skeleton(pipe):
    image = render(pipe, pose_json())
    assert image.shape == (128, 128, 3)
    for (a, b), color in zip(LIMBS, COLORS):  # the middle of each long limb: 60% of its colour
        (xa, ya), (xb, yb) = BODY[a], BODY[b]
        if np.hypot(xa - xb, ya - yb) < 16:
            continue  # short face limbs are covered by their joint discs
        mid = image[(ya + yb) // 2, (xa + xb) // 2]
        assert tuple(mid) == tuple(int(c * 0.6) for c in color), (a, b)
    for (x, y), color in zip(BODY, COLORS):  # every joint: a disc in its full colour
        assert tuple(image[y, x]) == color
    assert image[2:10, 2:10].max() == 0 and image[110, 64].max() == 0  # background and the gap between the knees


def test_missing_points_drop_their_limbs_and_other_formats_draw_the_same(pipe):
    full = render(pipe, pose_json())
    data = pose_json()
    data["people"][0]["pose_keypoints_2d"][4 * 3 + 2] = 0  # right wrist: confidence 0
    without_wrist = render(pipe, data)
    assert tuple(full[85, 27]) != (0, 0, 0) and tuple(without_wrist[85, 27]) == (0, 0, 0)
    assert max_diff(full[:, 64:], without_wrist[:, 64:]) == 0
    normalised = {"people": [{"pose_keypoints_2d": [v for x, y in BODY for v in (x / 128, y / 128, 1)]}]}
    assert np.array_equal(render(pipe, normalised, canvas_width=128, canvas_height=128), full)
    body25 = [None] * 25  # OpenPose's BODY_25 layout: mid-hip at 8, feet at 19-24
    for coco, b25 in enumerate([0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18]):
        body25[b25] = BODY[coco]
    flat = [v for p in body25 for v in ((*p, 1.0) if p else (0, 0, 0))]
    as_list = [{"canvas_width": 128, "canvas_height": 128, "people": [{"pose_keypoints_2d": flat}]}]
    assert np.array_equal(render(pipe, as_list), full)


def test_hands_and_face_are_drawn_only_when_asked(pipe):
    hand = [v for i in range(21) for v in (20 + i * 4, 60, 1.0)]
    face = [v for i in range(70) for v in (40 + i, 30, 1.0)]
    data = pose_json(hand_left_keypoints_2d=hand, face_keypoints_2d=face)
    plain = render(pipe, data)
    both = render(pipe, data, include_hand=True, include_face=True)
    assert np.array_equal(plain, render(pipe, pose_json()))
    assert tuple(both[60, 20]) == (0, 0, 255)  # hand joints are blue discs
    assert tuple(both[30, 100]) == (255, 255, 255)  # face points are white dots
    no_body = render(pipe, data, include_body=False, include_face=True)
    assert tuple(no_body[20, 64]) != COLORS[0] and tuple(no_body[30, 100]) == (255, 255, 255)


def test_canvas_and_stick_width_params(pipe):
    wide = render(pipe, pose_json(), canvas_width=256, canvas_height=128)
    assert wide.shape == (128, 256, 3) and tuple(wide[20, 128]) == COLORS[0]
    thin, thick = render(pipe, pose_json(), stick_width=2), render(pipe, pose_json(), stick_width=8)
    assert (thick > 0).sum() > (thin > 0).sum()


@pytest.mark.parametrize("data,message", [
    ({"people": [{"pose_keypoints_2d": [1, 2, 3]}]}, "must hold 54 (18 points"),
    ({"people": [{"pose_keypoints_2d": [float("nan")] * 54}]}, "finite numbers"),
    ({"animals": []}, "needs a `people` list"),
    ([{"people": []}, {"people": []}], "list of 2 frames"),
    ({"people": [{"pose_keypoints_2d": [v for x, y in BODY for v in (x, y, 1)]}]}, "no canvas_width"),
    ({"canvas_width": 10**9, "canvas_height": 5, "people": []}, "canvas_width must be a number from 8 to 8192"),
])
def test_bad_json_is_refused_in_one_sentence(pipe, data, message):
    with pytest.raises(sdcompose.PluginError, match=message.replace("(", r"\(").replace("[", r"\[")):
        pipe.preprocess("pose", data)


def test_pose_json_file_drives_a_generation_like_its_drawn_map(pipe, tmp_path):
    path = tmp_path / "pose.json"
    path.write_text(json.dumps(pose_json()))
    kw = dict(prompt="a dancer", model="tiny-sd15", width=64, height=64, steps=2, seed=5)
    from_json = pipe.generate(controls=[sdcompose.Control("pose", image=str(path))], **kw)
    drawn = pipe.preprocess("pose", str(path))
    from_map = pipe.generate(controls=[sdcompose.Control("pose", image=drawn, preprocessed=True)], **kw)
    assert max_diff(from_json.arrays[0], from_map.arrays[0]) == 0
    assert set(from_json.metadata["models"]) == {"tiny-sd15", "tiny-controlnet-openpose-sd15"}
    plain = pipe.generate(**kw)
    assert max_diff(from_json.arrays[0], plain.arrays[0]) > 1e-3


# ---- the detector: random networks of the real architectures, saved as the real files ----------------
@pytest.fixture(scope="module")
def openpose_models(home, tmp_path_factory):
    """body_pose_model.pth, hand_pose_model.pth, facenet.pth with random weights, in lllyasviel's layouts."""
    from controlnet_aux.open_pose.face import FaceNet
    from controlnet_aux.open_pose.model import bodypose_model, handpose_model
    folder = home / "models" / "test-annotators" / "openpose"
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    for name, net, strip in (("body_pose_model.pth", bodypose_model(), True),
                             ("hand_pose_model.pth", handpose_model(), True), ("facenet.pth", FaceNet(), False)):
        state = net.half().state_dict()  # half precision only to keep the test files small; same keys and shapes
        if strip:  # the originals name layers without controlnet-aux's wrapper prefix (model0., model1_1., ...)
            state = {k.split(".", 1)[1]: v for k, v in state.items()}
        torch.save(state, folder / name)
    overlay = tmp_path_factory.mktemp("catalog") / "models.yaml"
    entries = {f"annotator-openpose-{part}": {"kind": "annotator", "path": "test-annotators/openpose",
                                              "filename": name, "allow_pickle": True}
               for part, name in (("body", "body_pose_model.pth"), ("hand", "hand_pose_model.pth"),
                                  ("face", "facenet.pth"))}
    overlay.write_text(json.dumps({"version": 1, "models": entries}))  # JSON is YAML
    return overlay, folder


def test_detector_loads_the_real_files_and_draws_what_it_finds(openpose_models, photo):
    overlay, _ = openpose_models
    pipe = sdcompose.Pipeline(models=overlay, device="cpu")
    pose = pipe.preprocess("pose", photo, detect_resolution=64, include_hand=True, include_face=True)
    assert pose.size == (77, 64)  # the photo (96x80) at a short side of 64, aspect kept
    assert np.asarray(pose).max() == 0  # random weights find nobody: an empty map, not a crash
    nets = pipe.registry.get("pose")._nets._nets
    assert len(nets) == 3 and {type(n).__name__ for n in nets.values()} == {"Body", "Hand", "Face"}


def test_detector_never_fetches_weights_a_request_does_not_use(home, photo, tmp_path):
    broken = tmp_path / "models.yaml"  # hand and face point at files that do not exist
    broken.write_text(json.dumps({"version": 1, "models": {
        f"annotator-openpose-{p}": {"kind": "annotator", "path": "nowhere", "filename": f"{p}.pth",
                                    "allow_pickle": True} for p in ("body", "hand", "face")}}))
    pipe = sdcompose.Pipeline(models=broken, device="cpu")
    assert pipe.preprocess("pose", pose_json()).size == (128, 128)  # JSON needs no detector weights at all
    with pytest.raises(sdcompose.ModelError, match="annotator-openpose-body.*does not exist"):
        pipe.preprocess("pose", photo)


class _Sentinel:
    """Unpickling this creates a file: proof that code ran."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return pathlib.Path.touch, (self.path,)


def test_a_pickle_with_code_is_refused_without_running_it(openpose_models, photo, tmp_path):
    _, folder = openpose_models
    sentinel = tmp_path / "pwned"
    (folder / "evil_body.pth").write_bytes(pickle.dumps({"conv1_1.weight": _Sentinel(sentinel)}))
    overlay = tmp_path / "models.yaml"
    entry = {"kind": "annotator", "path": "test-annotators/openpose", "filename": "evil_body.pth"}
    overlay.write_text(json.dumps({"version": 1, "models": {"annotator-openpose-body": entry}}))
    with pytest.raises(sdcompose.ModelError, match="pickled weights"):
        sdcompose.Pipeline(models=overlay, device="cpu").preprocess("pose", photo)
    entry["allow_pickle"] = True  # opted in: still loaded weights-only
    overlay.write_text(json.dumps({"version": 1, "models": {"annotator-openpose-body": entry}}))
    with pytest.raises((sdcompose.ModelError, sdcompose.PluginError), match="weights-only"):
        sdcompose.Pipeline(models=overlay, device="cpu").preprocess("pose", photo)
    assert not sentinel.exists()


def scaled(points, to):
    """BODY on its 128-px canvas as OpenPose's --keypoint_scale 3 ([0, 1]) or 4 ([-1, 1]) writes it."""
    return [((x / 128, y / 128) if to == 3 else (x / 64 - 1, y / 64 - 1)) for x, y in points]


def test_keypoint_scales_3_and_4_draw_like_pixels(pipe):
    expected = render(pipe, pose_json())
    for scale in (3, 4):
        data = pose_json(scaled(BODY, scale))
        del data["canvas_width"], data["canvas_height"]
        assert max_diff(render(pipe, data, canvas_width=128, canvas_height=128), expected) == 0, scale


def test_a_controlnet_detect_response_is_read_through_its_pose(pipe):
    expected = render(pipe, pose_json())
    response = {"images": ["..."], "poses": [pose_json()], "info": "Success"}
    assert max_diff(render(pipe, response), expected) == 0
    with pytest.raises(sdcompose.PluginError, match=r"response with 2 poses; pass one of them \(its `poses\[0\]` to "
                                                    r"`poses\[1\]`\)"):
        render(pipe, {"poses": [pose_json(), pose_json()]})


@pytest.mark.parametrize("data, message", [
    ({"canvas_width": 64, "canvas_height": 64, "people": [],
      "animals": [[[10, 10, 1]] * 17]}, r"holds 1 animal pose\(s\) \(openpose-editor `animals`\)"),
    ({"canvas_width": 64, "canvas_height": 64, "people": []}, "no person with a visible keypoint"),
    ({"people": [{"pose_keypoints_2d": [5, 5, 0] * 18}]}, "no person with a visible keypoint"),
])
def test_files_that_would_draw_nothing_are_refused(pipe, data, message):
    with pytest.raises(sdcompose.PluginError, match=message):
        render(pipe, data)


def test_body25_with_face_matches_controlnet_aux_drawing(pipe):
    """The same keypoints drawn by controlnet-aux's own OpenPose drawing functions (its hand drawing needs
    matplotlib, which sdcompose does not install; hands are left out of the map here)."""
    from controlnet_aux.open_pose import util
    from controlnet_aux.open_pose.body import Keypoint
    body25 = [*BODY[:8], (64, 88), *BODY[8:], (40, 120), (36, 122), (46, 126), (88, 120), (92, 122), (82, 126)]
    hand = [(20 + 2 * i, 60 + (i % 4) * 3) for i in range(21)]
    face = [(50 + i % 10 * 3, 20 + i // 10 * 2) for i in range(70)]
    flat = lambda points: [v for x, y in points for v in (x, y, 1.0)]  # noqa: E731
    data = {"canvas_width": 128, "canvas_height": 128, "people": [{
        "pose_keypoints_2d": flat(body25), "hand_left_keypoints_2d": flat(hand),
        "hand_right_keypoints_2d": flat([(x + 60, y) for x, y in hand]), "face_keypoints_2d": flat(face)}]}
    ours = render(pipe, data, include_hand=False, include_face=True)
    canvas = np.zeros((128, 128, 3), dtype=np.uint8)
    keypoints = [Keypoint(x / 128, y / 128) for x, y in BODY]
    canvas = util.draw_bodypose(canvas, keypoints)
    canvas = util.draw_facepose(canvas, [Keypoint(x / 128, y / 128) for x, y in face])
    assert (ours != canvas).any(axis=2).mean() < 0.01


def test_normalised_coordinates_are_drawn_at_the_requests_aspect(pipe, tmp_path):
    """Normalised points with no canvas: drawn at the output's size (96x64 here), as controlnet-aux draws the same
    keypoints on a canvas of that size, not drawn square and stretched."""
    from controlnet_aux.open_pose import util
    from controlnet_aux.open_pose.body import Keypoint
    data = pose_json([(x / 128, y / 128) for x, y in BODY])
    del data["canvas_width"], data["canvas_height"]
    path = tmp_path / "pose.json"
    path.write_text(json.dumps(data))
    result = pipe.generate("a dancer", model="tiny-sd15", width=96, height=64, steps=1, seed=1,
                           controls=[sdcompose.Control("pose", path)])
    drawn = np.asarray(result.inputs["control-0"])
    reference = util.draw_bodypose(np.zeros((64, 96, 3), dtype=np.uint8), [Keypoint(x / 128, y / 128) for x, y in BODY])
    assert drawn.shape == (64, 96, 3) and (drawn != reference).any(axis=2).mean() < 0.01
    assert render(pipe, data).shape == (512, 512, 3)  # no output size: 512x512, as before


def test_a_map_carries_its_people_as_openpose_json_that_draws_it_again(pipe):
    drawn = pipe.preprocess("pose", pose_json(), include_hand=True)
    found = drawn.info["openpose"]
    assert (found["canvas_width"], found["canvas_height"]) == (128, 128)
    assert found["people"][0]["pose_keypoints_2d"] == pose_json()["people"][0]["pose_keypoints_2d"]
    assert max_diff(render(pipe, found), np.asarray(drawn)) == 0


def test_controlnet_detect_answers_the_pose_json_beside_the_map(openpose_models, photo):
    import base64

    from starlette.testclient import TestClient

    from sdcompose.server.app import build_app
    from sdcompose.server.jobs import JobQueue
    from sdcompose.server.service import Service
    overlay, _ = openpose_models
    jobs = JobQueue()
    try:
        app = build_app(Service(sdcompose.Pipeline(models=overlay, device="cpu"), jobs))
        image = base64.b64encode(photo.read_bytes()).decode()
        with TestClient(app) as client:
            answer = client.post("/controlnet/detect", json={"controlnet_module": "openpose_full",
                                                             "controlnet_input_images": [image]})
            assert answer.status_code == 200, answer.text[:300]
            data = answer.json()
            [drawn] = [Image.open(io.BytesIO(base64.b64decode(x))) for x in data["images"]]
            [pose] = data["poses"]  # random weights find nobody: an empty pose of the map's size
            assert pose == {"people": [], "canvas_width": drawn.width, "canvas_height": drawn.height}
            canny = client.post("/controlnet/detect", json={"controlnet_module": "canny",
                                                            "controlnet_input_images": [image]}).json()
            assert "poses" not in canny and len(canny["images"]) == 1
    finally:
        jobs.close()
