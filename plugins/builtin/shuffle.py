"""Content shuffle: the input's pixels moved along a smooth random flow (controlnet-aux's ContentShuffleDetector).

The shuffle ControlNet takes colours and textures from the map but not its layout. The flow is drawn
from a seeded random state of its own, so the same input, params and ``seed`` give the same map.
"""
from __future__ import annotations

import numpy as np

from sdcompose.plugins.api import Conditioner, ParamSpec

from .annotators import detect_size, import_quietly, to_map


class Shuffle(Conditioner):
    id = "shuffle"
    api_version = "2.0"
    version = "1.0"
    help = "The image's content shuffled by a smooth random flow: the shuffle ControlNet takes its style, not its layout."
    families = frozenset({"sd15"})
    params = (
        ParamSpec("seed", "int", 0, min=0, max=2**32 - 1, help="Seed of the random flow."),
        ParamSpec("flow_size", "int", 256, min=8, max=2048, step=8,
                  help="Size in pixels of the flow's smooth cells: smaller shuffles more finely."),
        ParamSpec("detect_resolution", "int", 512, min=64, max=2048, step=64,
                  help="Short side of the image as the shuffle sees it."),
    )

    def preprocess(self, source, ctx, params):
        module = import_quietly("controlnet_aux.shuffle")
        resolution = params["detect_resolution"]
        saved = np.random.get_state()  # the detector draws from numpy's global state: seed it, then put it back
        try:
            np.random.seed(params["seed"])
            shuffled = module.ContentShuffleDetector()(source.image, f=params["flow_size"], detect_resolution=resolution,
                                                       image_resolution=resolution, output_type="np")
        finally:
            np.random.set_state(saved)
        return to_map(shuffled, detect_size(source.image.size, resolution))
