"""Any PNG text metadata -> read as data or a ValidationError; reproducing from it never raises anything
but sdcompose's own errors. Also: any bytes given as weights -> a format or a ModelError."""
from __future__ import annotations

import json
import struct
import tempfile
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sdcompose
from png_chunks import chunk, png_with
from sdcompose.images import open_image
from sdcompose.metadata import INPUTS_KEY, KEY, read_png
from sdcompose.pipelines import weights

FOLDER = Path(tempfile.mkdtemp(prefix="sdcompose-fuzz-metadata-"))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10)
    | st.sampled_from(["<script>alert(1)</script>", "tiny-sd15", "canny", "ddim", "../../etc/passwd"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10)
request_keys = ["prompt", "negative_prompt", "model", "controls", "loras", "strength", "width", "height", "steps",
                "guidance", "scheduler", "add_trigger_words"]
requests = st.fixed_dictionaries({}, optional={k: json_values for k in request_keys})
metas = st.fixed_dictionaries({"format": st.sampled_from([1, 1, 1, 2, "1"]), "request": requests | json_values},
                              optional={"seed": st.integers(-5, 2**64) | json_values, "models": json_values})
text_chunks = st.sampled_from([b"tEXt", b"zTXt", b"iTXt"])


def encode(kind: bytes, key: str, text: bytes) -> bytes:
    if kind == b"tEXt":
        return chunk(kind, key.encode() + b"\0" + text)
    if kind == b"zTXt":
        return chunk(kind, key.encode() + b"\0\0" + zlib.compress(text))
    return chunk(kind, key.encode() + b"\0\1\0\0\0" + zlib.compress(text))


def read(data: bytes):
    path = FOLDER / "x.png"
    path.write_bytes(data)
    try:
        meta, inputs = read_png(path)
        return meta, {name: open_image(inputs[name]) for name in inputs}  # each embedded input decoded, as a run would
    except sdcompose.ValidationError as exc:
        assert str(exc)
        return None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(metas, text_chunks, st.dictionaries(st.sampled_from(["control-0", "init_image", "mask", "x"]),
                                           st.text(max_size=20) | json_values, max_size=2))
def test_any_metadata_json_is_data_or_a_validation_error(meta, kind, inputs):
    text = json.dumps(meta, allow_nan=True).encode()
    read(png_with(encode(kind, KEY, text), encode(b"iTXt", INPUTS_KEY, json.dumps(inputs).encode())))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200), text_chunks, st.sampled_from([KEY, INPUTS_KEY, "parameters"]))
def test_any_chunk_bytes_are_data_or_a_validation_error(payload, kind, key):
    read(png_with(chunk(kind, key.encode() + b"\0" + payload)))
    read(png_with(encode(kind, key, payload)))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_any_file_bytes_are_data_or_a_validation_error(data):
    read(data)
    read(b"\x89PNG\r\n\x1a\n" + data)


@pytest.fixture(scope="module")
def reproducer():
    return sdcompose.Pipeline(device="cpu")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(metas)
def test_reproduce_from_any_metadata_raises_only_sdcompose_errors(reproducer, meta):
    """Unknown model ids stop every fuzzed request before it could generate: only errors are possible."""
    if isinstance(meta.get("request"), dict) and str(meta["request"].get("model")) in reproducer.catalog.entries:
        meta["request"]["model"] = "not-a-model"
    path = FOLDER / "r.png"
    path.write_bytes(png_with(encode(b"iTXt", KEY, json.dumps(meta, allow_nan=True).encode())))
    with pytest.raises((sdcompose.SdcomposeError, sdcompose.PluginError)):
        reproducer.reproduce(path, strict=False)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300) | st.builds(lambda n, body: struct.pack("<Q", n) + body,
                                            st.integers(0, 2**64 - 1), st.binary(max_size=200))
       | st.builds(lambda header, body: struct.pack("<Q", len(header)) + header + body,
                   json_values.map(lambda v: json.dumps(v).encode()), st.binary(max_size=64)))
def test_any_bytes_as_weights_are_a_format_or_a_model_error(data):
    path = FOLDER / "w.safetensors"
    path.write_bytes(data)
    try:
        kind = weights.inspect(path)
    except sdcompose.ModelError as exc:
        assert str(path) in str(exc)
        return
    assert kind in ("safetensors", "pickle", "zip")
