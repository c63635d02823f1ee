"""Pose: OpenPose skeletons from a photo (controlnet-aux's body, hand and face networks) or from OpenPose JSON.

An already-drawn pose map needs no plugin work at all: pass it with ``preprocessed=True``.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from sdcompose.plugins.api import Conditioner, ParamSpec, PluginError

from . import openpose_json
from .annotators import NetCache, detect_size, fill, import_quietly, load_state

POSE_INFO = "openpose"  # the map's ``info`` key holding its people as OpenPose JSON (for /controlnet/detect)
BODY, HAND, FACE = "annotator-openpose-body", "annotator-openpose-hand", "annotator-openpose-face"


class Pose(Conditioner):
    id = "pose"
    api_version = "2.0"
    version = "1.0"
    help = ("OpenPose skeleton from a photo (OpenPose body detector, optional hands and face), or drawn from "
            "OpenPose JSON (`people[].pose_keypoints_2d`, hands, face; COCO-18 or BODY_25). A pose map you "
            "already have goes in with preprocessed=true.")
    families = frozenset({"sd15", "sdxl"})
    annotators = (BODY, HAND, FACE)
    inputs = ("image", "json")
    params = (
        ParamSpec("include_body", "bool", True, help="Draw the body skeleton."),
        ParamSpec("include_hand", "bool", False, help="Detect (photo) or draw (JSON) hand keypoints."),
        ParamSpec("include_face", "bool", False, help="Detect (photo) or draw (JSON) face keypoints."),
        ParamSpec("detect_resolution", "int", 512, min=64, max=2048, step=64,
                  help="Short side of the photo as the detector sees it; the map is drawn at this size."),
        ParamSpec("stick_width", "int", 4, min=1, max=32,
                  help="Limb thickness in pixels (4 is the standard; SDXL openpose models like thicker limbs)."),
        ParamSpec("canvas_width", "int", 0, min=0, max=8192,
                  help="JSON only: canvas width for pixel coordinates when the file has no canvas_width; "
                       "0 = from the file."),
        ParamSpec("canvas_height", "int", 0, min=0, max=8192,
                  help="JSON only: canvas height, as canvas_width."),
    )

    def __init__(self) -> None:
        self._nets = NetCache(size=3)

    def preprocess(self, source, ctx, params):
        if source.data is not None:
            people, width, height = openpose_json.parse(source.data, params["canvas_width"], params["canvas_height"],
                                                        getattr(ctx, "size", None))
        else:
            people, (width, height) = self._detect(source.image, ctx, params)
        canvas = openpose_json.draw(people, width, height, body=params["include_body"],
                                    hands=params["include_hand"], face=params["include_face"],
                                    stick_width=params["stick_width"])
        picture = Image.fromarray(canvas)
        picture.info[POSE_INFO] = openpose_json.to_json(people, width, height)  # what was found, as OpenPose JSON
        return picture

    def _detect(self, image: Image.Image, ctx: Any, params: dict[str, Any]):
        aux = import_quietly("controlnet_aux.open_pose")
        size = detect_size(image.size, params["detect_resolution"])
        detector = aux.OpenposeDetector(
            self._part(ctx, BODY), self._part(ctx, HAND) if params["include_hand"] else None,
            self._part(ctx, FACE) if params["include_face"] else None)
        import torch
        with torch.no_grad():
            poses = detector.detect_poses(np.asarray(image.resize(size, Image.LANCZOS)),
                                          include_hand=params["include_hand"], include_face=params["include_face"])
        return [_person(pose) for pose in poses], size

    def _part(self, ctx: Any, model_id: str) -> Any:
        """controlnet-aux's Body / Hand / Face estimator around a network loaded weights-only from ``model_id``."""
        path = ctx.weight(model_id)
        return self._nets.get(path, ctx.device, lambda: _estimator(model_id, path, ctx.device))


def _estimator(model_id: str, path, device: str) -> Any:
    body_mod = import_quietly("controlnet_aux.open_pose.body")
    hand_mod = import_quietly("controlnet_aux.open_pose.hand")
    face_mod = import_quietly("controlnet_aux.open_pose.face")
    model_mod = import_quietly("controlnet_aux.open_pose.model")
    state = load_state(path, model_id)
    if model_id == FACE:
        net = fill(face_mod.FaceNet(), state, path, "OpenPose face").to(device)
        return _wrap(face_mod.Face, net, inference_size=face_mod.params["inference_img_size"],
                       sigma=face_mod.params["gaussian_sigma"], threshold=face_mod.params["heatmap_peak_thresh"])
    net = model_mod.bodypose_model() if model_id == BODY else model_mod.handpose_model()
    what = "OpenPose body" if model_id == BODY else "OpenPose hand"
    try:  # the .pth files name layers without the wrapper's first path part (controlnet-aux's util.transfer)
        state = {name: state[name.split(".", 1)[1]] for name in net.state_dict()}
    except KeyError as exc:
        raise PluginError(f"{what} weights {path.name} lack layer {exc}; is models.yaml pointing at the right "
                          "file?") from None
    net = fill(net, state, path, what).to(device)
    return _wrap(body_mod.Body if model_id == BODY else hand_mod.Hand, net)


def _wrap(cls: type, net: Any, **attributes: Any) -> Any:
    """An instance of controlnet-aux's estimator ``cls`` around ``net``, without its path-loading __init__."""
    estimator = cls.__new__(cls)
    estimator.model = net
    for name, value in attributes.items():
        setattr(estimator, name, value)
    return estimator


def _person(pose: Any) -> dict[str, Any]:
    def points(keypoints):
        if keypoints is None:
            return None
        return [None if k is None or k.x < 0 or k.y < 0 else (float(k.x), float(k.y)) for k in keypoints]
    return {"body": points(pose.body.keypoints), "left_hand": points(pose.left_hand),
            "right_hand": points(pose.right_hand), "face": points(pose.face)}
