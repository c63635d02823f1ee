"""LoRA files from other trainers, made loadable by diffusers or refused whole, before anything loads.

- LoCon with Tucker decomposition (``lora_mid``): the mid tensor is folded into the down
  convolution, which gives the same weight change as a plain LoCon layer (exact, not approximate).
- SDXL's added-embedding layers under diffusers names (``lora_unet_add_embedding_linear_1/2``):
  renamed to the original-layout names diffusers' converter maps correctly (under the diffusers
  names both land on one layer).
- DoRA (``dora_scale``): diffusers drops the magnitudes, which would apply a different LoRA than
  the one trained; refused whole.
- Every layer is checked against the base: a layer the base lacks is reported by name, a shape
  that does not fit refuses the file in one line naming the layer and both shapes.
"""
from __future__ import annotations

import re
from typing import Any

from sdcompose.plugins.api import PluginError

SGM_NAMES = {"lora_unet_add_embedding_linear_1": "lora_unet_label_emb_0_0",
             "lora_unet_add_embedding_linear_2": "lora_unet_label_emb_0_2"}
DOWN = re.compile(r"^(?P<component>unet|text_encoder|text_encoder_2)\.(?P<path>.+?)"
                  r"(?:\.lora_A|\.lora\.down|_lora\.down|\.lora_linear_layer\.down)\.weight$")


def normalise(state: dict[str, Any], lora_id: str) -> tuple[dict[str, Any], list[str]]:
    """The state dict diffusers can load as it was trained, and notes on what was changed."""
    dora = sorted({key.rsplit(".", 1)[0] for key in state if key.endswith((".dora_scale", ".lora_magnitude_vector"))})
    if dora:
        raise PluginError(f"lora {lora_id!r} is a DoRA file ({len(dora)} layers with weight-decomposition "
                          f"magnitudes, e.g. {dora[0]}); diffusers would drop the magnitudes and apply a different "
                          "LoRA than the one trained, so it is refused: use a plain LoRA export of it")
    notes: list[str] = []
    out = {}
    for key, tensor in state.items():
        layer, _, leaf = key.partition(".")
        out[f"{SGM_NAMES.get(layer, layer)}.{leaf}" if leaf else key] = tensor
    if any(layer in SGM_NAMES for layer in {key.partition(".")[0] for key in state}):
        notes.append("SDXL add_embedding layers read under their original names")
    tucker = [key for key in out if key.endswith(".lora_mid.weight")]
    for mid_key in tucker:
        layer = mid_key.removesuffix(".lora_mid.weight")
        down_key = f"{layer}.lora_down.weight"
        down, mid = out.get(down_key), out.pop(mid_key)
        if down is None or down.ndim != 4 or mid.ndim != 4 or mid.shape[1] != down.shape[0]:
            raise PluginError(f"lora {lora_id!r}: Tucker layer {layer} has a lora_mid of shape {list(mid.shape)} "
                              f"that does not fit its lora_down ({list(down.shape) if down is not None else 'missing'})")
        # delta = up . (mid x down): folding mid into down keeps the product exactly
        out[down_key] = (mid.float().flatten(2).transpose(1, 2) @ down.float()[:, :, 0, 0]).transpose(1, 2) \
            .reshape(mid.shape[0], down.shape[1], *mid.shape[2:]).to(down.dtype).contiguous()
    if tucker:
        notes.append(f"{len(tucker)} LoCon Tucker layers folded into plain LoCon layers")
    return out, notes


def check_layers(pipe: Any, state: dict[str, Any], lora_id: str, family: str) -> tuple[set[str], list[str]]:
    """The layers of the file in diffusers' names, and the skipped ones as ``"name: why"``.

    Reads the names diffusers' own converter gives; a layer whose shapes do not fit the base
    refuses the whole file (before diffusers is asked to load it, so nothing is half-loaded)."""
    converted, _ = type(pipe).lora_state_dict(dict(state))
    layers, skipped = set(), []
    for key, down in converted.items():
        match = DOWN.match(key)
        if match is None:
            continue
        component, path = getattr(pipe, match["component"], None), match["path"].replace(".processor.", ".")
        name = f"{match['component']}.{path}"
        layers.add(name)
        module = _module(component, path) if component is not None else None
        weight = getattr(module, "weight", None)
        if weight is None:
            skipped.append(f"{name}: this {family} base has no such layer")
            continue
        up = next((converted[k] for k in _up_keys(key) if k in converted), None)
        if down.ndim < 2 or down.shape[1] != weight.shape[1] or (up is not None and up.shape[0] != weight.shape[0]):
            raise PluginError(f"lora {lora_id!r} does not fit the {family} base: layer {name} is "
                              f"{list(weight.shape)} in the base, the file's down/up matrices are {list(down.shape)}"
                              f"/{list(up.shape) if up is not None else '?'}; is it a LoRA for another model family?")
    return layers, skipped


def without(state: dict[str, Any], skipped: list[str]) -> dict[str, Any]:
    """``state`` less the skipped layers (names from ``check_layers``), in the file's diffusers or kohya keys,
    so PEFT is asked to adapt only layers the base has."""
    drop = set()
    for line in skipped:
        component, _, path = line.split(": ", 1)[0].partition(".")
        prefixes = {"unet": ["lora_unet_"], "text_encoder": ["lora_te_", "lora_te1_"], "text_encoder_2": ["lora_te2_"]}
        drop |= {f"{component}.{path}"} | {p + path.replace(".", "_") for p in prefixes.get(component, [])}
    return {k: v for k, v in state.items() if not any(k.startswith(d + ".") or k.startswith(d + "_lora.")
                                                       for d in drop)} if drop else state


def _up_keys(down_key: str) -> list[str]:
    pairs = ((".lora_A.", ".lora_B."), (".lora.down.", ".lora.up."), ("_lora.down.", "_lora.up."),
             (".lora_linear_layer.down.", ".lora_linear_layer.up."))
    return [down_key.replace(down, up) for down, up in pairs if down in down_key]


def _module(component: Any, path: str) -> Any:
    """A sub-module by a converted name; attention-processor names (``to_out_lora``) map to the layer."""
    path = path.replace(".processor.", ".")
    clip = re.sub(r"\.to_(q|k|v)$", r".\1_proj", re.sub(r"\.to_out$", ".out_proj", path))  # text-encoder names
    for candidate in (path, re.sub(r"\.to_out$", ".to_out.0", path), clip, f"text_model.{clip}"):
        try:
            module = component.get_submodule(candidate)
        except AttributeError:
            continue
        if hasattr(module, "get_base_layer"):  # an already adapted layer: check against its base
            module = module.get_base_layer()
        if getattr(module, "weight", None) is not None:
            return module
    return None
