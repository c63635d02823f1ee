"""The request an sdcompose PNG records, and the strict check that its models are still the same files.

Order matters for untrusted PNGs: the request is validated first (nothing decoded, hashed or downloaded
for a PNG that asks for 100 controls or a width of 100), then resolved, then only the models the request
uses are hashed, and only the embedded inputs it uses are decoded.
"""
from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any, Mapping

from sdcompose.errors import ModelError, ValidationError
from sdcompose.request import Control, GenerationRequest, Lora, validate

if TYPE_CHECKING:
    from sdcompose.pipelines.resolve import Plan


def recorded_request(meta: dict[str, Any], inputs: Mapping[str, Any]) -> GenerationRequest:
    """The validated request of ``meta``; its images are the names of embedded inputs, decoded by ``with_inputs``."""
    r = meta["request"]
    try:
        controls = [Control(id=c["id"], image=f"control-{i}", weight=c["weight"], start=c["start"], end=c["end"],
                            params=c["params"], model=c["model"], resize_mode=c["resize_mode"],
                            control_mode=c["control_mode"], preprocessed=True)
                    for i, c in enumerate(r["controls"])]
        request = GenerationRequest(
            prompt=r["prompt"], negative_prompt=r["negative_prompt"], model=r["model"], controls=controls,
            loras=[Lora(x["id"], x["weight"]) for x in r["loras"]],
            init_image="init_image" if "init_image" in inputs else None, strength=r["strength"],
            mask="mask" if "mask" in inputs else None, width=r["width"], height=r["height"], steps=r["steps"],
            guidance=r["guidance"], scheduler=r["scheduler"], seed=meta["seed"], batch=1,
            add_trigger_words=r.get("add_trigger_words", False))
    except (KeyError, TypeError) as exc:
        raise ValidationError(f"the image's metadata lacks {exc}; it cannot be reproduced") from None
    return validate(request)


def with_inputs(request: GenerationRequest, inputs: Mapping[str, Any]) -> GenerationRequest:
    """``request`` with each embedded input's name replaced by the decoded image."""
    def image(name: str | None) -> Any:
        if name is None:
            return None
        if name not in inputs:
            raise ValidationError(f"the image's metadata lacks its embedded {name}; it cannot be reproduced")
        return inputs[name]

    return request.with_(controls=[replace(c, image=image(c.image)) for c in request.controls],
                         init_image=image(request.init_image), mask=image(request.mask))


def check_models(meta: dict[str, Any], plan: "Plan", hashes: Any) -> None:
    """Refuse if a model ``plan`` uses has other files (sha256) than the image records; ``hashes(entry)``
    hashes one entry. Recorded models the request does not use are only looked up, never hashed."""
    recorded = meta.get("models", {})
    used = [plan.base, *(u.controlnet for u in plan.units), *(e for e, _ in plan.loras)]
    for entry in used:
        if entry.id not in recorded:
            raise ModelError(f"the image's metadata has no file hashes for model {entry.id!r}, which it uses; "
                             "pass strict=False to reproduce it anyway")
        if hashes(entry) != recorded[entry.id].get("sha256"):
            raise ModelError(f"model {entry.id!r} has changed since this image was made (different "
                             "file hashes); restore that version, or pass strict=False")
