"""LoRA adapters through diffusers' PEFT integration: loaded once, activated per request, disabled after."""
from __future__ import annotations

import re
from typing import Any

from sdcompose.plugins.api import Adapter


def adapter_name(model_id: str) -> str:
    return "sdc_" + re.sub(r"\W", "_", model_id)


class LoraAdapter(Adapter):
    id = "lora"
    version = "1.0"
    help = "LoRA weights (.safetensors) applied per request with a weight each."
    families = frozenset({"sd15", "sdxl"})

    def apply(self, pipe: Any, adapters: list[dict[str, Any]], ctx: Any) -> dict[str, Any]:
        loaded = {name for names in pipe.get_list_adapters().values() for name in names}
        names = []
        for adapter in adapters:
            name = adapter_name(adapter["id"])
            if name not in loaded:
                pipe.load_lora_weights(str(adapter["path"]), adapter_name=name)
            names.append(name)
        pipe.enable_lora()
        pipe.set_adapters(names, adapter_weights=[a["weight"] for a in adapters])
        return {a["id"]: {"weight": a["weight"]} for a in adapters}

    def remove(self, pipe: Any) -> None:
        pipe.disable_lora()
