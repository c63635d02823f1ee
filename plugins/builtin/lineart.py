"""Line art: the "Informative Drawings" generator (controlnet-aux's lineart networks) for the SD1.5 lineart ControlNet.

No SDXL family: there is no openly licensed, diffusers-format SDXL line-art ControlNet to pin
(docs/models-sources.md).
"""
from __future__ import annotations

from sdcompose.plugins.api import Conditioner, ParamSpec

from .annotators import NetCache, detect_size, fill, import_quietly, load_state, to_map

FINE, COARSE = "annotator-lineart", "annotator-lineart-coarse"


class Lineart(Conditioner):
    id = "lineart"
    api_version = "2.0"
    version = "1.0"
    help = "Line drawing (white lines on black) from a photo, realistic or coarse style."
    families = frozenset({"sd15"})
    annotators = (FINE, COARSE)
    params = (
        ParamSpec("coarse", "bool", False, help="Use the coarse-style generator (bolder, fewer lines)."),
        ParamSpec("detect_resolution", "int", 512, min=64, max=2048, step=64,
                  help="Short side of the photo as the generator sees it."),
    )

    def __init__(self) -> None:
        self._nets = NetCache(size=2)

    def preprocess(self, source, ctx, params):
        model_id = COARSE if params["coarse"] else FINE
        path = ctx.weight(model_id)
        module = import_quietly("controlnet_aux.lineart")
        net = self._nets.get(path, ctx.device, lambda: fill(module.Generator(3, 1, 3), load_state(path, model_id),
                                                            path, "line-art generator").to(ctx.device))
        resolution = params["detect_resolution"]
        lines = module.LineartDetector(net, net)(source.image, coarse=False, detect_resolution=resolution,
                                                 image_resolution=resolution, output_type="np")
        return to_map(lines, detect_size(source.image.size, resolution))
