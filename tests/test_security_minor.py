"""The minor cases a hostile probe found, each a traceback or junk where one sentence belongs; each built here."""
from __future__ import annotations

import json
import zlib

import pytest
from PIL import Image

import sdcompose
from bounded import run_bounded
from sdcompose.cli import build_parser, main
from png_chunks import chunk, png_with
from sdcompose.metadata import KEY, read_png
from sdcompose.request import GenerationRequest

SMALL = dict(prompt="a fox", model="tiny-sd15", width=64, height=64, steps=2, seed=3)
HUGE = 10**400


def cli(capsys, *args):
    """Exit code and stderr of the ``sdcompose`` command, run in this process."""
    capsys.readouterr()
    code = main([str(arg) for arg in args])
    return code, capsys.readouterr().err


def one_sentence(text: str) -> bool:
    return text.count("\n") <= 1 and "Traceback" not in text and len(text) < 400


@pytest.fixture(scope="module")
def made(pipe, tmp_path_factory):
    [path] = pipe.generate(**SMALL).save(tmp_path_factory.mktemp("made") / "made.png")
    return path


def rewritten(path, tmp_path, change):
    """``path``'s metadata changed by ``change``, written as hand-made chunks (nothing checks it on the way)."""
    meta, _ = read_png(path)
    meta = json.loads(json.dumps(meta))
    change(meta)
    text = json.dumps(meta).encode()
    target = tmp_path / "changed.png"
    target.write_bytes(png_with(chunk(b"iTXt", KEY.encode() + b"\0\1\0\0\0" + zlib.compress(text))))
    return target


def test_strict_reproduce_validates_before_hashing_any_model(pipe, made, tmp_path):
    """Recorded hub models (not downloaded here, and the tests run offline) are never hashed: a bad request is
    refused first, and models the request does not use are only looked up."""
    other = {"sd15": {"sha256": {"x": "0" * 64}}, "sdxl-base": {"sha256": {"x": "0" * 64}}}
    bad = rewritten(made, tmp_path, lambda m: (m["models"].update(other), m["request"].update(width=100)))
    with pytest.raises(sdcompose.ValidationError, match="width must be a multiple of 8"):
        pipe.reproduce(bad)
    extra = rewritten(made, tmp_path, lambda m: m["models"].update(other))
    assert pipe.reproduce(extra).images[0].tobytes() == Image.open(made).convert("RGB").tobytes()
    changed = rewritten(made, tmp_path, lambda m: m["models"]["tiny-sd15"].update(sha256={"x": "0" * 64}))
    with pytest.raises(sdcompose.ModelError, match="has changed since"):
        pipe.reproduce(changed)


def test_overflowing_numbers_are_one_sentence(pipe, photo, capsys, monkeypatch):
    monkeypatch.delenv("SDCOMPOSE_DEBUG", raising=False)
    code, err = cli(capsys, "generate", "--vram", "1" + "0" * 400 + "GB", "--model", "tiny-sd15", "-W", "64", "-H", "64")
    assert code == 2 and "vram must be between" in err and one_sentence(err)
    with pytest.raises(sdcompose.PluginError, match=r"low_threshold' must be <= 255, got 1000+\.\.\.") as caught:
        pipe.preprocess("canny", photo, low_threshold=HUGE)
    assert len(str(caught.value)) < 200
    from sdcompose.ui.form import Form
    with pytest.raises(sdcompose.ValidationError, match="seed must be a whole number") as caught:
        Form({}, [], 1).to_kwargs({"seed": HUGE})
    assert len(str(caught.value)) < 200


def test_empty_list_as_a_units_plugin_is_a_validation_error():
    from sdcompose.ui.form import Form
    form = Form({"canny": ()}, [], 1)
    for plugin in ([], {}, 3):
        with pytest.raises(sdcompose.ValidationError, match="ControlNet unit 1: pick a conditioner"):
            form.to_kwargs(form.defaults() | {"cn0_enable": True, "cn0_plugin": plugin, "cn0_image": "x.png"})
    with pytest.raises(sdcompose.ValidationError, match="task must be one of"):
        form.to_kwargs(form.defaults() | {"task": ["inpaint"]})
    with pytest.raises(sdcompose.ValidationError, match="no LoRA"):
        form.to_kwargs(form.defaults() | {"loras": [[]]})


@pytest.mark.parametrize("change, match", [
    (lambda m: m["request"].pop("steps"), "lacks 'steps'"),
    (lambda m: m["request"].update(negative_prompt=None), "negative_prompt must be text"),
    (lambda m: m["request"].update(width="wide"), "width must be a number"),
    (lambda m: m["request"].update(controls=[{"id": "canny", "weight": [1]}]), "lacks|weight must be a number"),
])
def test_image_info_and_restore_on_odd_metadata_are_one_sentence(pipe, made, tmp_path, change, match):
    import gradio as gr
    from sdcompose.ui.form import Form
    from sdcompose.ui.handlers import Handlers
    from sdcompose.ui.sessions import Sessions
    handlers = Handlers(pipe, Form({"canny": ()}, [], 1), Sessions(tmp_path / "out"), ["tiny-sd15"])
    path = rewritten(made, tmp_path, change)
    request = type("Request", (), {"session_hash": "s1"})()
    for call in (lambda: handlers.image_info(str(path)), lambda: handlers.restore(request, str(path))):
        with pytest.raises(gr.Error, match=match) as caught:
            call()
        assert caught.value.title == "Invalid request"


def test_restore_keeps_plugin_params_a_request_accepts(tmp_path):
    from sdcompose.plugins.api import ParamSpec
    from sdcompose.ui.form import Form
    spec = ParamSpec("low_threshold", "int", 100, min=1, max=255)
    form = Form({"canny": (spec,)}, [], 1)
    req = GenerationRequest(controls=[sdcompose.Control("canny", Image.new("RGB", (64, 64)),
                                                        params={"low_threshold": HUGE})], width=64, height=64, seed=1)
    meta = {"format": 1, "task": "txt2img", "request": req.summary(), "seed": 1}
    values, warnings = form.from_metadata(meta, {"control-0": Image.new("RGB", (64, 64))}, lambda name, image: name)
    assert values[form.param(0, "canny", "low_threshold")] == 100
    assert len(warnings) == 1 and "low_threshold' must be <= 255" in warnings[0] and len(warnings[0]) < 200


def test_cpu_out_of_memory_is_out_of_memory_and_the_next_request_works():
    """A real allocation failure of torch's CPU allocator mid-denoise (under a memory limit), not a traceback."""
    out = run_bounded(f"""
        import torch
        import sdcompose
        pipe = sdcompose.Pipeline(device="cpu")
        small = {SMALL!r}
        first = pipe.generate(**small).arrays[0]

        def hungry(step, total):
            if step == 1:
                torch.empty(2**34, dtype=torch.uint8)  # 16 GB, far over the limit

        try:
            pipe.generate(progress=hungry, **small)
            emit("ran")
        except sdcompose.OutOfMemory as exc:
            again = pipe.generate(**small).arrays[0]
            emit([str(exc), bool((again == first).all())])
    """, memory_mb=4000, cpu_s=300)
    message, same = out
    assert message.startswith("out of cpu memory at 64x64") and same


def test_long_inputs_are_quoted_short_in_errors(capsys, monkeypatch):
    monkeypatch.delenv("SDCOMPOSE_DEBUG", raising=False)
    long = "9" * 400
    for args in (["--control", f"canny={long}"], ["--control", f"canny=x.png:weight={long}x"],
                 ["--lora", f"a:{long}x"], ["--init-image", long]):
        code, err = cli(capsys, "generate", "--model", "tiny-sd15", "-W", "64", "-H", "64", "--steps", "1", *args)
        assert code == 2 and one_sentence(err) and long not in err, err


def test_argparse_abbreviations_are_off_and_ui_takes_model(pipe):
    parser = build_parser()
    assert parser.parse_args(["ui", "--model", "tiny-sd15"]).model == "tiny-sd15"
    for args in (["ui", "--mod", "x"], ["generate", "--neg", "x"], ["reproduce", "a.png", "--allow", "x"]):
        with pytest.raises(SystemExit):
            parser.parse_args(args)
    from sdcompose.ui import widgets
    assert widgets.base_models(pipe, "tiny-sdxl")[1] == "tiny-sdxl"
    with pytest.raises(sdcompose.ValidationError, match="--model 'tiny-sd16' is not a base model.*tiny-sd15"):
        widgets.base_models(pipe, "tiny-sd16")
