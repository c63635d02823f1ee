"""Soft edges: PiDiNet or HED (controlnet-aux networks, weights loaded weights-only) for the softedge ControlNets."""
from __future__ import annotations

from typing import Any

from sdcompose.plugins.api import Conditioner, ParamSpec

from .annotators import NetCache, detect_size, fill, import_quietly, load_state, to_map

WEIGHTS = {"pidinet": "annotator-pidinet", "hed": "annotator-hed"}


class SoftEdge(Conditioner):
    id = "softedge"
    api_version = "2.0"
    version = "1.0"
    help = "Soft edge map (white on black, grey for weak edges) from PiDiNet or HED."
    families = frozenset({"sd15", "sdxl"})
    annotators = tuple(WEIGHTS.values())
    params = (
        ParamSpec("detector", "choice", "pidinet", choices=tuple(WEIGHTS),
                  help="pidinet: small and fast; hed: ControlNet's original soft-edge detector."),
        ParamSpec("safe", "bool", False, help="Quantise the edges into a few levels (fewer faint artefacts)."),
        ParamSpec("detect_resolution", "int", 512, min=64, max=2048, step=64,
                  help="Short side of the photo as the detector sees it."),
    )

    def __init__(self) -> None:
        self._nets = NetCache(size=2)

    def preprocess(self, source, ctx, params):
        detector = params["detector"]
        path = ctx.weight(WEIGHTS[detector])
        net = self._nets.get(path, ctx.device, lambda: edge_network(detector, path).to(ctx.device))
        module = import_quietly(f"controlnet_aux.{'pidi' if detector == 'pidinet' else 'hed'}")
        wrapper = module.PidiNetDetector(net) if detector == "pidinet" else module.HEDdetector(net)
        resolution = params["detect_resolution"]
        edges = wrapper(source.image, detect_resolution=resolution, image_resolution=resolution, safe=params["safe"],
                        output_type="np")
        return to_map(edges, detect_size(source.image.size, resolution))


def edge_network(detector: str, path) -> Any:
    state = load_state(path, WEIGHTS[detector])
    if detector == "pidinet":
        model = import_quietly("controlnet_aux.pidi.model")
        # table5_pidinet.pth is a training checkpoint: {"state_dict": {"module.<layer>": tensor}}
        layers = state.get("state_dict", state)
        return fill(model.pidinet(), {k.replace("module.", "", 1): v for k, v in layers.items()}, path, "PiDiNet")
    return fill(import_quietly("controlnet_aux.hed").ControlNetHED_Apache2(), state, path, "HED")
