"""Straight lines: M-LSD (controlnet-aux's MobileV2_MLSD_Large, weights loaded weights-only) for the MLSD ControlNet."""
from __future__ import annotations

from sdcompose.plugins.api import Conditioner, ParamSpec

from .annotators import NetCache, detect_size, fill, import_quietly, load_state, to_map

WEIGHTS = "annotator-mlsd"


class Mlsd(Conditioner):
    id = "mlsd"
    api_version = "2.0"
    version = "1.0"
    help = "Straight line segments (white on black) from M-LSD: rooms, buildings, furniture."
    families = frozenset({"sd15"})
    annotators = (WEIGHTS,)
    params = (
        ParamSpec("score_threshold", "float", 0.1, min=0.0, max=1.0, step=0.01,
                  help="Line score a segment needs (controlnet-aux's thr_v): higher keeps fewer lines."),
        ParamSpec("distance_threshold", "float", 0.1, min=0.0, max=20.0, step=0.1,
                  help="Shortest segment kept, in pixels (controlnet-aux's thr_d)."),
        ParamSpec("detect_resolution", "int", 512, min=64, max=2048, step=64,
                  help="Short side of the photo as the detector sees it."),
    )

    def __init__(self) -> None:
        self._nets = NetCache(size=1)

    def preprocess(self, source, ctx, params):
        path = ctx.weight(WEIGHTS)
        large = import_quietly("controlnet_aux.mlsd.models.mbv2_mlsd_large")
        net = self._nets.get(path, ctx.device, lambda: fill(large.MobileV2_MLSD_Large(), load_state(path, WEIGHTS), path,
                                                            "M-LSD").to(ctx.device))
        resolution = params["detect_resolution"]
        lines = import_quietly("controlnet_aux.mlsd").MLSDdetector(net)(
            source.image, thr_v=params["score_threshold"], thr_d=params["distance_threshold"],
            detect_resolution=resolution, image_resolution=resolution, output_type="np")
        return to_map(lines, detect_size(source.image.size, resolution))
