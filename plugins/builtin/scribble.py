"""Scribble: bold white strokes on black, from a photo (HED or PiDiNet in scribble mode) or a drawing of your own.

The detectors are the soft-edge networks and weights (annotator-hed, annotator-pidinet), run the way
controlnet-aux runs them for the scribble ControlNet: edges thinned, blurred and thresholded into strokes.
A drawing is read as it is, black strokes on white turned into white on black (``invert``).
"""
from __future__ import annotations

import numpy as np

from sdcompose.plugins.api import Conditioner, ParamSpec

from .annotators import NetCache, detect_size, import_quietly, to_map
from .softedge import WEIGHTS, edge_network


class Scribble(Conditioner):
    id = "scribble"
    api_version = "2.0"
    version = "1.0"
    help = "Scribble strokes (white on black) from a photo through HED or PiDiNet, or from your own drawing."
    families = frozenset({"sd15"})
    annotators = tuple(WEIGHTS.values())
    params = (
        ParamSpec("detector", "choice", "hed", choices=(*WEIGHTS, "drawing"),
                  help="hed or pidinet: strokes from a photo; drawing: the image already is a scribble."),
        ParamSpec("invert", "choice", "auto", choices=("auto", "yes", "no"),
                  help="drawing only: auto turns dark strokes on a light page into white on black."),
        ParamSpec("detect_resolution", "int", 512, min=64, max=2048, step=64,
                  help="Short side of the photo as the detector sees it."),
    )

    def __init__(self) -> None:
        self._nets = NetCache(size=2)

    def preprocess(self, source, ctx, params):
        detector = params["detector"]
        if detector == "drawing":
            grey = np.asarray(source.image.convert("L"))
            invert = params["invert"] == "yes" or (params["invert"] == "auto" and grey.mean() > 127)
            strokes = np.where((255 - grey if invert else grey) > 127, 255, 0).astype(np.uint8)
            return to_map(strokes, source.image.size)
        path = ctx.weight(WEIGHTS[detector])
        net = self._nets.get(path, ctx.device, lambda: edge_network(detector, path).to(ctx.device))
        module = import_quietly(f"controlnet_aux.{'pidi' if detector == 'pidinet' else 'hed'}")
        wrapper = module.PidiNetDetector(net) if detector == "pidinet" else module.HEDdetector(net)
        resolution = params["detect_resolution"]
        strokes = wrapper(source.image, detect_resolution=resolution, image_resolution=resolution, scribble=True,
                          output_type="np")
        return to_map(strokes, detect_size(source.image.size, resolution))
