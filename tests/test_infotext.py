"""A1111's infotext: sdcompose writes it exactly (checked with sd-parsers, an independent reader) and reads
other tools' images (A1111 PNG text and JPEG/WebP EXIF, ComfyUI), listing what it could not use."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

import sdcompose
from sdcompose import infotext
from sdcompose.errors import ValidationError
from test_cli import cli

# An A1111 v1.10 txt2img infotext in the format A1111 writes (prompt with a LoRA tag, hires fix, a ControlNet
# unit in sd-webui-controlnet's format, hashes), pointed at the tiny test model and LoRA.
A1111_TEXT = (
    "a knight in shining armor, (oil painting:1.3), <lora:tiny-lora-sd15:0.7>, masterpiece\n"
    "Negative prompt: blurry, lowres\n"
    "Steps: 3, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234, Size: 64x64, "
    "Model hash: 6ce0161689, Model: tiny-sd15, Denoising strength: 0.7, Clip skip: 2, Hires upscale: 2, "
    "Hires upscaler: Latent, ControlNet 0: \"Module: canny, Model: control_v11p_sd15_canny [d14c016b], Weight: 1, "
    "Resize Mode: Crop and Resize, Processor Res: 512, Threshold A: 100, Threshold B: 200, Guidance Start: 0, "
    "Guidance End: 1, Pixel Perfect: False, Control Mode: Balanced\", Lora hashes: \"tiny-lora-sd15: 0e1f2a3b4c5d\", "
    "TI hashes: \"easynegative: c74b4e810b03\", Version: v1.10.1")
COMFY_PROMPT = {"3": {"class_type": "KSampler", "inputs": {"seed": 5, "steps": 20, "cfg": 8, "sampler_name": "euler"}},
                "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a castle", "clip": ["4", 1]}}}


def png_with(path, **chunks):
    info = PngImagePlugin.PngInfo()
    for key, value in chunks.items():
        info.add_text(key, value)
    Image.new("RGB", (64, 64), (90, 120, 150)).save(path, pnginfo=info)
    return path


def test_a1111_png_reproduced_with_dropped_fields_listed(tmp_path, home):
    source = png_with(tmp_path / "a1111.png", parameters=A1111_TEXT)
    run = cli("reproduce", source, "-o", tmp_path / "again.png")
    assert run.returncode == 0, run.stderr
    assert "made again from AUTOMATIC1111 settings (best effort" in run.stderr
    dropped = run.stderr.split("dropped: ", 1)[1]
    for name in ("Hires upscaler: Latent (sdcompose has no latent upscale", "ControlNet 0 (Module: canny",
                 "TI hashes"):
        assert name in dropped
    assert "Hires upscale: 2" not in dropped and "Denoising strength" not in dropped  # the hires fix is restored
    with Image.open(tmp_path / "again.png") as image:
        meta = json.loads(image.text["sdcompose"])
    req = meta["request"]
    assert req["prompt"] == "a knight in shining armor, (oil painting:1.3), <lora:tiny-lora-sd15:0.7>, masterpiece"
    assert (req["negative_prompt"], req["steps"], req["scheduler"], req["guidance"], meta["seed"]) == \
        ("blurry, lowres", 3, "dpmpp_2m_karras", 7.0, 1234)
    assert (req["width"], req["height"], req["model"], req["clip_skip"]) == (64, 64, "tiny-sd15", 2)
    assert "tiny-lora-sd15" in meta["models"] and meta["adapter_reports"]["lora"]  # the tag became the LoRA
    assert meta["reproduced_from"]["tool"] == "AUTOMATIC1111"
    assert req["hires"] == {"scale": 2.0, "upscaler": "lanczos", "steps": 0, "denoise": 0.7}  # A1111's hires fix
    assert [(p["pass"], p["width"]) for p in meta["passes"]] == [(1, 64), (2, 128)]


def test_own_parameters_chunk_is_a1111s_format(pipe, tmp_path, photo):
    result = pipe.generate("a knight, (oil painting:1.2)", negative_prompt="blurry, lowres", model="tiny-sd15",
                           loras=[sdcompose.Lora("tiny-lora-sd15", 0.8)], controls=[sdcompose.Control("canny", photo)],
                           width=64, height=64, steps=2, seed=42, guidance=6.5, scheduler="dpmpp_2m_sde_karras",
                           clip_skip=2)
    path = result.save(tmp_path / "ours.png")[0]
    with Image.open(path) as image:
        text = image.text["parameters"]
    lines = text.split("\n")
    assert lines[0] == "a knight, (oil painting:1.2) <lora:tiny-lora-sd15:0.8>"
    assert lines[1] == "Negative prompt: blurry, lowres"
    assert lines[2].startswith("Steps: 2, Sampler: DPM++ 2M SDE, Schedule type: Karras, CFG scale: 6.5, Seed: 42, "
                               "Size: 64x64, Model: tiny-sd15, Clip skip: 2, ControlNet 0: \"Module: canny, Model: ")
    assert "Lora:" not in text and "Version: sdcompose" in text
    # A1111's own reading, and sd-webui-controlnet's reading of the unit
    params = infotext.parse(text)
    assert params["Prompt"] == lines[0] and params["Sampler"] == "DPM++ 2M SDE" and params["Size-1"] == "64"
    unit = dict(item.split(": ", 1) for item in params["ControlNet 0"].split(", "))
    assert unit["Module"] == "canny" and unit["Weight"] == "1.0" and unit["Control Mode"] == "Balanced"
    assert unit["Resize Mode"] == "Crop and Resize" and unit["Model"].startswith("tiny-controlnet")
    # and sdcompose's own reproduce still reads its JSON chunk, not this text
    assert pipe.reproduce(path).metadata.get("reproduced_from") is None


def test_a_hires_image_tells_a1111_its_hires_fix_and_reads_it_back(pipe, tmp_path):
    """The parameters chunk carries A1111's hires fields (Denoising strength is the second pass's); reading that
    text alone (as from an A1111 image) gives the same hires fix, and so the same pixels."""
    result = pipe.generate("a castle", model="tiny-sd15", width=64, height=64, steps=2, seed=5,
                           hires=sdcompose.Hires(scale=1.5, upscaler="tiny-upscaler-x2", steps=3, denoise=0.4))
    path = result.save(tmp_path / "hires.png")[0]
    with Image.open(path) as image:
        text = image.text["parameters"]
    assert ", Denoising strength: 0.4, Hires upscale: 1.5, Hires steps: 3, Hires upscaler: tiny-upscaler-x2," in text
    params = infotext.parse(text)
    restored = pipe.restored(infotext.Found("AUTOMATIC1111", {"parameters": text}))
    assert restored.fields["hires"] == {"scale": 1.5, "steps": 3, "denoise": 0.4, "upscaler": "tiny-upscaler-x2"}
    assert not [d for d in restored.dropped if d.startswith(("Hires", "Denoising"))], restored.dropped
    again = pipe.generate(**restored.fields)
    assert np.array_equal(np.asarray(again.images[0]), np.asarray(result.images[0]))
    lanczos = infotext.to_request(params | {"Hires upscaler": "Lanczos"}, lambda *_: "tiny-sd15", lambda _: True)
    assert lanczos.fields["hires"]["upscaler"] == "lanczos" and not lanczos.dropped
    resized = infotext.to_request({k: v for k, v in params.items() if k != "Hires upscale"} | {
        "Hires resize": "128x128", "Hires upscaler": "4x-UltraSharp"}, lambda *_: "tiny-sd15", lambda _: True)
    assert resized.fields["hires"]["scale"] == 2.0
    assert "Hires upscaler: 4x-UltraSharp (no such upscaler here; used lanczos)" in resized.dropped


def test_an_independent_reader_sees_a1111_settings(pipe, tmp_path):
    """sd-parsers (PyPI; reads A1111, ComfyUI, InvokeAI, Fooocus and NovelAI images) reads sdcompose's PNG as
    A1111's. (It splits fields on every comma, so a ControlNet unit's inner "Model:" would hide the base's:
    that is the reader's limit, and is why this image has no unit.)"""
    from sd_parsers import ParserManager
    result = pipe.generate("a knight, (oil painting:1.2)", negative_prompt="blurry", model="tiny-sd15",
                           loras=[sdcompose.Lora("tiny-lora-sd15", 0.8)], width=64, height=64, steps=2, seed=42,
                           guidance=6.5, scheduler="dpmpp_2m_sde_karras")
    found = ParserManager().parse(str(result.save(tmp_path / "ours.png")[0]))
    assert found.generator.name == "AUTOMATIC1111"
    sampler = found.samplers[0]
    assert sampler.name == "DPM++ 2M SDE" and sampler.parameters["scheduler"] == "Karras"
    assert sampler.parameters["seed"] == "42" and sampler.parameters["steps"] == "2"
    assert sampler.parameters["cfg_scale"] == "6.5" and sampler.model.name == "tiny-sd15"
    assert sampler.prompts[0].value == "a knight, (oil painting:1.2) <lora:tiny-lora-sd15:0.8>"
    assert sampler.negative_prompts[0].value == "blurry"


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP"])
def test_exif_user_comment_is_read(tmp_path, fmt):
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = b"UNICODE\0" + A1111_TEXT.encode("utf-16-be")  # as A1111 writes it (piexif)
    path = tmp_path / f"a1111.{fmt.lower()}"
    Image.new("RGB", (64, 64)).save(path, format=fmt, exif=exif)
    found = infotext.foreign(path)
    assert found.tool == "AUTOMATIC1111" and found.text["parameters"] == A1111_TEXT
    assert infotext.parse(found.raw.split("\n", 1)[1])["Seed"] == "1234"


def test_comfyui_png_is_shown_not_reproduced(pipe, tmp_path):
    path = png_with(tmp_path / "comfy.png", prompt=json.dumps(COMFY_PROMPT), workflow=json.dumps({"nodes": []}))
    found = infotext.foreign(path)
    assert found.tool == "ComfyUI" and '"KSampler"' in found.raw and "[workflow]" in found.raw
    with pytest.raises(ValidationError, match="made by ComfyUI.*cannot run a ComfyUI graph"):
        pipe.reproduce(path)


@pytest.mark.parametrize("text,message", [
    ("\x01\x02 garbage ☃ with no settings", "not A1111 settings"),
    ("a cat\nSteps: 3, Sampler: DPM++ 2M, Seed: 1, Size: 64x64, Model: no-such-model", "Model: no-such-model (hash ?): no base model here matches"),
    ("x" * 200_000, "200000 characters, more than the 100000"),
])
def test_bad_parameters_are_one_sentence(pipe, tmp_path, text, message):
    path = png_with(tmp_path / "bad.png", parameters=text)
    run = cli("reproduce", path)
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and "Traceback" not in run.stderr
    assert message in run.stderr, run.stderr


def test_huge_compressed_parameters_under_a_memory_limit(tmp_path):
    """30 MB of parameters text in a 30 kB zTXt chunk: refused in one sentence within 1 GB of address space."""
    path = tmp_path / "bomb.png"
    Image.new("RGB", (8, 8)).save(path)
    data = path.read_bytes()
    body = b"parameters\0\0" + zlib.compress(b"a, " * 10_000_000, 9)
    chunk = len(body).to_bytes(4, "big") + b"zTXt" + body + zlib.crc32(b"zTXt" + body).to_bytes(4, "big")
    path.write_bytes(data[:33] + chunk + data[33:])
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (2**30, 2**30))\n"
            "from sdcompose import infotext\n"
            "found = infotext.foreign(sys.argv[1])\n"
            "try:\n    infotext.parse(found.text['parameters'])\n"
            "except infotext.ValidationError as exc:\n    print(exc)\n")
    run = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120,
                         env=os.environ)
    assert run.returncode == 0, run.stderr
    assert "30000000 characters, more than the 100000" in run.stdout


def test_image_info_shows_and_restores_an_a1111_png(pipe, tmp_path):
    from sdcompose.ui.form import Form
    from sdcompose.ui.handlers import Handlers
    from sdcompose.ui.sessions import Sessions
    handlers = Handlers(pipe, Form({}, ["tiny-lora-sd15"], 1), Sessions(tmp_path / "out"), ["tiny-sd15"])
    source = png_with(tmp_path / "a1111.png", parameters=A1111_TEXT)
    text, shown, values = handlers.image_info(str(source))
    assert A1111_TEXT in text  # the raw text, always
    shown = json.loads(shown)
    assert shown["tool"] == "AUTOMATIC1111" and any(d.startswith("Hires upscaler: Latent") for d in shown["dropped"])
    assert (values["prompt"], values["seed"], values["steps"], values["scheduler"]) == \
        (A1111_TEXT.split("\n")[0], 1234, 3, "dpmpp_2m_karras")
    assert (values["hires_enable"], values["hires_scale"], values["hires_denoise"]) == (True, 2.0, 0.7)
    restored = dict(zip(handlers.names, handlers.restore(None, str(source))))
    assert (restored["model"], restored["negative_prompt"], restored["guidance"]) == ("tiny-sd15", "blurry, lowres", 7.0)
    comfy = png_with(tmp_path / "comfy.png", prompt=json.dumps(COMFY_PROMPT))
    text, shown, values = handlers.image_info(str(comfy))
    assert values is None and json.loads(shown)["prompt"] == COMFY_PROMPT and "cannot be run" in shown
