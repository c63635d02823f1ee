"""LoRA adapters (.safetensors, diffusers or kohya keys) through diffusers' PEFT integration.

Each LoRA is loaded once per base model and reported on (format, layers applied and skipped)
instead of logging warnings. The active set is fused into the base weights, and stays fused
while the next requests ask for the same LoRAs at the same weights. A request with another
set, or none, first restores the base weights exactly, from a CPU copy of the adapted layers
taken when the set was fused.
"""
from __future__ import annotations

import re
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdcompose.plugins.api import Adapter, Contribution, PluginError, Use, first_line
from sdcompose.plugins.builtin import lora_files

MAX_LOADED = 8  # adapters kept loaded per base model; older unused ones are deleted
LAYER_KEY = re.compile(r"^(?P<layer>.+?)\.(?:(?:lora_down|lora_up|lora_A|lora_B|lora\.down|lora\.up|lora_mid"
                       r"|lora_linear_layer\.down|lora_linear_layer\.up|lora_embedding_A|lora_embedding_B)\.weight"
                       r"|alpha|dora_scale|lora_magnitude_vector)$")
KOHYA_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")
LYCORIS_MARKERS = (".hada_", ".lokr_", ".oft_", ".boft_", ".diff", ".b_norm", ".w_norm")


def adapter_name(model_id: str) -> str:
    return "sdc_" + re.sub(r"\W", "_", model_id)


def detect_format(keys: list[str]) -> str:
    """'kohya', 'diffusers', 'lycoris' or 'unknown', from the tensor names alone."""
    if any(marker in key for key in keys for marker in LYCORIS_MARKERS):
        return "lycoris"
    if any(key.startswith(KOHYA_PREFIXES) for key in keys):
        return "kohya"
    if any(".lora_A." in key or ".lora.down." in key or ".lora_linear_layer." in key or "_lora.down." in key
           for key in keys):
        return "diffusers"
    return "unknown"


def file_layers(keys: list[str]) -> tuple[set[str], list[str]]:
    """The layers a LoRA file adapts, and the keys that belong to no LoRA layer."""
    layers, other = set(), []
    for key in keys:
        match = LAYER_KEY.match(key)
        if match:
            layers.add(match["layer"])
        else:
            other.append(key)
    return layers, other


def _weights_file(path: Path, lora_id: str) -> Path:
    if path.is_dir():
        found = sorted(path.glob("*.safetensors"))
        if len(found) != 1:
            raise PluginError(f"lora {lora_id!r}: {path} holds {len(found)} .safetensors files; point models.yaml "
                              "at the one file to load")
        return found[0]
    return path


def _keys(path: Path, lora_id: str) -> list[str]:
    from safetensors import SafetensorError, safe_open
    try:
        with safe_open(str(path), "pt") as f:
            return list(f.keys())
    except (SafetensorError, OSError, ValueError) as exc:
        raise PluginError(f"lora {lora_id!r}: {path.name} is not a readable .safetensors file "
                          f"({first_line(exc, 120)}); LoRAs load from .safetensors only: convert a .pt/.bin "
                          "LoRA, or download a damaged file again") from None


def _tensors(path: Path, lora_id: str) -> dict[str, Any]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise PluginError(f"lora {lora_id!r}: {path.name} could not be read ({first_line(exc, 120)}); "
                          "download it again") from None


@dataclass
class _BaseState:
    """What this adapter did to one base model's modules."""

    reports: OrderedDict = field(default_factory=OrderedDict)  # adapter name -> load report
    fused: tuple = ()  # ((adapter name, weight), ...) currently fused into the weights
    originals: weakref.WeakKeyDictionary = field(default_factory=weakref.WeakKeyDictionary)  # layer -> CPU copy


class LoraAdapter(Adapter):
    id = "lora"
    api_version = "2.2"
    version = "2.1"
    serves = "lora"
    needs = ("load_lora_weights",)
    noun = "lora"
    help = ("LoRA weights (.safetensors, diffusers or kohya format), several at once with a weight each; "
            "fused into the model while the same set is reused.")
    families = frozenset({"sd15", "sdxl"})

    def __init__(self) -> None:
        self._states: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # unet -> _BaseState

    def contribute(self, pipe: Any, uses: list[Use], ctx: Any) -> Contribution:
        state = self._states.setdefault(pipe.unet, _BaseState())
        wanted = tuple(sorted((adapter_name(u.id), float(u.weight)) for u in uses))  # one order: one result
        if state.fused == wanted and wanted:
            return Contribution(report=self._report(state, uses))
        if state.fused:
            self._unfuse(pipe, state)
        if not wanted:
            if state.reports:
                pipe.disable_lora()
            return Contribution()
        for use in uses:
            self._load(pipe, state, use, keep={name for name, _ in wanted})
        names = [name for name, _ in wanted]
        pipe.enable_lora()
        pipe.set_adapters(names, adapter_weights=[weight for _, weight in wanted])
        self._fuse(pipe, state, names)
        state.fused = wanted
        return Contribution(report=self._report(state, uses))

    def remove(self, pipe: Any) -> None:
        """Fused LoRAs stay for the next request with the same set; anything unfused is switched off."""
        state = self._states.get(pipe.unet)
        if state is not None and state.reports and not state.fused:
            pipe.disable_lora()

    # ---- loading ---------------------------------------------------------------------------
    def _load(self, pipe: Any, state: _BaseState, use: Use, keep: set[str]) -> None:
        name, lora_id = adapter_name(use.id), use.id
        if name in state.reports:
            state.reports.move_to_end(name)
            return
        for old in [n for n in state.reports if n not in keep][: max(0, len(state.reports) + 1 - MAX_LOADED)]:
            pipe.delete_adapters([old])
            del state.reports[old]
        path = _weights_file(Path(use.path), lora_id)
        keys = _keys(path, lora_id)
        kind = detect_format(keys)
        family = getattr(use.entry, "family", None) or "this"
        if kind == "lycoris":
            raise PluginError(f"lora {lora_id!r} is a LyCORIS file (LoHa/LoKr/OFT); sdcompose loads plain LoRA "
                              "only: convert it to a LoRA or pick another")
        if kind == "unknown":
            raise PluginError(f"lora {lora_id!r}: {path.name} holds no LoRA weights sdcompose recognises "
                              "(expected diffusers `...lora_A.weight` or kohya `lora_unet_...lora_down.weight` keys)")
        if getattr(pipe, "text_encoder_2", None) is None and any(k.startswith(("lora_te2_", "text_encoder_2."))
                                                                  for k in keys):
            raise PluginError(f"lora {lora_id!r} has SDXL text-encoder weights but models.yaml calls it {family}: "
                              "use it with an sdxl base and fix its `family`")
        tensors, notes = lora_files.normalise(_tensors(path, lora_id), lora_id)
        try:
            _, skipped = lora_files.check_layers(pipe, tensors, lora_id, family)
            pipe.load_lora_weights(lora_files.without(tensors, skipped), adapter_name=name)
        except (RuntimeError, ValueError, KeyError) as exc:
            self._discard(pipe, name)
            detail = first_line(exc, 200) or type(exc).__name__
            raise PluginError(f"lora {lora_id!r} does not fit the {family} base ({detail}); is it a LoRA for "
                              "another model family?") from None
        layers, other = file_layers(keys)
        applied = _count_layers(pipe, name)
        if applied == 0:
            self._discard(pipe, name)
            raise PluginError(f"lora {lora_id!r} matched no layer of the {family} base; is it a LoRA for "
                              "another model family?")
        state.reports[name] = {"format": kind, "file": path.name, "keys": len(keys), "layers": len(layers),
                               "applied": applied, "skipped": max(0, len(layers) - applied),
                               "skipped_layers": skipped, "notes": notes, "unrecognised_keys": other[:10]}

    @staticmethod
    def _discard(pipe: Any, name: str) -> None:
        if any(name in names for names in pipe.get_list_adapters().values()):
            pipe.delete_adapters([name])

    # ---- fusing ----------------------------------------------------------------------------
    def _fuse(self, pipe: Any, state: _BaseState, names: list[str]) -> None:
        for layer in _adapted_layers(pipe, set(names)):
            base = layer.get_base_layer()
            if base not in state.originals:
                state.originals[base] = base.weight.detach().to("cpu", copy=True)
        pipe.fuse_lora(components=list(pipe.get_list_adapters()), adapter_names=names)

    def _unfuse(self, pipe: Any, state: _BaseState) -> None:
        """Unmerge, then put back the exact original weights (repeated fuse/unfuse never drifts)."""
        import torch
        pipe.unfuse_lora(components=list(pipe.get_list_adapters()))
        with torch.no_grad():
            for base, weight in state.originals.items():
                base.weight.copy_(weight)
        state.originals.clear()
        state.fused = ()

    @staticmethod
    def _report(state: _BaseState, uses: list[Use]) -> dict[str, Any]:
        """Per LoRA: its weight and load report; the set is always fused when a report is made."""
        return {u.id: {"weight": u.weight, "fused": True, **state.reports[adapter_name(u.id)]} for u in uses}


def _adapted_layers(pipe: Any, names: set[str]) -> list[Any]:
    from peft.tuners.tuners_utils import BaseTunerLayer
    out = []
    for component in pipe.get_list_adapters():
        for module in getattr(pipe, component).modules():
            if isinstance(module, BaseTunerLayer):
                own = set(getattr(module, "lora_A", {})) | set(getattr(module, "lora_embedding_A", {}))
                if names & own:
                    out.append(module)
    return out


def _count_layers(pipe: Any, name: str) -> int:
    return len(_adapted_layers(pipe, {name}))
