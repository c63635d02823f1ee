"""The control-map cache on disk (``$SDCOMPOSE_HOME/control-maps``): a detector's map kept between processes.

Each map is one PNG named by its key, a sha256 of everything the map depends on (``disk_key``: the input's
content, the plugin and its version, its params, the output size, the device and dtype, the annotator weights'
identity), so a changed param is a different file and is never served for another. A file is written whole
under a unique hidden name and renamed (``write_atomic``); its pixels' sha256 rides in a text chunk and is
checked on every read, so a corrupt or truncated file is a miss (and is written again), never an error.
The folder is kept under a size bound: after each write the least recently used files go (a hit touches its
file). Settings: ``SDCOMPOSE_MAP_CACHE`` (the folder, or ``off``), ``SDCOMPOSE_MAP_CACHE_MB`` (the bound).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from io import BytesIO
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin

from sdcompose.images import MAX_PIXELS
from sdcompose.metadata import write_atomic

OURS = re.compile(r"\.?[0-9a-f]{64}\.png(\..*\.partial)?")  # a map, or one being written: nothing else is ever removed
FORMAT = 1  # bump when what a file holds or how its key is made changes: old files are then simply not found
DIGEST = "sdcompose-map-sha256"  # the text chunk holding the pixels' sha256
SUFFIX = ".png"


def disk_key(memory_key: str, plugin: Any, size: tuple[int, int] | None, device: str, dtype: Any,
             annotators: Mapping[str, Any]) -> str:
    """The file key of a map: its in-memory key (the plugin id, params and input's content) plus what else
    the same input and params could still differ by between processes."""
    cls = type(plugin)
    parts = [FORMAT, memory_key, f"{cls.__module__}.{cls.__qualname__}", str(getattr(plugin, "version", "")),
             str(getattr(plugin, "api_version", "")), list(size) if size else None, str(device).split(":")[0],
             str(dtype), sorted(annotators.items())]
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


class MapCache:
    """Control maps on disk under ``folder``, at most ``limit`` bytes in all; ``folder=None`` keeps none."""

    def __init__(self, folder: Path | None, limit: int) -> None:
        self.folder = folder if folder is not None and limit > 0 else None
        self.limit = limit

    def get(self, key: str) -> Image.Image | None:
        """The map stored under ``key``, or None when there is none or its file is unreadable or damaged."""
        if self.folder is None:
            return None
        path = self.folder / (key + SUFFIX)
        try:
            with Image.open(path, formats=["PNG"]) as file:
                if file.width * file.height > MAX_PIXELS or file.mode != "RGB":
                    return None
                file.load()
                image = file.copy()
                info = dict(file.info)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):  # missing, truncated, not a PNG
            return None
        if info.pop(DIGEST, None) != hashlib.sha256(image.tobytes()).hexdigest():
            return None
        image.info = {k: v for k, v in info.items() if isinstance(v, str)}
        try:
            os.utime(path)  # used now: the last to be evicted
        except OSError:
            pass
        return image

    def put(self, key: str, image: Image.Image) -> None:
        """Store ``image`` (8-bit RGB) under ``key`` with its text ``info``, then trim the folder to the bound.
        A map larger than the bound is not kept; a folder that cannot be written only means no caching."""
        if self.folder is None:
            return
        chunks = PngImagePlugin.PngInfo()
        for name, value in image.info.items():
            if isinstance(name, str) and isinstance(value, str) and name != DIGEST:
                chunks.add_itxt(name, value)
        chunks.add_text(DIGEST, hashlib.sha256(image.tobytes()).hexdigest())
        buffer = BytesIO()
        image.save(buffer, format="PNG", pnginfo=chunks, compress_level=1)
        if buffer.tell() > self.limit:  # larger than the whole bound: not kept
            return
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            write_atomic(self.folder / (key + SUFFIX), buffer.getvalue())
        except OSError:
            return
        self.trim()

    def trim(self) -> None:
        """Remove the least recently used maps until they take at most ``limit`` bytes (other files in the
        folder are neither counted nor touched)."""
        files = []
        try:
            with os.scandir(self.folder) as entries:
                for entry in entries:
                    try:
                        if OURS.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                            stat = entry.stat(follow_symlinks=False)
                            files.append((stat.st_mtime_ns, stat.st_size, entry.path))
                    except OSError:  # removed meanwhile by another process
                        continue
        except OSError:
            return
        total = sum(size for _, size, _ in files)
        for _, size, path in sorted(files):
            if total <= self.limit:
                break
            Path(path).unlink(missing_ok=True)
            total -= size


def annotator_identity(catalog: Any, ids: Mapping[str, str]) -> dict[str, Any]:
    """What names each annotator's weights (declared id -> the entry's source, revision and sha256), without
    fetching them: a changed pin or file is a different key."""
    out: dict[str, Any] = {}
    for declared, model_id in ids.items():
        entry = catalog.entries.get(model_id)
        if entry is None:
            out[declared] = None
            continue
        where = entry.path or entry.found
        stamp = None
        if where and not entry.sha256:
            try:
                stat = Path(where).stat()
                stamp = [stat.st_size, stat.st_mtime_ns]
            except OSError:
                stamp = None
        out[declared] = [model_id, entry.repo, entry.revision, entry.subfolder, entry.filename, where, entry.file,
                         entry.sha256, entry.tiny, stamp]
    return out
