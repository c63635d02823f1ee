"""sdcompose: Stable Diffusion composed with ControlNet conditioners and LoRA adapters through plugins.

Importing costs nothing: no weights, no CUDA, no network.
"""
from sdcompose.errors import (Cancelled, CatalogError, ModelError, OutOfMemory, PluginError, SdcomposeError,
                              ValidationError)
from sdcompose.request import AdapterUse, Control, GenerationRequest, Hires, IpAdapter, Lora
from sdcompose.result import Result

__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "Pipeline":  # imports torch and diffusers: only when asked for
        from sdcompose.pipelines.pipeline import Pipeline
        return Pipeline
    raise AttributeError(f"module 'sdcompose' has no attribute {name!r}")


__all__ = ["Pipeline", "Control", "Lora", "Hires", "IpAdapter", "AdapterUse", "GenerationRequest", "Result", "SdcomposeError", "ValidationError",
           "ModelError", "CatalogError", "PluginError", "Cancelled", "OutOfMemory", "__version__"]
