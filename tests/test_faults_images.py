"""Images from users: a bomb, a non-image named .png, CMYK, 16-bit, alpha, palette, animated GIF/APNG,
truncated files -- rejected with a ValidationError or converted, never a crash; through ``pipe.generate``."""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import sdcompose
from sdcompose.images import MAX_PIXELS, load_mask, load_rgb

SMALL = dict(prompt="x", model="tiny-sd15", width=64, height=64, steps=2, seed=2)


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(width: int, height: int) -> bytes:
    """A few hundred bytes that declare width x height 8-bit grey pixels (a zlib stream of zeros)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    row = b"\0" * (width + 1)
    stream = zlib.compressobj(9)
    data = b"".join(stream.compress(row) for _ in range(min(height, 64))) + stream.flush()
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def picture(size=(80, 64)) -> Image.Image:
    array = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    array[:, : size[0] // 2] = (200, 30, 30)
    array[size[1] // 3:, :, 2] = 220
    return Image.fromarray(array)


def saved(image: Image.Image, tmp_path: Path, name: str, **kw) -> Path:
    path = tmp_path / name
    image.save(path, **kw)
    return path


def generate_with(pipe, source, **extra):
    """The input used as init image and as a canny control: both paths of decoding run."""
    return pipe.generate(init_image=source, controls=[sdcompose.Control("canny", source)], **SMALL, **extra)


def rejected(pipe, source, match: str) -> None:
    for kwargs in (dict(init_image=source), dict(controls=[sdcompose.Control("canny", source)])):
        with pytest.raises(sdcompose.ValidationError, match=match):
            pipe.generate(**SMALL, **kwargs)


# ---- rejected --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("width,height", [(100_000, 100_000), (50_000, 2_000), (10_000, 10_000)])
def test_image_bomb_declaring_gigapixels_rejected(pipe, tmp_path, width, height):
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb_png(width, height))
    assert path.stat().st_size < 20_000
    rejected(pipe, path, "too many pixels|the limit is")
    rejected(pipe, path.read_bytes(), "too many pixels|the limit is")


def test_non_image_named_png_rejected(pipe, tmp_path):
    for content in (b"<html><script>alert(1)</script></html>", b"", b"\x89PNG\r\n\x1a\n" + b"\0" * 40):
        path = tmp_path / "photo.png"
        path.write_bytes(content)
        rejected(pipe, path, "not an image|damaged")


def test_truncated_png_and_jpeg_rejected(pipe, tmp_path):
    for fmt in ("PNG", "JPEG"):
        buffer = io.BytesIO()
        picture((256, 256)).save(buffer, format=fmt)
        path = tmp_path / f"cut.{fmt.lower()}"
        path.write_bytes(buffer.getvalue()[: buffer.tell() // 2])
        rejected(pipe, path, "damaged")


def test_postscript_named_png_is_never_handed_to_ghostscript(pipe, tmp_path):
    path = tmp_path / "eps.png"
    path.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n(x) print\n")
    rejected(pipe, path, "not an image in a supported format")


def test_missing_file_and_wrong_types_rejected(pipe, tmp_path):
    rejected(pipe, tmp_path / "nope.png", "does not exist")
    rejected(pipe, 12345, "must be a path, bytes, PIL image or numpy array")
    rejected(pipe, np.full((8, 8, 3), np.nan, dtype=np.float32), "NaN")
    rejected(pipe, np.zeros((8, 8, 2), dtype=np.uint8), "shape")
    rejected(pipe, np.zeros((8, 8), dtype=np.int64), "must be uint8, uint16 or float")


# ---- converted -------------------------------------------------------------------------------------------------

def test_cmyk_jpeg_converted(pipe, tmp_path):
    path = saved(picture().convert("CMYK"), tmp_path, "cmyk.jpg", quality=95)
    assert Image.open(path).mode == "CMYK"
    result = generate_with(pipe, path)
    init = np.asarray(result.inputs["init_image"], dtype=np.int16)
    assert result.inputs["init_image"].mode == "RGB" and init[10, 5, 0] > 150  # red stays red


def test_16_bit_png_converted(pipe, tmp_path):
    array = (np.linspace(0, 65535, 64 * 80).reshape(64, 80)).astype(np.uint16)
    path = saved(Image.fromarray(array), tmp_path, "deep.png")
    assert Image.open(path).mode in ("I;16", "I")
    result = generate_with(pipe, path)
    init = np.asarray(result.inputs["init_image"])
    assert init.dtype == np.uint8 and init[0, 0, 0] < 10 and init[-1, -1, 0] > 245  # full range kept


@pytest.mark.parametrize("mode", ["RGBA", "LA", "PA", "La", "RGBa"])
def test_alpha_composited_over_white(pipe, tmp_path, mode):
    rgba = picture().convert("RGBA")
    alpha = np.full((64, 80), 255, dtype=np.uint8)
    alpha[:, 40:] = 0  # right half transparent
    rgba.putalpha(Image.fromarray(alpha))
    image = rgba.convert(mode) if mode not in ("PA", "La") else (
        rgba.convert("LA").convert("La") if mode == "La" else rgba.convert("P").convert("PA"))
    source = image if mode in ("La", "RGBa", "PA") else saved(image, tmp_path, f"{mode}.png")
    result = generate_with(pipe, source)
    init = np.asarray(result.inputs["init_image"])
    assert init.shape == (64, 64, 3)
    assert init[:, -4:].min() >= 250  # the transparent part became white, not black


def test_palette_with_transparency_converted(pipe, tmp_path):
    image = picture().convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    image.info["transparency"] = 0
    path = saved(image, tmp_path, "palette.png", transparency=0)
    result = generate_with(pipe, path)
    assert result.inputs["init_image"].mode == "RGB"


@pytest.mark.parametrize("fmt", ["GIF", "PNG"], ids=["animated-gif", "apng"])
def test_animated_image_uses_first_frame(pipe, tmp_path, fmt):
    frames = [Image.new("RGB", (64, 64), color) for color in ((250, 0, 0), (0, 250, 0), (0, 0, 250))]
    path = tmp_path / f"anim.{fmt.lower()}"
    frames[0].save(path, format=fmt, save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert getattr(Image.open(path), "n_frames", 1) == 3
    result = generate_with(pipe, path)
    init = np.asarray(result.inputs["init_image"], dtype=np.int16)
    assert init[..., 0].mean() > 200 and init[..., 1].mean() < 30  # the red first frame


def test_mask_in_odd_modes(pipe, tmp_path, photo):
    rgba = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    rgba.paste((0, 0, 0, 255), (16, 16, 48, 48))
    deep = Image.fromarray((np.eye(64) * 65535).astype(np.uint16))
    for mask in (rgba, deep, Image.new("1", (64, 64), 1), saved(picture().convert("CMYK"), tmp_path, "m.jpg")):
        result = pipe.generate(init_image=photo, mask=mask, **SMALL)
        assert result.inputs["mask"].mode == "L"
    assert np.asarray(load_mask(rgba))[20, 20] == 255 and np.asarray(load_mask(rgba))[0, 0] == 0


def test_exif_rotation_applied(tmp_path):
    image = picture((80, 40))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees
    path = saved(image, tmp_path, "rotated.jpg", exif=exif.tobytes())
    assert load_rgb(path).size == (40, 80)


def test_pixel_limit_is_checked_before_decoding():
    """The declared size is compared to MAX_PIXELS before any pixel is decoded."""
    side = int(MAX_PIXELS ** 0.5) + 8
    with pytest.raises(sdcompose.ValidationError, match="the limit is|too many pixels"):
        load_rgb(bomb_png(side, side))
