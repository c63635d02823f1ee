"""Tile: no detector. The input itself, optionally downsampled and blurred, drives the tile ControlNet.

The tile ControlNet keeps a picture's content and colours while the diffusion adds detail, which is what
a hires-fix second pass or an upscale wants. Downsampling (sd-webui-controlnet's ``tile_resample``) and
blurring loosen the control, so the model is freer to invent detail.
"""
from __future__ import annotations

from PIL import Image, ImageFilter

from sdcompose.plugins.api import Conditioner, ParamSpec


class Tile(Conditioner):
    id = "tile"
    api_version = "2.0"
    version = "1.0"
    help = "The image itself (optionally downsampled and blurred) for the tile ControlNet: keeps content, adds detail."
    families = frozenset({"sd15"})
    params = (
        ParamSpec("downsample", "float", 1.0, min=1.0, max=8.0, step=0.5,
                  help="Shrink the image by this factor (and back): higher lets the model invent more detail."),
        ParamSpec("blur", "float", 0.0, min=0.0, max=16.0, step=0.5, help="Gaussian blur radius in pixels."),
    )

    def preprocess(self, source, ctx, params):
        image = source.image
        if params["downsample"] > 1:
            small = (max(1, round(image.width / params["downsample"])), max(1, round(image.height / params["downsample"])))
            image = image.resize(small, Image.LANCZOS).resize(source.image.size, Image.BICUBIC)
        if params["blur"] > 0:
            image = image.filter(ImageFilter.GaussianBlur(params["blur"]))
        return image.convert("RGB")
