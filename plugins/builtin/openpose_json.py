"""OpenPose keypoints: read the JSON pose editors export, draw the skeleton ControlNet's openpose models know.

JSON in: ``{"people": [{"pose_keypoints_2d": [x, y, c, ...], "hand_left_keypoints_2d": [...],
"hand_right_keypoints_2d": [...], "face_keypoints_2d": [...]}], "canvas_width": W, "canvas_height": H}``.
Bodies are 18-point COCO (54 numbers) or OpenPose's BODY_25 (75 numbers, mapped to COCO); hands
have 21 points, faces 70. Coordinates are pixels of the canvas, all within [0, 1] (normalised,
OpenPose's ``--keypoint_scale 3``) or all within [-1, 1] with some negative (``--keypoint_scale 4``).
A point with confidence 0 (or negative pixel coordinates) is missing. sd-webui-controlnet's
``/controlnet/detect`` response is read through its one ``poses`` entry; openpose-editor's
``animals`` are refused (the openpose ControlNet knows people only), and so is a file with nobody.

Out: the drawing of lllyasviel's annotator (controlnet-aux ``draw_bodypose`` / ``draw_handpose`` /
``draw_facepose``), which the ControlNet v1.1 openpose model was trained on: limbs as ellipses in
60% of their colour, joints as 4-px discs in full colour, hands as HSV-coloured lines with blue
joints, faces as white dots. It is drawn here so that a JSON pose needs neither the detector
package nor matplotlib, and so limb thickness can follow the canvas (``stick_width``).
"""
from __future__ import annotations

import colorsys
import math
from typing import Any

import cv2
import numpy as np

from sdcompose.plugins.api import PluginError

Point = tuple[float, float] | None  # normalised (x, y), or None when missing

COLORS = [(255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
          (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
          (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85)]  # one per COCO point and per limb
LIMBS = [(1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13),
         (1, 0), (0, 14), (14, 16), (0, 15), (15, 17)]  # COCO-18 point pairs, 0-based
HAND_EDGES = [(0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (0, 9), (9, 10), (10, 11), (11, 12),
              (0, 13), (13, 14), (14, 15), (15, 16), (0, 17), (17, 18), (18, 19), (19, 20)]
BODY25_TO_COCO = [0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18]
SIZES = {"pose_keypoints_2d": (18, 25), "hand_left_keypoints_2d": (21,), "hand_right_keypoints_2d": (21,),
         "face_keypoints_2d": (70,)}
MAX_PEOPLE = 100


# ---- drawing ----------------------------------------------------------------------------------
def _pixel(point: Point, width: int, height: int) -> tuple[int, int] | None:
    return None if point is None else (int(point[0] * width), int(point[1] * height))


def draw_body(canvas: np.ndarray, points: list[Point], stick_width: int = 4) -> None:
    height, width = canvas.shape[:2]
    for (a, b), color in zip(LIMBS, COLORS):
        if points[a] is None or points[b] is None:
            continue
        xs = np.array([points[a][0], points[b][0]]) * width
        ys = np.array([points[a][1], points[b][1]]) * height
        length = math.hypot(xs[0] - xs[1], ys[0] - ys[1])
        angle = math.degrees(math.atan2(ys[0] - ys[1], xs[0] - xs[1]))
        polygon = cv2.ellipse2Poly((int(xs.mean()), int(ys.mean())), (int(length / 2), stick_width), int(angle),
                                   0, 360, 1)
        cv2.fillConvexPoly(canvas, polygon, [int(c * 0.6) for c in color])
    for point, color in zip(points, COLORS):
        pixel = _pixel(point, width, height)
        if pixel is not None:
            cv2.circle(canvas, pixel, 4, color, thickness=-1)


def draw_hand(canvas: np.ndarray, points: list[Point]) -> None:
    height, width = canvas.shape[:2]
    for i, (a, b) in enumerate(HAND_EDGES):
        start, end = _pixel(points[a], width, height), _pixel(points[b], width, height)
        if start is not None and end is not None:
            color = [c * 255 for c in colorsys.hsv_to_rgb(i / len(HAND_EDGES), 1.0, 1.0)]
            cv2.line(canvas, start, end, color, thickness=2)
    for point in points:
        pixel = _pixel(point, width, height)
        if pixel is not None:
            cv2.circle(canvas, pixel, 4, (0, 0, 255), thickness=-1)


def draw_face(canvas: np.ndarray, points: list[Point]) -> None:
    height, width = canvas.shape[:2]
    for point in points:
        pixel = _pixel(point, width, height)
        if pixel is not None:
            cv2.circle(canvas, pixel, 3, (255, 255, 255), thickness=-1)


def draw(people: list[dict[str, Any]], width: int, height: int, body: bool = True, hands: bool = True,
         face: bool = True, stick_width: int = 4) -> np.ndarray:
    """An HxWx3 uint8 RGB skeleton map of ``people`` (each: body, left_hand, right_hand, face point lists)."""
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    for person in people:
        if body and person.get("body"):
            draw_body(canvas, person["body"], stick_width)
        for side in ("left_hand", "right_hand") if hands else ():
            if person.get(side):
                draw_hand(canvas, person[side])
        if face and person.get("face"):
            draw_face(canvas, person["face"])
    return canvas


# ---- writing JSON -----------------------------------------------------------------------------
def to_json(people: list[dict[str, Any]], width: int, height: int) -> dict[str, Any]:
    """``people`` (normalised points, as ``parse`` and the detector give them) as OpenPose JSON in pixels of a
    ``width`` x ``height`` canvas: the format pose editors and sd-webui-controlnet's ``/controlnet/detect`` use.
    A missing point is (0, 0, 0); ``parse`` reads the result back."""
    def flat(points: list[Point] | None) -> list[float] | None:
        if not points:
            return None
        return [v for p in points for v in ((p[0] * width, p[1] * height, 1.0) if p is not None else (0.0, 0.0, 0.0))]
    keys = (("pose_keypoints_2d", "body"), ("hand_left_keypoints_2d", "left_hand"),
            ("hand_right_keypoints_2d", "right_hand"), ("face_keypoints_2d", "face"))
    return {"people": [{key: flat(person.get(name)) for key, name in keys} for person in people],
            "canvas_width": width, "canvas_height": height}


# ---- reading JSON -----------------------------------------------------------------------------
def parse(data: Any, canvas_width: int = 0, canvas_height: int = 0,
          output: tuple[int, int] | None = None) -> tuple[list[dict[str, Any]], int, int]:
    """People with normalised points, and the size to draw them at, from OpenPose JSON.

    Pixel coordinates are read against the JSON's ``canvas_width``/``canvas_height`` (or, when it
    has none, the params); the map is drawn at the params' size if given, else the JSON's, else, for
    normalised coordinates, at ``output`` (the request's size, so the pose keeps the output's aspect
    instead of being drawn square and stretched), else 512x512. Malformed JSON raises PluginError naming the key.
    """
    if isinstance(data, list):
        if len(data) != 1:
            raise PluginError(f"pose JSON is a list of {len(data)} frames; give one frame (one object with `people`)")
        data = data[0]
    data = _unwrap(data)
    if not isinstance(data, dict) or not isinstance(data.get("people"), list):
        raise PluginError("pose JSON needs a `people` list, as OpenPose and pose editors write it")
    if len(data["people"]) > MAX_PEOPLE:
        raise PluginError(f"pose JSON has {len(data['people'])} people; the limit is {MAX_PEOPLE}")
    raw = [_person(i, person) for i, person in enumerate(data["people"])]
    json_size = (_canvas_side(data, "canvas_width"), _canvas_side(data, "canvas_height"))
    width, height = canvas_width or json_size[0], canvas_height or json_size[1]
    coords = [v for person in raw for points in person.values() if points for p in points if p for v in p]
    if not coords:
        raise PluginError("pose JSON has no person with a visible keypoint; the map would be black (all "
                          "confidences 0, or an empty `people` list)")
    symmetric = all(-1.0 <= v <= 1.0 for v in coords) and any(v < 0 for v in coords)  # --keypoint_scale 4
    if symmetric:
        raw = [{key: None if points is None else [None if p is None else ((p[0] + 1) / 2, (p[1] + 1) / 2)
                                                  for p in points]
                for key, points in person.items()} for person in raw]
    if symmetric or all(0.0 <= v <= 1.0 for v in coords):
        scale = (1.0, 1.0)
        width, height = (width, height) if width and height else output or (512, 512)
    else:
        raw = [{key: None if points is None else [None if p is None or p[0] < 0 or p[1] < 0 else p for p in points]
                for key, points in person.items()} for person in raw]
        scale = (float(json_size[0] or canvas_width), float(json_size[1] or canvas_height))
        if not all(scale):
            raise PluginError("pose JSON has pixel coordinates but no canvas_width/canvas_height; add them to the "
                              "file or pass the canvas_width and canvas_height params")
    people = [{key: None if points is None else [None if p is None else (p[0] / scale[0], p[1] / scale[1])
                                                  for p in points]
               for key, points in person.items()} for person in raw]
    return people, width, height


def _unwrap(data: Any) -> Any:
    """One pose from a ``/controlnet/detect`` response (``poses``); openpose-editor animals refused."""
    if isinstance(data, dict) and "people" not in data and isinstance(data.get("poses"), list):
        poses = data["poses"]
        if len(poses) != 1:
            raise PluginError(f"pose JSON is a /controlnet/detect response with {len(poses)} poses; pass one of "
                              f"them (its `poses[0]`{f' to `poses[{len(poses) - 1}]`' if len(poses) > 1 else ''})")
        data = poses[0]
    if isinstance(data, dict) and isinstance(data.get("animals"), list) and data["animals"]:
        raise PluginError(f"pose JSON holds {len(data['animals'])} animal pose(s) (openpose-editor `animals`), which "
                          "the openpose ControlNet does not know; remove them, or use an animal-pose map image")
    return data


def _canvas_side(data: dict[str, Any], key: str) -> int:
    value = data.get(key)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 8 <= value <= 8192:
        raise PluginError(f"pose JSON {key} must be a number from 8 to 8192, got {value!r}")
    return int(value)


def _person(index: int, person: Any) -> dict[str, list[Point] | None]:
    if not isinstance(person, dict):
        raise PluginError(f"pose JSON people[{index}] must be an object with keypoint lists")
    out: dict[str, list[Point] | None] = {}
    for key, name in (("pose_keypoints_2d", "body"), ("hand_left_keypoints_2d", "left_hand"),
                      ("hand_right_keypoints_2d", "right_hand"), ("face_keypoints_2d", "face")):
        out[name] = _points(f"people[{index}].{key}", person.get(key), SIZES[key])
    if out["body"] is not None and len(out["body"]) == 25:
        out["body"] = [out["body"][i] for i in BODY25_TO_COCO]
    return out


def _points(where: str, values: Any, counts: tuple[int, ...]) -> list[Point] | None:
    if values is None or values == []:
        return None
    if not isinstance(values, list) or len(values) not in [3 * n for n in counts]:
        sizes = " or ".join(f"{3 * n} ({n} points as x, y, confidence)" for n in counts)
        got = f"{len(values)} numbers" if isinstance(values, list) else type(values).__name__
        raise PluginError(f"pose JSON {where} must hold {sizes}, got {got}")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
        raise PluginError(f"pose JSON {where} must hold finite numbers only")
    triples = [values[i:i + 3] for i in range(0, len(values), 3)]
    return [None if c <= 0 else (float(x), float(y)) for x, y, c in triples]
