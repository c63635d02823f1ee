"""Sobel edges for sdcompose: the image gradient's strength as a soft-edge map.

A Sobel map looks like a soft-edge (HED/PiDiNet) map, so this plugin reuses the soft-edge
ControlNets that sdcompose's models.yaml already names; it ships no weights of its own.
"""
from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

from sdcompose.plugins.api import Conditioner, ParamSpec, PluginError


class SobelEdges(Conditioner):
    id = "sobel"  # must equal the entry-point name in pyproject.toml
    version = "0.1.0"
    api_version = "1.0"  # the sdcompose plugin API this was written for
    help = "Edge strength from a Sobel filter, white on black; drives the soft-edge ControlNets."
    families = frozenset({"sd15", "sdxl"})
    controlnets = {"sd15": "controlnet-softedge-sd15", "sdxl": "controlnet-softedge-sdxl"}
    params = (
        ParamSpec("ksize", "int", 3, min=1, max=7, step=2, help="Sobel kernel size: 1, 3, 5 or 7."),
        ParamSpec("blur", "float", 1.0, min=0.0, max=10.0, step=0.5,
                  help="Gaussian blur (sigma, pixels) before filtering; 0 = none. Hides texture and noise."),
        ParamSpec("gamma", "float", 1.0, min=0.2, max=3.0, step=0.1,
                  help="Below 1 brightens faint edges, above 1 keeps only strong ones."),
    )

    def preprocess(self, source, ctx, params):
        if params["ksize"] % 2 == 0:
            raise PluginError(f"sobel: ksize must be odd (1, 3, 5 or 7), got {params['ksize']}")
        gray = np.asarray(source.image.convert("L"), dtype=np.float32) / 255.0
        if params["blur"] > 0:
            gray = cv2.GaussianBlur(gray, (0, 0), params["blur"])
        dx = cv2.Sobel(gray, cv2.CV_32F, 1, 0, ksize=params["ksize"])
        dy = cv2.Sobel(gray, cv2.CV_32F, 0, 1, ksize=params["ksize"])
        magnitude = np.hypot(dx, dy)
        peak = float(magnitude.max())
        if peak > 0:
            magnitude = (magnitude / peak) ** params["gamma"]
        return Image.fromarray((magnitude * 255).round().astype(np.uint8)).convert("RGB")
