"""Writing output files whole or not at all: a unique temporary file beside the target, then an atomic rename."""
from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import BinaryIO, Callable


def write_atomically(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(file)`` on a new temporary file beside ``path``, then rename it to ``path``.

    Each call has its own temporary file, so two writers to one path never share one: the path holds
    one writer's whole file, never a mix. On any error (a full disk, an interrupt) the temporary file
    is removed and ``path`` is left as it was.
    """
    path = Path(path)
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.partial")
        try:
            file = open(tmp, "xb")  # x: never an existing file (or a link someone placed there)
            break
        except FileExistsError:
            continue
    try:
        with file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
