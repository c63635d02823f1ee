"""Surface normals: NormalBae (Bae et al.'s ScanNet model, controlnet-aux's network) for the normalbae ControlNet.

The map is the colour-coded normal per pixel, as the v1.1 normalbae ControlNet was trained on.
"""
from __future__ import annotations

import contextlib
import io
import types

from sdcompose.plugins.api import Conditioner, ParamSpec

from .annotators import NetCache, detect_size, fill, import_quietly, load_state, to_map

WEIGHTS = "annotator-normalbae"


class Normal(Conditioner):
    id = "normal"
    api_version = "2.0"
    version = "1.0"
    help = "Surface normal map (colour-coded directions) from a photo, estimated by NormalBae."
    families = frozenset({"sd15"})
    annotators = (WEIGHTS,)
    params = (
        ParamSpec("detect_resolution", "int", 512, min=64, max=2048, step=64,
                  help="Short side of the photo as the estimator sees it."),
    )

    def __init__(self) -> None:
        self._nets = NetCache(size=1)

    def preprocess(self, source, ctx, params):
        path = ctx.weight(WEIGHTS)
        net = self._nets.get(path, ctx.device, lambda: _network(path).to(ctx.device))
        resolution = params["detect_resolution"]
        normals = import_quietly("controlnet_aux.normalbae").NormalBaeDetector(net)(
            source.image, detect_resolution=resolution, image_resolution=resolution, output_type="np")
        return to_map(normals, detect_size(source.image.size, resolution))


def _network(path):
    nnet = import_quietly("controlnet_aux.normalbae.nets.NNET")
    # scannet.pt is a training checkpoint: {"model": {"module.<layer>": tensor}}
    state = load_state(path, WEIGHTS)
    layers = state.get("model", state)
    args = types.SimpleNamespace(mode="client", architecture="BN", pretrained="scannet", sampling_ratio=0.4,
                                 importance_ratio=0.7)
    with contextlib.redirect_stdout(io.StringIO()):  # the network prints while it builds its encoder
        net = nnet.NNET(args)
    return fill(net, {k.removeprefix("module."): v for k, v in layers.items()}, path, "NormalBae")
