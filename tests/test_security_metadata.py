"""PNG metadata from untrusted files: garbage, huge, wrong types, <script> in fields -> ValidationError or
plain data; ``Pipeline.reproduce`` never crashes on what a PNG claims."""
from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

import sdcompose
from png_chunks import chunk, png_with
from sdcompose.images import open_image
from sdcompose.metadata import INPUTS_KEY, KEY, MAX_TEXT, read_png, save_png

SMALL = dict(prompt="a red fox", model="tiny-sd15", width=64, height=64, steps=2, seed=9)
SCRIPT = "<script>alert(document.cookie)</script>"


def itxt(key: str, text: str | bytes, compressed: bool = True) -> bytes:
    raw = text.encode("utf-8") if isinstance(text, str) else text
    body = zlib.compress(raw) if compressed else raw
    return chunk(b"iTXt", key.encode("latin-1") + b"\0" + (b"\1\0" if compressed else b"\0\0") + b"\0\0" + body)


@pytest.fixture(scope="module")
def made(pipe, tmp_path_factory, photo):
    """A real sdcompose PNG (with a control map and init image embedded) and its metadata."""
    result = pipe.generate(init_image=photo, controls=[sdcompose.Control("canny", photo)], **SMALL)
    [path] = result.save(tmp_path_factory.mktemp("made") / "made.png")
    meta, inputs = read_png(path)
    return path, meta, inputs, result


def tampered(made, tmp_path: Path, change) -> Path:
    """The real PNG's chunks, with its JSON metadata changed by ``change``."""
    path, meta, inputs, _ = made
    meta = json.loads(json.dumps(meta))
    change(meta)
    encoded = {k: base64_png(open_image(v)) for k, v in inputs.items()}
    target = tmp_path / "tampered.png"
    target.write_bytes(png_with(itxt(KEY, json.dumps(meta)), itxt(INPUTS_KEY, json.dumps(encoded))))
    return target


def base64_png(image: Image.Image) -> str:
    import base64
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_round_trip_reproduces_the_same_image(pipe, made):
    path, meta, inputs, result = made
    assert set(inputs) == {"control-0", "init_image"}
    again = pipe.reproduce(path)
    assert np.array_equal(again.arrays[0], result.arrays[0])


@pytest.mark.parametrize("content,match", [
    (b"", "not a PNG|does not exist|damaged"),
    (b"GIF89a" + b"\0" * 40, "not a PNG"),
    (b"\x89PNG\r\n\x1a\n" + b"\0\0\0\xffIHDR", "truncated"),
    (b"<html><script>alert(1)</script></html>", "not a PNG"),
])
def test_garbage_files(pipe, tmp_path, content, match):
    path = tmp_path / "x.png"
    path.write_bytes(content)
    with pytest.raises(sdcompose.ValidationError, match=match):
        pipe.reproduce(path)


def test_png_without_metadata(pipe, photo):
    with pytest.raises(sdcompose.ValidationError, match="carries no sdcompose metadata"):
        pipe.reproduce(photo)


@pytest.mark.parametrize("text,match", [
    ("{not json", "not valid JSON"),
    ("[" * 100_000 + "]" * 100_000, "not valid JSON"),
    ("[1, 2]", "unsupported sdcompose metadata"),
    (json.dumps({"format": 2, "request": {}}), "format 2"),
    (json.dumps({"format": 1, "request": "x"}), "unsupported"),
])
def test_metadata_that_is_not_our_json(pipe, tmp_path, text, match):
    path = tmp_path / "x.png"
    path.write_bytes(png_with(itxt(KEY, text)))
    with pytest.raises(sdcompose.ValidationError, match=match):
        pipe.reproduce(path)


def test_huge_compressed_text_is_refused_without_inflating_it(tmp_path):
    bomb = zlib.compress(b" " * (MAX_TEXT + 1024), 9)  # a few tens of kB that inflate past the limit
    assert len(bomb) < 100_000
    body = KEY.encode() + b"\0\1\0\0\0" + bomb
    path = tmp_path / "bomb.png"
    path.write_bytes(png_with(chunk(b"iTXt", body)))
    with pytest.raises(sdcompose.ValidationError, match="inflates to more than 32 MB"):
        read_png(path)
    ztxt = chunk(b"zTXt", KEY.encode() + b"\0\0" + bomb)
    path.write_bytes(png_with(ztxt))
    with pytest.raises(sdcompose.ValidationError, match="inflates to more than"):
        read_png(path)


def test_damaged_text_chunks(tmp_path):
    for bad in (chunk(b"iTXt", KEY.encode() + b"\0\1\0\0\0" + b"not zlib"),
                itxt(KEY, b"\xff\xfe not utf-8", compressed=False)):
        path = tmp_path / "x.png"
        path.write_bytes(png_with(bad))
        with pytest.raises(sdcompose.ValidationError, match="damaged"):
            read_png(path)


@pytest.mark.parametrize("change,match", [
    (lambda m: m["request"].update(steps="<script>"), "steps must be a number"),
    (lambda m: m["request"].update(width=10**9), "width must be between"),
    (lambda m: m["request"].update(guidance=float("nan")), "not valid JSON|guidance must be a finite"),
    (lambda m: m["request"].update(scheduler=SCRIPT), "scheduler '<script>alert"),
    (lambda m: m["request"].update(controls="canny"), "malformed request.controls"),
    (lambda m: m["request"].update(controls=[{"id": "canny"}]), "lacks"),
    (lambda m: m["request"]["controls"][0].update(params=[1, 2]), "params must be a mapping"),
    (lambda m: m["request"]["controls"][0].update(model={"x": 1}), "model must be a non-empty id"),
    (lambda m: m["request"].update(loras=[{"id": ["x"], "weight": 1}]), r"loras\[0\] id"),
    (lambda m: m["request"].update(loras=["tiny-lora-sd15"]), "malformed request.loras"),
    (lambda m: m.update(seed="abc"), "no valid seed"),
    (lambda m: m.update(seed=-5), "no valid seed"),
    (lambda m: m.update(models=["tiny-sd15"]), "malformed `models`"),
    (lambda m: m.update(models={"tiny-sd15": {"sha256": "x"}}), "malformed `models`"),
    (lambda m: m["request"].pop("prompt"), "lacks 'prompt'"),
    (lambda m: m["request"].update(prompt="x" * 30_000), "prompt is 30000 characters"),
    (lambda m: m["request"].update(add_trigger_words="<script>"), "add_trigger_words"),
])
def test_wrong_types_in_fields_are_validation_errors(pipe, made, tmp_path, change, match):
    path = tampered(made, tmp_path, change)
    with pytest.raises(sdcompose.ValidationError, match=match):
        pipe.reproduce(path)


def test_unknown_model_in_metadata_is_a_model_error(pipe, made, tmp_path):
    path = tampered(made, tmp_path, lambda m: m["models"].update({SCRIPT: {"sha256": {}}}))
    with pytest.raises(sdcompose.ModelError, match="no model"):
        pipe.reproduce(path)


def test_script_in_text_fields_is_kept_as_plain_data(pipe, made, tmp_path):
    """A <script> prompt reproduces as that exact text; nothing interprets it (the UI escapes what it shows)."""
    path = tampered(made, tmp_path, lambda m: m["request"].update(prompt=SCRIPT, negative_prompt=SCRIPT + "\"'&"))
    meta, _ = read_png(path)
    assert meta["request"]["prompt"] == SCRIPT
    result = pipe.reproduce(path)
    assert result.metadata["request"]["prompt"] == SCRIPT
    assert result.metadata["request"]["negative_prompt"] == SCRIPT + "\"'&"
    [saved] = result.save(tmp_path / "again.png")
    assert Image.open(saved).text["parameters"].startswith(SCRIPT)


def test_embedded_inputs_are_checked_like_any_image(pipe, made, tmp_path):
    path, meta, inputs, _ = made
    bomb = io.BytesIO()
    # a PNG declaring 100000 x 100000 pixels
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    bomb.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
               + chunk(b"IEND", b""))
    import base64
    for embedded, match in ((base64.b64encode(bomb.getvalue()).decode(), "too many pixels|the limit is"),
                            ("not base64 !!", "not valid base64"), (12, "not base64 text")):
        target = tmp_path / "inputs.png"
        target.write_bytes(png_with(itxt(KEY, json.dumps(meta)), itxt(INPUTS_KEY, json.dumps({"control-0": embedded}))))
        _, embedded_inputs = read_png(target)  # read without decoding: checked when a request uses it
        with pytest.raises(sdcompose.ValidationError, match=match):
            open_image(embedded_inputs["control-0"])
    encoded = {"../../etc/passwd": "AAAA", **{k: base64_png(open_image(v)) for k, v in inputs.items()}}
    target.write_bytes(png_with(itxt(KEY, json.dumps(meta)), itxt(INPUTS_KEY, json.dumps(encoded))))
    assert set(read_png(target)[1]) == {"control-0", "init_image"}  # names sdcompose never writes are ignored


def test_large_embedded_inputs_read_back(tmp_path):
    """Embedded inputs above PIL's 1 MB text-chunk limit (a big noisy control map) still read back."""
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (700, 700, 3), dtype=np.uint8))
    meta = {"format": 1, "seed": 1, "request": {"prompt": "x", "negative_prompt": "", "steps": 1, "scheduler": "ddim",
                                                 "guidance": 1.0, "width": 64, "height": 64, "model": "m",
                                                 "loras": [], "controls": []}}
    path = save_png(Image.new("RGB", (8, 8)), meta, {"control-0": noise}, tmp_path / "big.png")
    assert path.stat().st_size > PngImagePlugin.MAX_TEXT_CHUNK
    _, inputs = read_png(path)
    assert np.array_equal(np.asarray(open_image(inputs["control-0"])), np.asarray(noise))


def test_a_pil_image_with_text_works_too(made):
    path, meta, _, _ = made
    assert read_png(Image.open(path))[0] == meta
