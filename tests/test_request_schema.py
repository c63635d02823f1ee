"""The request is defined once: the Python API, the CLI and the UI read their defaults and limits from
``GenerationRequest``'s schema, which is also what the HTTP API publishes."""
from __future__ import annotations

import inspect
import json

import pytest

import sdcompose
from sdcompose.request import SCHEDULERS, Control, GenerationRequest, IpAdapter, Lora, bounds, default

NUMBERS = ("steps", "width", "height", "guidance", "batch", "strength")


def test_the_json_schema_states_every_default_and_limit():
    schema = GenerationRequest.model_json_schema()
    json.dumps(schema)  # JSON-ready
    fields = schema["properties"]
    assert set(fields) == set(GenerationRequest.model_fields)
    for name in NUMBERS:
        assert (fields[name]["minimum"], fields[name]["maximum"]) == bounds(GenerationRequest, name)
        assert fields[name]["default"] == default(GenerationRequest, name)
    assert fields["width"]["multipleOf"] == 8 and fields["controls"]["maxItems"] == 8
    assert fields["scheduler"]["enum"] == list(SCHEDULERS) and fields["prompt"]["maxLength"] == 20_000
    control = schema["$defs"]["Control"]["properties"]
    assert (control["weight"]["minimum"], control["weight"]["maximum"]) == (0.0, 4.0)
    lora = schema["$defs"]["Lora"]["properties"]
    assert (lora["weight"]["minimum"], lora["weight"]["maximum"]) == (-4.0, 4.0)


def test_python_api_takes_the_schemas_defaults():
    """``Pipeline.generate`` has no defaults of its own: every field it does not get comes from the schema."""
    signature = inspect.signature(sdcompose.Pipeline.generate)
    assert set(signature.parameters) == {"self", "prompt", "progress", "cancel", "preview", "fields"}
    req = GenerationRequest()
    assert {name: getattr(req, name) for name in NUMBERS} == {n: default(GenerationRequest, n) for n in NUMBERS}


def test_cli_defaults_are_the_schemas():
    from sdcompose.cli import build_parser
    args = build_parser().parse_args(["generate", "a fox"])
    for name in (*NUMBERS, "scheduler", "seed", "memory", "attention", "negative_prompt"):
        assert getattr(args, name) == default(GenerationRequest, name), name
    assert args.model is None, "the Pipeline's settings decide the model (SDCOMPOSE_MODEL, else sd15)"
    assert build_parser().parse_args(["preprocess", "canny", "x.png", "-o", "y.png"]).resize_mode == \
        default(Control, "resize_mode")


def test_ui_defaults_and_slider_ranges_are_the_schemas(pipe, tmp_path):
    pytest.importorskip("gradio")
    import gradio as gr

    from sdcompose.ui.app import build_app
    from sdcompose.ui.form import DEFAULTS, LORA_WEIGHT, UNIT_DEFAULTS
    for name in (*NUMBERS, "scheduler", "memory", "attention", "fast", "add_trigger_words", "prompt"):
        assert DEFAULTS[name] == default(GenerationRequest, name), name
    for name in ("weight", "start", "end", "resize_mode", "control_mode", "preprocessed"):
        assert UNIT_DEFAULTS[name] == default(Control, name), name
    assert LORA_WEIGHT == default(Lora, "weight")
    demo = build_app(pipe, tmp_path, units=1)
    sliders = {block.label: (block.minimum, block.maximum) for block in demo.blocks.values()
               if isinstance(block, gr.Slider) and not (block.elem_id or "").startswith("sdc-ip-")}
    ip_sliders = {block.elem_id: (block.minimum, block.maximum) for block in demo.blocks.values()
                  if isinstance(block, gr.Slider) and (block.elem_id or "").startswith("sdc-ip-")}
    for name in ("weight", "start", "end"):  # the IP-Adapter section's
        assert ip_sliders[f"sdc-ip-{name}"] == bounds(IpAdapter, name), name
    labels = {"Steps": "steps", "Width": "width", "Height": "height", "CFG scale": "guidance", "Batch size": "batch"}
    for label, name in labels.items():
        assert sliders[label] == bounds(GenerationRequest, name), label
    assert sliders["Denoising strength (how much of the input image is repainted)"][1] == bounds(GenerationRequest, "strength")[1]
    for label, name in (("Weight", "weight"), ("Starting step", "start"), ("Ending step", "end")):
        assert sliders[label] == bounds(Control, name), label
    lora_sliders = [r for label, r in sliders.items() if label.endswith(" weight") and label != "Weight"]
    assert lora_sliders and set(lora_sliders) == {bounds(Lora, "weight")}


def test_a_request_from_json_is_checked_with_the_same_sentences():
    req = GenerationRequest.model_validate({"prompt": "x", "width": "64", "controls": [{"id": "canny", "image": "a.png"}]})
    assert req.width == 64 and isinstance(req.controls[0], Control)
    with pytest.raises(sdcompose.ValidationError, match=r"^width must be a multiple of 8, got 100 \(try 96\)$"):
        GenerationRequest.model_validate({"width": 100})
    with pytest.raises(sdcompose.ValidationError, match=r"controls\[0\] \(canny\) needs an image"):
        GenerationRequest.model_validate({"controls": [{"id": "canny"}]})
    with pytest.raises(sdcompose.ValidationError, match=r"controls\[0\]: Control has no field 'wieght'"):
        GenerationRequest(controls=[{"id": "canny", "image": "a.png", "wieght": 1}])
    with pytest.raises(sdcompose.ValidationError, match="a request has no field 'stpes' \\(did you mean 'steps'\\?\\)"):
        GenerationRequest(stpes=3)


def test_parts_are_made_like_dataclasses_and_checked_in_their_request():
    control = Control("canny", "a.png", 0.5)
    assert (control.id, control.image, control.weight, control.end) == ("canny", "a.png", 0.5, 1.0)
    assert control.with_(weight=0.7).weight == 0.7 and control.weight == 0.5
    assert control.summary()["image"] == "<image>"
    assert Lora("style").weight == 1.0 and Lora("style", -0.5).weight == -0.5
    with pytest.raises(TypeError):
        Control("canny", "a.png", wieght=1)
    bad = Control("canny", "a.png", weight=9)  # made as given; refused with its place in the request
    with pytest.raises(sdcompose.ValidationError, match=r"controls\[0\] \(canny\) weight must be between 0 and 4"):
        GenerationRequest(controls=[bad])


def test_from_metadata_is_the_recorded_request_with_its_embedded_maps():
    from PIL import Image
    made = GenerationRequest(prompt="a fox", model="tiny-sd15", width=64, height=64, seed=5, batch=2,
                             memory="vae_slicing", controls=[Control("canny", "x.png", weight=0.6)],
                             loras=[Lora("style", 0.3)])
    meta = {"request": made.summary(), "seed": 6}
    control_map = Image.new("RGB", (64, 64))
    back = GenerationRequest.from_metadata(meta, {"control-0": control_map})
    assert (back.prompt, back.seed, back.batch, back.memory, back.loras) == ("a fox", 6, 1, "vae_slicing",
                                                                            [Lora("style", 0.3)])
    assert back.controls == [Control("canny", control_map, 0.6, preprocessed=True)]
    assert GenerationRequest.from_metadata(meta, {"control-0": control_map}, runtime=False).memory == "auto"
    with pytest.raises(sdcompose.ValidationError, match="lacks 'control-0'; it cannot be reproduced"):
        GenerationRequest.from_metadata(meta, {})
