"""The outputs folder: every image kept as it is made, and the history read back from it.

Layout, as AUTOMATIC1111 keeps it: ``ROOT/YYYY-MM-DD/NNNNN-SEED.png``, ``NNNNN`` counting up within
the day's folder. Each PNG is written whole under a hidden name, then linked to its final name, so a
reader never sees half a file; the number is picked and taken under a lock on the day folder's
``.lock`` file, so two writers (threads or processes) never take the same one.
The PNGs themselves are the history: nothing else is stored, so a restart, a copied folder or a
deleted file is simply what the next listing shows. Used by the web UI; any other front end (the
HTTP API, batch runs) saves through the same ``Outputs``.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import secrets
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdcompose.metadata import KEY, PNG_SIGNATURE, png_text, save_png

NAME = re.compile(r"(\d{5,})-(\d+)\.png")
GRID = re.compile(r"(\d{5,})-grid\.png")
DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
MAX_HEAD = 4 * 2**20  # the metadata chunk of one PNG; anything larger is not read for the history


def default_root() -> Path:
    """``$SDCOMPOSE_HOME/outputs``."""
    from sdcompose.pipelines.catalog import home
    return home() / "outputs"


@dataclass(frozen=True)
class Entry:
    """One kept image, as the history lists it."""

    path: Path
    prompt: str
    seed: int | None
    width: int | None
    height: int | None
    model: str


@dataclass(frozen=True)
class Page:
    entries: list[Entry]
    total: int  # matching images, all pages
    page: int  # 1-based, clamped to the pages there are
    pages: int


class Outputs:
    """Save results under ``root`` and list them back, newest first."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_root()
        self._heads: dict[Path, tuple[tuple[int, int], Entry | None]] = {}  # path -> ((mtime_ns, size), entry)

    # ---- saving -------------------------------------------------------------------------------
    def save(self, result: Any, when: float | None = None) -> list[Path]:
        """Write each image of ``result`` (an ``sdcompose.Result``) with its metadata; return the paths."""
        folder = self.root / time.strftime("%Y-%m-%d", time.localtime(when))
        folder.mkdir(parents=True, exist_ok=True)
        return [self._save_one(folder, image, meta, result.inputs)
                for image, meta in zip(result.images, result.per_image)]

    def save_grid(self, image: Any, meta: dict[str, Any], when: float | None = None) -> Path:
        """Write an X/Y/Z plot's grid image as ``ROOT/YYYY-MM-DD/grids/NNNNN-grid.png`` (not in the history: its
        cells are, each with its own metadata)."""
        folder = self.root / time.strftime("%Y-%m-%d", time.localtime(when)) / "grids"
        folder.mkdir(parents=True, exist_ok=True)
        return self._save_one(folder, image, meta, {}, "grid")

    def _save_one(self, folder: Path, image: Any, meta: dict[str, Any], inputs: dict[str, Any],
                  label: str | None = None) -> Path:
        hidden = save_png(image, meta, inputs, folder / f".{secrets.token_hex(8)}.png")
        try:
            with _locked(folder):  # the number is picked and taken under one lock, across threads and processes
                name = label or meta.get("seed", meta.get("task", "image"))  # an upscale has no seed
                target = folder / f"{self._scan_next(folder):05d}-{name}.png"
                os.link(hidden, target)  # fails if the name exists: never overwrites
            return target
        finally:
            hidden.unlink(missing_ok=True)

    @staticmethod
    def _scan_next(folder: Path) -> int:
        numbers = [int(m.group(1)) for p in folder.iterdir()
                   if (m := NAME.fullmatch(p.name) or GRID.fullmatch(p.name))]
        return max(numbers, default=0) + 1

    # ---- the history ----------------------------------------------------------------------------
    def files(self) -> list[Path]:
        """Every kept PNG, newest first (by day folder, then number)."""
        if not self.root.is_dir():
            return []
        days = sorted((d for d in self.root.iterdir() if DAY.fullmatch(d.name) and d.is_dir()), reverse=True)
        out = []
        for day in days:
            named = [(int(m.group(1)), p) for p in day.iterdir() if (m := NAME.fullmatch(p.name))]
            out += [p for _, p in sorted(named, reverse=True)]
        return out

    def history(self, search: str = "", page: int = 1, per_page: int = 24) -> Page:
        """One page of the kept images whose prompt contains ``search`` (any case), newest first."""
        needle = search.strip().lower()
        entries = [e for e in map(self.entry, self.files()) if e is not None and needle in e.prompt.lower()]
        pages = max(1, -(-len(entries) // per_page))
        page = min(max(1, int(page)), pages)
        return Page(entries[(page - 1) * per_page:page * per_page], len(entries), page, pages)

    def entry(self, path: Path) -> Entry | None:
        """What the history shows of one PNG (None: it carries no sdcompose metadata), read once per file version."""
        try:
            stat = path.stat()
        except OSError:
            return None
        version = (stat.st_mtime_ns, stat.st_size)
        cached = self._heads.get(path)
        if cached and cached[0] == version:
            return cached[1]
        entry = _read_entry(path)
        self._heads[path] = (version, entry)
        return entry


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """An exclusive lock on the day folder's ``.lock`` file (each holder opens its own, so threads exclude too)."""
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _read_entry(path: Path) -> Entry | None:
    meta = _head_metadata(path)
    request = meta.get("request") if isinstance(meta, dict) else None
    if not isinstance(request, dict):
        return None
    seed = meta.get("seed")

    def number(name: str) -> int | None:
        value = request.get(name)
        return value if isinstance(value, int) and not isinstance(value, bool) else None
    return Entry(path, str(request.get("prompt", "")), seed if isinstance(seed, int) else None,
                 number("width"), number("height"), str(request.get("model", "")))


def _head_metadata(path: Path) -> dict[str, Any] | None:
    """The ``sdcompose`` JSON of a PNG, reading only that chunk (the embedded inputs and pixels are skipped)."""
    try:
        with open(path, "rb") as f:
            if f.read(8) != PNG_SIGNATURE:
                return None
            while header := f.read(8):
                if len(header) < 8:
                    return None
                length, kind = struct.unpack(">I4s", header)
                if kind in (b"IDAT", b"IEND"):
                    return None
                if kind in (b"tEXt", b"zTXt", b"iTXt") and length <= MAX_HEAD:
                    body = f.read(length)
                    if body.partition(b"\0")[0] == KEY.encode():
                        chunk = header + body + b"\0\0\0\0"  # the CRC is not checked
                        text = png_text(PNG_SIGNATURE + chunk).get(KEY)
                        return json.loads(text) if text else None
                    f.seek(4, os.SEEK_CUR)
                else:
                    f.seek(length + 4, os.SEEK_CUR)
    except (OSError, ValueError, RecursionError):  # ValidationError is a ValueError: a damaged chunk
        return None
    return None
