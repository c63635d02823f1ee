"""Hand-built PNGs with arbitrary text chunks, for metadata parsing tests."""
from __future__ import annotations

import io
import struct
import zlib

from PIL import Image


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_with(*chunks: bytes) -> bytes:
    """A valid 1x1 PNG with the given chunks placed before the pixels (right after IHDR)."""
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buffer, format="PNG")
    data = buffer.getvalue()
    ihdr_end = 8 + 25
    return data[:ihdr_end] + b"".join(chunks) + data[ihdr_end:]
