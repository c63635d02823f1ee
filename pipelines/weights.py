"""Weight files judged by their content, never their name; sha256 with a size+mtime cache.

``inspect`` tells a safetensors file from a pickle, a zip checkpoint, a git-LFS
pointer or a truncated download without running any of it.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
import threading
from pathlib import Path

from sdcompose.errors import ModelError

REDOWNLOAD = "delete it and download it again"
_hash_lock = threading.Lock()


def inspect(path: Path) -> str:
    """Return 'safetensors', 'pickle' or 'zip' (torch checkpoint); raise ModelError for anything broken."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if head.startswith(b"version https://git-lfs") or (size < 1024 and b"git-lfs" in head + f.read(200)):
                raise ModelError(f"{path} is a git-LFS pointer, not the weights: fetch it with `git lfs pull` or {REDOWNLOAD}")
            if len(head) < 8:
                raise ModelError(f"{path} is empty or truncated ({size} bytes): {REDOWNLOAD}")
            if head[:4] == b"PK\x03\x04":
                return "zip"
            if head[0] == 0x80 and head[1] <= 5:
                return "pickle"
            (header_len,) = struct.unpack("<Q", head)
            if header_len > 100_000_000 or header_len + 8 > size:
                raise ModelError(f"{path} is not a valid .safetensors file (bad header): {REDOWNLOAD}")
            header = json.loads(f.read(header_len))
    except OSError as exc:
        raise ModelError(f"cannot read {path}: {exc.strerror}") from None
    except (ValueError, UnicodeDecodeError):
        raise ModelError(f"{path} is not a valid .safetensors file (unreadable header): {REDOWNLOAD}") from None
    if not isinstance(header, dict):
        raise ModelError(f"{path} is not a valid .safetensors file: {REDOWNLOAD}")
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)
               and isinstance(v.get("data_offsets"), list) and len(v["data_offsets"]) == 2), default=0)
    if 8 + header_len + end > size:
        raise ModelError(f"{path} is truncated ({size} of {8 + header_len + end} bytes): {REDOWNLOAD}")
    return "safetensors"


def require_safetensors(path: Path, allow_pickle: bool = False) -> str:
    """Refuse pickled weights unless the model's entry opts in; return the detected format."""
    kind = inspect(path)
    if kind != "safetensors" and not allow_pickle:
        raise ModelError(f"{path} holds pickled weights ({kind}), which can run code when loaded; "
                         "use a .safetensors file, or set `allow_pickle: true` on this model in models.yaml "
                         "to load it weights-only")
    return kind


def _cache_file() -> Path:
    from sdcompose.pipelines.catalog import home
    return home() / "sha256.json"


def sha256(path: Path) -> str:
    """sha256 of a file, cached by (path, size, mtime) so a large model is hashed once."""
    path = path.resolve()
    st = path.stat()
    key = f"{path}|{st.st_size}|{st.st_mtime_ns}"
    cache_path = _cache_file()
    with _hash_lock:
        try:
            cache = json.loads(cache_path.read_text())
        except (OSError, ValueError):
            cache = {}
        if key in cache:
            return cache[key]
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    value = digest.hexdigest()
    with _hash_lock:
        try:
            cache = json.loads(cache_path.read_text())
        except (OSError, ValueError):
            cache = {}
        cache[key] = value
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps(cache))
        os.replace(tmp, cache_path)
    return value


def verify(path: Path, expected: str | None) -> str:
    """Hash ``path``; raise ModelError when it differs from ``expected``."""
    actual = sha256(path)
    if expected and actual != expected:
        raise ModelError(f"{path} has sha256 {actual[:12]}..., models.yaml expects {expected[:12]}...: "
                         f"the file is corrupt or a different version; {REDOWNLOAD}")
    return actual


def weight_files(folder: Path) -> list[Path]:
    """Every weight file under a model folder, sorted, for hashing and safety checks."""
    suffixes = {".safetensors", ".bin", ".ckpt", ".pt", ".pth"}
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in suffixes)
