"""ESRGAN, Real-ESRGAN, SwinIR and the other architectures spandrel recognises, from a state dict on disk.

The file is read here, never by spandrel's own loader: ``.safetensors`` with safetensors, ``.pth``/``.ckpt``
weights-only (a pickle holding anything but tensors is refused without running it). TorchScript
(``.pt``) is refused: loading it runs the code it holds. spandrel only matches the tensors to an architecture.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from sdcompose.plugins.api import PluginError, Upscaler, first_line

from .annotators import NetCache, load_state

SUFFIXES = (".safetensors", ".pth", ".ckpt")


class SpandrelUpscaler(Upscaler):
    id = "spandrel"
    api_version = "2.0"
    version = "1.0"
    help = "Upscaler networks (ESRGAN, Real-ESRGAN, SwinIR, ...) recognised by spandrel from their weights."

    def __init__(self) -> None:
        self._nets = NetCache(size=1)

    def load(self, path: Path, ctx: Any) -> Any:
        return self._nets.get(path, f"{ctx.device}:{ctx.dtype}", lambda: _descriptor(path, ctx))


class _Network:
    """spandrel's model descriptor as the core calls it: tensor in, tensor ``scale`` times larger out."""

    def __init__(self, descriptor: Any, dtype: Any) -> None:
        self.descriptor, self.dtype = descriptor, dtype
        self.scale = int(descriptor.scale)
        self.architecture = descriptor.architecture.name

    def __call__(self, tensor: Any) -> Any:
        return self.descriptor(tensor.to(self.dtype)).float().clamp(0, 1)


def _descriptor(path: Path, ctx: Any) -> _Network:
    import spandrel
    import torch
    if path.suffix.lower() not in SUFFIXES:
        raise PluginError(f"upscaler file {path.name} is not {', '.join(SUFFIXES)} (TorchScript .pt files run code "
                          "when loaded and are refused); convert it to .safetensors")
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file
        try:
            state = load_file(str(path))
        except Exception as exc:
            raise PluginError(f"upscaler weights {path.name} could not be read ({first_line(exc, 120)}); "
                              "delete the file and download it again") from None
    else:
        state = load_state(path, "upscaler")
    try:
        descriptor = spandrel.ModelLoader().load_from_state_dict(spandrel.canonicalize_state_dict(state))
    except spandrel.UnsupportedModelError:
        raise PluginError(f"upscaler weights {path.name} match no architecture spandrel knows (ESRGAN, Real-ESRGAN, "
                          "SwinIR, ...); is models.yaml pointing at an upscaler?") from None
    except (KeyError, RuntimeError, ValueError) as exc:
        raise PluginError(f"upscaler weights {path.name} could not be built ({first_line(exc, 120)})") from None
    if not isinstance(descriptor, spandrel.ImageModelDescriptor) or descriptor.scale < 2:
        raise PluginError(f"{path.name} is a {descriptor.architecture.name} model of scale {descriptor.scale}, not an "
                          "upscaler (it must enlarge the image at least 2x)")
    dtype = ctx.dtype or torch.float32
    if (dtype == torch.float16 and not descriptor.supports_half) or \
            (dtype == torch.bfloat16 and not descriptor.supports_bfloat16):
        dtype = torch.float32  # architectures that are unstable in half precision run in float32
    descriptor.model.requires_grad_(False)
    descriptor.eval().to(ctx.device).to(dtype)
    return _Network(descriptor, dtype)
