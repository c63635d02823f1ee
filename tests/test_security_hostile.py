"""Hostile inputs a probe found, each built here and run under resource limits (tests/bounded.py) where it
could exhaust memory or CPU: the PNG memory bomb, the TIFF directory chain, a model folder that names its
own code, two writers to one output path, a full disk."""
from __future__ import annotations

import base64
import json
import shutil
import struct
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import sdcompose
from bounded import run_bounded
from png_chunks import chunk
from sdcompose.images import MAX_PIXELS, REQUEST_PIXELS
from sdcompose.metadata import INPUTS_KEY, KEY, read_png, save_png

META = {"format": 1, "seed": 1, "models": {},
        "request": {"prompt": "x", "negative_prompt": "", "model": "tiny-sd15", "width": 64, "height": 64,
                    "steps": 1, "guidance": 1.0, "scheduler": "ddim", "strength": 0.75, "loras": [], "controls": []}}


def itxt(key: str, text: str) -> bytes:
    return chunk(b"iTXt", key.encode() + b"\0\1\0\0\0" + zlib.compress(text.encode(), 9))


def blank_png(width: int, height: int) -> bytes:
    """An RGBA PNG of zeros, compressed row by row (a few hundred KB for 8192 x 8192)."""
    packer, row, idat = zlib.compressobj(9), b"\0" * (width * 4 + 1), []
    for _ in range(height):
        idat.append(packer.compress(row))
    idat.append(packer.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(idat)) + chunk(b"IEND", b"")


def png_around_pixels(before: list[bytes], after: list[bytes]) -> bytes:
    """A 1x1 PNG with text chunks both before and after its image data (after it, Gradio's text check misses them)."""
    png = blank_png(1, 1)
    idat = png.index(b"IDAT") - 4
    iend = png.index(b"IEND") - 4
    return png[:idat] + b"".join(before) + png[idat:iend] + b"".join(after) + png[iend:]


@pytest.fixture(scope="module")
def memory_bomb(tmp_path_factory) -> Path:
    """A small PNG whose 40 embedded 8192 x 8192 RGBA "control maps" would decode to 10.7 GB."""
    bomb = base64.b64encode(blank_png(8192, 8192)).decode()
    controls = [{"id": "canny", "weight": 1.0, "start": 0.0, "end": 1.0, "params": {}, "model": None,
                 "resize_mode": "just_resize", "control_mode": "balanced"} for _ in range(40)]
    meta = json.loads(json.dumps(META))
    meta["request"]["controls"] = controls
    path = tmp_path_factory.mktemp("bomb") / "bomb.png"
    path.write_bytes(png_around_pixels([itxt(KEY, json.dumps(meta))],
                                       [itxt(INPUTS_KEY, json.dumps({f"control-{i}": bomb for i in range(40)}))]))
    assert path.stat().st_size < 2 * 2**20
    return path


def test_png_memory_bomb_decodes_only_used_inputs_within_one_pixel_budget(memory_bomb):
    out = run_bounded(f"""
        from sdcompose.errors import ValidationError
        from sdcompose.metadata import read_png
        meta, inputs = read_png({str(memory_bomb)!r})
        decoded, error = 0, None
        for name in inputs:
            try:
                inputs[name]
                decoded += 1
            except ValidationError as exc:
                error = str(exc)
                break
        emit({{"listed": len(inputs), "decoded": decoded, "error": error}})
    """, memory_mb=1500)
    assert out["listed"] == 40
    assert out["decoded"] == REQUEST_PIXELS // MAX_PIXELS < 40
    assert "past" in out["error"] and "embedded control-" in out["error"]


def test_png_memory_bomb_reproduce_is_refused_before_anything_is_decoded(pipe, memory_bomb):
    with pytest.raises(sdcompose.ValidationError, match="at most 8 controls"):
        pipe.reproduce(memory_bomb)


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


def test_two_writers_to_one_path_leave_one_whole_image(tmp_path):
    target = tmp_path / "out.png"
    images = [Image.new("RGB", (256, 256), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    arrays = [np.asarray(image) for image in images]
    for _ in range(10):
        errors: list[BaseException] = []
        start = threading.Barrier(2)

        def write(image: Image.Image) -> None:
            try:
                start.wait()
                save_png(image, META, {}, target)
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=write, args=(image,)) for image in images]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors
        written = np.asarray(Image.open(target).convert("RGB"))
        assert any(np.array_equal(written, array) for array in arrays)
        assert read_png(target)[0] == META
        assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]


def test_save_png_on_a_full_disk_leaves_the_old_file_and_no_partial(tmp_path):
    """A file-size limit makes the write fail part-way, as a full disk does."""
    target = tmp_path / "out.png"
    target.write_bytes(b"old")
    out = run_bounded(f"""
        import resource, signal
        import numpy as np
        from PIL import Image
        from sdcompose.metadata import save_png
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
        noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8))
        try:
            save_png(noise, json.loads({json.dumps(META)!r}), {{}}, {str(target)!r})
            emit("saved")
        except OSError as exc:
            emit(exc.strerror)
    """)
    assert out == "File too large"
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]


def test_preprocess_output_on_a_full_disk_is_one_sentence_and_no_file(tmp_path, photo):
    target = tmp_path / "edges.png"
    out = run_bounded(f"""
        import contextlib, io, resource, signal
        from sdcompose.cli import main
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (100, 100))
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = main(["preprocess", "canny", {str(photo)!r}, "-o", {str(target)!r}, "--device", "cpu"])
        emit([code, err.getvalue()])
    """, memory_mb=3000)
    code, err = out
    assert code == 2 and err.startswith("sdcompose: error: cannot write") and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []
