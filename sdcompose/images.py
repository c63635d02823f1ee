"""Images from users, decoded safely: pixel caps before decoding, every mode converted, never a crash.

Every image sdcompose decodes from bytes goes through ``open_image``, which checks the declared size
against three limits before a pixel is decoded: MAX_PIXELS for one image, and each active
``pixel_budget`` (one per request, one per PNG's embedded inputs) for all images together.
"""
from __future__ import annotations

import contextvars
import io
import os
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from sdcompose.errors import ValidationError, quote

MAX_PIXELS = 8192 * 8192
REQUEST_PIXELS = 2 * MAX_PIXELS  # decoded pixels of all images of one request (or one PNG's inputs) together
MAX_BYTES = 64 * 1024 * 1024
# Only these decoders see user bytes: no EPS (runs Ghostscript), no rarely used, rarely audited formats.
FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")  # JPEG covers MPO (phone photos)


class PixelBudget:
    """Decoded pixels left to a request (or to one PNG's embedded inputs)."""

    def __init__(self, what: str, limit: int = REQUEST_PIXELS) -> None:
        self.what, self.limit, self.used = what, limit, 0

    def charge(self, pixels: int, image: str) -> None:
        if self.used + pixels > self.limit:
            raise ValidationError(f"{image} would take the decoded images of {self.what} past {self.limit} pixels "
                                  f"({self.used} already): use fewer or smaller images")
        self.used += pixels


_budgets: contextvars.ContextVar[tuple[PixelBudget, ...]] = contextvars.ContextVar("sdcompose_pixel_budgets",
                                                                                    default=())


@contextmanager
def pixel_budget(budget: PixelBudget | str) -> Iterator[PixelBudget]:
    """Charge every image ``open_image`` decodes inside the block to ``budget`` (and to the budgets already active)."""
    if isinstance(budget, str):
        budget = PixelBudget(budget)
    active = _budgets.get()
    token = _budgets.set(active if budget in active else active + (budget,))
    try:
        yield budget
    finally:
        _budgets.reset(token)


class Deferred:
    """An image decoded only when a request uses it (an embedded input of a PNG): ``open_image`` calls ``load``."""

    def __init__(self, load: Callable[[], Image.Image], name: str) -> None:
        self.load, self.name = load, name

    def __repr__(self) -> str:
        return f"<{self.name}, not decoded>"


def open_image(source: Any, what: str = "image") -> Image.Image:
    """Decode ``source`` (path, bytes, PIL image, array or Deferred) into an image in its own mode, first frame only."""
    if isinstance(source, Deferred):
        return source.load()  # decoded, checked and charged to the budgets by open_image
    if isinstance(source, Image.Image):
        image = source
    elif isinstance(source, np.ndarray):
        return _from_array(source, what)
    else:
        data = _read_bytes(source, what)
        try:
            image = Image.open(io.BytesIO(data), formats=FORMATS)
        except Image.DecompressionBombError:
            raise ValidationError(f"{what} declares too many pixels (a decompression bomb?)") from None
        except UnidentifiedImageError:
            raise ValidationError(f"{what} is not an image in a supported format "
                                  f"({', '.join(FORMATS)})") from None
        except Exception as exc:  # any decoder failure on untrusted bytes is the input's fault
            raise ValidationError(f"{what} is damaged and cannot be read ({type(exc).__name__})") from None
    width, height = image.size
    if width < 1 or height < 1 or width * height > MAX_PIXELS:
        raise ValidationError(f"{what} is {width}x{height}; the limit is {MAX_PIXELS} pixels")
    if image is not source:  # decoded from bytes here (a PIL image passed in is the caller's own)
        for budget in _budgets.get():
            budget.charge(width * height, f"{what} ({width}x{height})")
    try:
        # Only the first frame is decoded; open() is already there. The frame count is never asked for:
        # Pillow finds it by walking every frame (a TIFF's directory chain, in quadratic time).
        image.load()
        if image.size != (width, height) or image.size[0] * image.size[1] > MAX_PIXELS:
            raise ValueError("its size changed while decoding")
        image = ImageOps.exif_transpose(image) if image.mode not in ("I", "I;16", "F") else image
    except MemoryError:
        raise ValidationError(f"{what} is too large to decode") from None
    except Exception as exc:  # truncated data, bad EXIF, decoder errors: the input's fault, never a crash
        raise ValidationError(f"{what} is damaged and cannot be decoded: {str(exc)[:200]}") from None
    return image


def _read_bytes(source: Any, what: str) -> bytes:
    if isinstance(source, (bytes, bytearray)):
        data = bytes(source)
    elif isinstance(source, (str, Path)):
        path = Path(source)
        try:
            data = read_file(path, what)
        except FileNotFoundError:
            raise ValidationError(f"{what} {quote(str(path))} does not exist") from None
        except OSError as exc:
            raise ValidationError(f"cannot read {what} {quote(str(path))}: {exc.strerror}") from None
    else:
        raise ValidationError(f"{what} must be a path, bytes, PIL image or numpy array, got {type(source).__name__}")
    if len(data) > MAX_BYTES:
        raise ValidationError(f"{what} is larger than {MAX_BYTES // 2**20} MB")
    return data


def read_file(path: Path, what: str, limit: int = MAX_BYTES) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes; a device, FIFO or folder is refused unopened."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO opens without waiting for a writer
    with os.fdopen(fd, "rb") as file:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValidationError(f"{what} {quote(str(path))} is not a regular file")
        data = file.read(limit + 1)  # bounded even if the file grows, or its size lies
    if len(data) > limit:
        raise ValidationError(f"{what} {quote(str(path))} is larger than {limit // 2**20} MB")
    return data


def _from_array(array: np.ndarray, what: str) -> Image.Image:
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise ValidationError(f"{what} array must be HxW, HxWx1, HxWx3 or HxWx4, got shape {array.shape}")
    if array.size == 0 or array.shape[0] * array.shape[1] > MAX_PIXELS:
        raise ValidationError(f"{what} array has shape {array.shape}; the limit is {MAX_PIXELS} pixels")
    if array.dtype.kind == "f":
        if not np.isfinite(array).all():
            raise ValidationError(f"{what} array contains NaN or infinity")
        array = (np.clip(array, 0, 1) * 255).round().astype(np.uint8)
    elif array.dtype == np.uint16:
        return Image.fromarray(array.squeeze() if array.ndim == 3 else array, mode="I;16")
    elif array.dtype != np.uint8:
        raise ValidationError(f"{what} array must be uint8, uint16 or float in [0, 1], got {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    return Image.fromarray(array)


def to_rgb(image: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """8-bit RGB: alpha composited over ``background``, palette/CMYK/16-bit/float converted."""
    if image.mode == "RGB":
        return image
    try:
        return _to_rgb(image, background)
    except (ValueError, OSError, TypeError) as exc:
        raise ValidationError(f"an image in mode {image.mode} cannot be converted to RGB: {exc}") from None


def _to_rgb(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        array = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        peak = 65535.0 if array.max(initial=0) > 255 else 255.0
        return Image.fromarray((np.clip(array / peak, 0, 1) * 255).round().astype(np.uint8)).convert("RGB")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode == "La":  # premultiplied alpha: PIL only un-premultiplies it to LA
        image = image.convert("LA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa"):
        image = image.convert("RGBA")
        canvas = Image.new("RGBA", image.size, background + (255,))
        return Image.alpha_composite(canvas, image).convert("RGB")
    return image.convert("RGB")


def load_rgb(source: Any, what: str = "image") -> Image.Image:
    return to_rgb(open_image(source, what))


def load_mask(source: Any, what: str = "mask") -> Image.Image:
    """A mask as 8-bit L, white = repaint. An RGBA mask uses its alpha if the colours are flat."""
    image = open_image(source, what)
    if image.mode in ("RGBA", "LA") and all(low == high for low, high in image.convert("RGB").getextrema()):
        return image.getchannel("A")
    return to_rgb(image).convert("L")


def fit(image: Image.Image, width: int, height: int, mode: str) -> Image.Image:
    """Size ``image`` to width x height: just_resize, crop_and_resize (fill then crop) or resize_and_fill (fit then pad)."""
    if image.size == (width, height):
        return image
    if mode == "just_resize":
        return image.resize((width, height), Image.LANCZOS)
    if mode == "crop_and_resize":
        return ImageOps.fit(image, (width, height), Image.LANCZOS)
    inner = ImageOps.contain(image, (width, height), Image.LANCZOS)
    canvas = Image.new(image.mode, (width, height))
    canvas.paste(inner, ((width - inner.width) // 2, (height - inner.height) // 2))
    return canvas
