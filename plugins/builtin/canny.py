"""Canny edges: no weights, OpenCV's detector with its two thresholds."""
from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

from sdcompose.plugins.api import Conditioner, ParamSpec


class Canny(Conditioner):
    id = "canny"
    api_version = "2.0"
    version = "1.0"
    help = "Edges from OpenCV's Canny detector; white lines on black, as ControlNet canny models expect."
    families = frozenset({"sd15", "sdxl"})
    params = (
        ParamSpec("low_threshold", "int", 100, min=1, max=255, help="Edges weaker than this are dropped."),
        ParamSpec("high_threshold", "int", 200, min=1, max=255, help="Edges stronger than this are kept."),
    )

    def preprocess(self, source, ctx, params):
        if params["low_threshold"] > params["high_threshold"]:
            from sdcompose.plugins.api import PluginError
            raise PluginError("canny: low_threshold must not exceed high_threshold")
        gray = cv2.cvtColor(np.asarray(source.image), cv2.COLOR_RGB2GRAY)
        edges = cv2.Canny(gray, params["low_threshold"], params["high_threshold"])
        return Image.fromarray(edges).convert("RGB")
