"""Hostile inputs a probe found, each built here and run under resource limits (tests/bounded.py) where it
could exhaust memory or CPU: many images in one request, the TIFF directory chain, a model folder that
names its own code, /dev/zero and a FIFO as image paths, a self-referencing YAML anchor."""
from __future__ import annotations

import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

import sdcompose
from bounded import run_bounded
from png_chunks import chunk
from sdcompose.images import MAX_PIXELS, REQUEST_PIXELS



def blank_png(width: int, height: int) -> bytes:
    """An RGBA PNG of zeros, compressed row by row (a few hundred KB for 8192 x 8192)."""
    packer, row, idat = zlib.compressobj(9), b"\0" * (width * 4 + 1), []
    for _ in range(height):
        idat.append(packer.compress(row))
    idat.append(packer.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(idat)) + chunk(b"IEND", b"")


def test_request_pixel_budget_spans_every_image_of_a_request(tmp_path):
    """Each image under the per-image cap, together over the request's budget: refused before decoding."""
    big = tmp_path / "big.png"
    big.write_bytes(blank_png(8192, 8192))
    count = REQUEST_PIXELS // MAX_PIXELS + 1
    out = run_bounded(f"""
        import sdcompose
        pipe = sdcompose.Pipeline(device="cpu")
        controls = [sdcompose.Control("canny", {str(big)!r}, preprocessed=True) for _ in range({count})]
        try:
            pipe.generate(model="tiny-sd15", controls=controls, width=64, height=64, steps=1)
            emit("ran")
        except sdcompose.ValidationError as exc:
            emit(str(exc))
    """, memory_mb=4000, cpu_s=300)
    assert "past" in out and "this request" in out


def tiff_chain(directories: int) -> bytes:
    """A 1x1 greyscale TIFF whose first directory links to ``directories - 1`` more (12 bytes per tag)."""
    tags = 8
    size = 2 + 12 * tags + 4
    pixel = 8 + directories * size
    out = [b"II*\0" + struct.pack("<I", 8)]
    for i in range(directories):
        entries = [(256, 3, 1, 1), (257, 3, 1, 1), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
                   (273, 4, 1, pixel), (278, 3, 1, 1), (279, 4, 1, 1)]
        following = 8 + (i + 1) * size if i + 1 < directories else 0
        out.append(struct.pack("<H", tags) + b"".join(struct.pack("<HHII", *e) for e in entries)
                   + struct.pack("<I", following))
    return b"".join(out) + b"\x80"


def test_tiff_directory_chain_is_not_walked(tmp_path):
    """60 000 directories (6 MB): counting frames walks them in quadratic time (minutes of CPU); decoding the
    first frame needs none of them."""
    path = tmp_path / "chain.tiff"
    path.write_bytes(tiff_chain(60_000))
    out = run_bounded(f"""
        from sdcompose.images import load_rgb
        image = load_rgb({str(path)!r})
        emit([image.size, image.getpixel((0, 0))])
    """, cpu_s=20)
    assert out == [[1, 1], [128, 128, 128]]


def remote_code_folder(folder: Path, sentinel: Path) -> Path:
    """A depth-estimator folder whose config names its own modeling code; importing that code writes ``sentinel``."""
    from safetensors.numpy import save_file
    folder.mkdir(parents=True)
    save_file({"w": np.zeros(1, dtype=np.float32)}, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({
        "model_type": "evil", "architectures": ["EvilModel"],
        "auto_map": {"AutoConfig": "modeling_evil.EvilConfig",
                     "AutoModelForDepthEstimation": "modeling_evil.EvilModel"}}))
    (folder / "preprocessor_config.json").write_text(json.dumps({"auto_map": {
        "AutoImageProcessor": "modeling_evil.EvilProcessor"}}))
    (folder / "modeling_evil.py").write_text(f"open({str(sentinel)!r}, 'w').write('ran')\n")
    return folder


def test_model_folder_naming_custom_code_is_refused_and_never_runs(home, tmp_path, photo):
    sentinel, name = tmp_path / "sentinel", f"evil-depth-{tmp_path.name}"
    folder = remote_code_folder(home / "models" / name, sentinel)
    overlay = tmp_path / "models.yaml"
    overlay.write_text(f"models:\n  annotator-depth-anything-v2-small:\n    kind: annotator\n    path: {name}\n")
    try:
        with pytest.raises(sdcompose.ModelError, match="names custom code .*auto_map.*never runs"):
            sdcompose.Pipeline(models=overlay, device="cpu").preprocess("depth", photo, input="photo")
    finally:
        shutil.rmtree(folder)
    assert not sentinel.exists()


def test_depth_loader_never_asks_to_run_a_folders_code(tmp_path):
    """Even handed such a folder directly, with "y" waiting on stdin, the estimator loader refuses it."""
    sentinel = tmp_path / "sentinel"
    folder = remote_code_folder(tmp_path / "evil", sentinel)
    (tmp_path / "yes").write_text("y\ny\n")
    out = run_bounded(f"""
        import sys
        from pathlib import Path
        sys.stdin = open({str(tmp_path / 'yes')!r})
        from sdcompose.plugins.api import PluginError
        from sdcompose.plugins.builtin.depth import _load_estimator
        try:
            _load_estimator(Path({str(folder)!r}), "cpu")
            emit("loaded")
        except PluginError as exc:
            emit(str(exc))
    """, memory_mb=3000, env={"HF_MODULES_CACHE": str(tmp_path / "modules")})
    assert "did not load" in out
    assert not sentinel.exists()



def test_dev_zero_and_fifo_image_paths_are_refused_unread(tmp_path):
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    out = run_bounded(f"""
        from sdcompose.errors import ValidationError
        from sdcompose.images import load_rgb
        out = []
        for path in ("/dev/zero", {str(fifo)!r}):
            try:
                load_rgb(path)
            except ValidationError as exc:
                out.append(str(exc))
        emit(out)
    """, memory_mb=500, wall_s=120)
    assert len(out) == 2 and all("is not a regular file" in message for message in out)


def test_self_referencing_yaml_anchor_is_a_catalog_error(tmp_path):
    path = tmp_path / "models.yaml"
    path.write_text("models: &a\n  x: *a\n  y: !!python/object:os.system 1\n")
    from sdcompose.pipelines.catalog import read_catalog
    with pytest.raises(sdcompose.CatalogError, match=r"models.yaml:3: .*constructor for the tag"):
        read_catalog(path)
