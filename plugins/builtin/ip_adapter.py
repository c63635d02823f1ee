"""IP-Adapter image prompts through diffusers' own loading: ``load_ip_adapter``, ``set_ip_adapter_scale`` and the
pipelines' ``ip_adapter_image`` argument.

Each file's tensor shapes are checked against the base's UNet and the image encoder before diffusers reads it,
so an adapter for the other family is refused in one sentence. ``remove`` puts back the UNet's own attention
processors and projection as they were before ``apply`` (diffusers' ``unload_ip_adapter`` would reset every
processor to SDPA, losing the request's attention backend).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from sdcompose.plugins.api import Contribution, IpAdapterLoader, PluginError, Use, first_line


class DiffusersIpAdapter(IpAdapterLoader):
    id = "ip_adapter"
    api_version = "2.2"
    version = "1.1"
    help = ("Image prompts: h94's IP-Adapters for SD1.5 and SDXL (base, plus, plus-face, full-face), one or more "
            "reference images each, loaded with diffusers' load_ip_adapter.")

    def __init__(self) -> None:
        self._saved: tuple[Any, Any, Any] | None = None

    def contribute(self, pipe: Any, uses: list[Use], ctx: Any) -> Contribution:
        if not uses:
            return Contribution()
        unet, encoder = pipe.unet, uses[0].modules["image_encoder"]
        variants = [_check(use, unet, encoder) for use in uses]
        self._saved = (unet.attn_processors, unet.encoder_hid_proj, unet.config.encoder_hid_dim_type)
        pipe.register_modules(image_encoder=encoder)  # diffusers makes the feature extractor at the encoder's size
        try:
            pipe.load_ip_adapter([str(Path(u.path).parent) for u in uses], subfolder=[""] * len(uses),
                                 weight_name=[Path(u.path).name for u in uses], image_encoder_folder=None)
        except PluginError:
            raise
        except Exception as exc:  # a file that passed the shape checks and still does not load
            raise PluginError(f"IP-Adapter {[u.id for u in uses]} did not load into this "
                              f"{uses[0].entry.family} base: {first_line(exc)}") from None
        return Contribution(arguments={"ip_adapter_image": [list(u.images) for u in uses]},
                            report={u.id: {"variant": v, "references": len(u.images)} for u, v in zip(uses, variants)})

    def set_weights(self, pipe: Any, weights: list[float]) -> None:
        pipe.set_ip_adapter_scale(list(weights))

    def remove(self, pipe: Any) -> None:
        if self._saved is None:
            return
        processors, projection, hid_type = self._saved
        unet = pipe.unet
        unet.encoder_hid_proj = projection  # first: a plus adapter's resampler has attention layers of its own
        unet.register_to_config(encoder_hid_dim_type=hid_type)
        unet.set_attn_processor(processors)
        self._saved = None


def _header(path: Path) -> dict[str, list[int]]:
    """Tensor shapes of a safetensors file, read from its header (no tensor is loaded)."""
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        return {key: list(f.get_slice(key).get_shape()) for key in f.keys()}


def _check(use: Use, unet: Any, encoder: Any) -> str:
    """The adapter's variant (base, plus, full-face), or PluginError when it does not fit this base or encoder."""
    name, path = use.id, Path(use.path)
    if path.suffix != ".safetensors":
        raise PluginError(f"IP-Adapter {name!r}: {path.name} is not a .safetensors file; use h94's .safetensors "
                          "release of it")
    shapes = _header(path)
    keys = [k for k in shapes if k.startswith("ip_adapter.") and k.endswith(".to_k_ip.weight")]
    if not keys or not any(k.startswith("image_proj.") for k in shapes):
        raise PluginError(f"IP-Adapter {name!r}: {path.name} holds no IP-Adapter weights (image_proj.*, "
                          "ip_adapter.N.to_k_ip)")
    width, cross = shapes[keys[0]][1], unet.config.cross_attention_dim
    layers = sum(1 for n in unet.attn_processors if not n.endswith("attn1.processor"))
    if width != cross or len(keys) != layers:
        raise PluginError(f"IP-Adapter {name!r} is made for a UNet with {len(keys)} cross-attention layers {width} "
                          f"wide; this {use.entry.family} base has {layers} layers {cross} wide (an adapter of the "
                          "other family?): pick an IP-Adapter of the base's family")
    config = encoder.config
    if "image_proj.proj.weight" in shapes:
        variant, needs, has = "base", shapes["image_proj.proj.weight"][1], config.projection_dim
    elif "image_proj.proj.0.weight" in shapes:
        variant, needs, has = "full-face", shapes["image_proj.proj.0.weight"][1], config.hidden_size
    elif "image_proj.proj_in.weight" in shapes:
        variant, needs, has = "plus", shapes["image_proj.proj_in.weight"][1], config.hidden_size
    else:
        raise PluginError(f"IP-Adapter {name!r}: {path.name} is a variant sdcompose does not load (FaceID needs "
                          "insightface embeddings): use a base, plus or face IP-Adapter")
    if needs != has:
        raise PluginError(f"IP-Adapter {name!r} ({variant}) reads {needs}-wide image features; image encoder "
                          f"{use.entry.image_encoder!r} gives {has}: give the entry the encoder it was trained with")
    return variant
