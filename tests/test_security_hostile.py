"""Hostile inputs a probe found, each built here and run under resource limits (tests/bounded.py) where it
could exhaust memory or CPU: the PNG memory bomb through every entry point that reads a PNG, many images in
one request, the TIFF directory chain, a model folder that names its own code, /dev/zero and a FIFO as image
paths, a self-referencing YAML anchor, two writers to one output path, a full disk."""
from __future__ import annotations

import base64
import json
import os
import shutil
import struct
import textwrap
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

def blank_png(width: int, height: int) -> bytes:
    """An RGBA PNG of zeros, compressed row by row (a few hundred KB for 8192 x 8192)."""
    packer, row, idat = zlib.compressobj(9), b"\0" * (width * 4 + 1), []
    for _ in range(height):
        idat.append(packer.compress(row))
    idat.append(packer.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(idat)) + chunk(b"IEND", b"")


def itxt(key: str, text: str) -> bytes:
    return chunk(b"iTXt", key.encode() + b"\0\1\0\0\0" + zlib.compress(text.encode(), 9))


def png_around_pixels(before: list[bytes], after: list[bytes]) -> bytes:
    """A 1x1 PNG with text chunks both before and after its image data (after it, Gradio's text check misses them)."""
    png = blank_png(1, 1)
    idat, iend = png.index(b"IDAT") - 4, png.index(b"IEND") - 4
    return png[:idat] + b"".join(before) + png[idat:iend] + b"".join(after) + png[iend:]


BOMB_INPUTS = 60  # embedded 8192x8192 RGBA images: 16 GB decoded, 21 MB of base64 text, a few MB of file


@pytest.fixture(scope="module")
def png_bomb(tmp_path_factory) -> Path:
    """An inpaint PNG whose metadata records 8 preprocessed canny units (the most a request may have) and embeds
    60 control maps, an init image and a mask, each 8192x8192: decoded eagerly, 16.6 GB."""
    bomb = base64.b64encode(blank_png(8192, 8192)).decode()
    unit = {"id": "canny", "weight": 1.0, "start": 0.0, "end": 1.0, "params": {}, "model": None,
            "resize_mode": "just_resize", "control_mode": "balanced"}
    meta = {"format": 1, "seed": 1, "models": {}, "task": "inpaint",
            "request": {"prompt": "x", "negative_prompt": "", "model": "tiny-sd15", "width": 64, "height": 64,
                        "steps": 1, "guidance": 1.0, "scheduler": "ddim", "strength": 0.75, "loras": [],
                        "controls": [unit] * 8}}
    inputs = {f"control-{i}": bomb for i in range(BOMB_INPUTS)} | {"init_image": bomb, "mask": bomb}
    path = tmp_path_factory.mktemp("bomb") / "bomb.png"
    path.write_bytes(png_around_pixels([itxt(KEY, json.dumps(meta))], [itxt(INPUTS_KEY, json.dumps(inputs))]))
    assert path.stat().st_size < 8 * 2**20
    return path


BOMB_ENTRY_POINTS = {
    "Pipeline.reproduce": """
        import sdcompose
        try:
            sdcompose.Pipeline(device="cpu").reproduce(BOMB, strict=False)
            emit("ran")
        except sdcompose.ValidationError as exc:
            emit(str(exc))
    """,
    "sdcompose reproduce": """
        import contextlib, io
        from sdcompose.cli import main
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = main(["reproduce", "--allow-changed-models", BOMB, "-o", BOMB + ".out.png"])
        emit(f"exit {code}: {err.getvalue()}")
    """,
    "Image info": """
        from test_ui_handlers import handlers_for
        text, shown, values = handlers_for(WORK).image_info(BOMB)
        emit(f"{values['cn0_image']} {values['cn2_image']} {values['mask']} {values['inpaint']}")
    """,
    "Restore": """
        import gradio as gr
        from test_ui_handlers import handlers_for
        try:
            handlers_for(WORK).restore(None, BOMB)
            emit("restored")
        except gr.Error as exc:
            emit(exc.message)
    """,
    "POST /v1/reproduce": """
        import base64
        from test_server_security import served
        with served() as client:
            answer = client.post("/v1/reproduce", json={"image": base64.b64encode(open(BOMB, "rb").read()).decode(),
                                                        "strict": False})
        emit(f"{answer.status_code} {answer.text}")
    """,
    "POST /sdapi/v1/png-info": """
        import base64, json
        from test_server_security import served
        with served() as client:
            answer = client.post("/sdapi/v1/png-info", json={"image": base64.b64encode(open(BOMB, "rb").read()).decode()})
        emit(f"{answer.status_code} {json.loads(answer.json()['items']['sdcompose'])['request']['width']}")
    """,
}
BUDGET_REFUSAL = f"past {REQUEST_PIXELS} pixels"
EXPECTED = {"Pipeline.reproduce": BUDGET_REFUSAL, "sdcompose reproduce": BUDGET_REFUSAL, "Restore": BUDGET_REFUSAL,
            "POST /v1/reproduce": BUDGET_REFUSAL, "Image info": "<image> <image> <image> <image>",
            "POST /sdapi/v1/png-info": "200 64"}


@pytest.mark.parametrize("entry", list(BOMB_ENTRY_POINTS))
def test_png_memory_bomb_decodes_only_the_inputs_a_request_uses_within_a_pixel_budget(png_bomb, tmp_path, entry):
    """Under a 3 GB memory limit (eager decoding needs 16.6 GB): each entry point decodes only what it uses,
    at most two 8192x8192 images (the budget), then refuses in one sentence; Image info decodes none."""
    out = run_bounded(f"BOMB, WORK = {str(png_bomb)!r}, {str(tmp_path)!r}\n" + textwrap.dedent(BOMB_ENTRY_POINTS[entry]),
                      memory_mb=3000, cpu_s=300)
    assert EXPECTED[entry] in out, out
    if EXPECTED[entry] == BUDGET_REFUSAL:
        assert "Traceback" not in out and len(out) < 400
        assert f"{8192 * 8192 * 2} already" in out  # two were decoded: the request used them; the rest never were


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
