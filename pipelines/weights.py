"""Weight files judged by their content, never their name; sha256 with a size+mtime cache.

``inspect`` tells a safetensors file from a pickle, a zip checkpoint, a git-LFS
pointer or a truncated download without running any of it.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import threading
from pathlib import Path

from sdcompose.errors import ModelError

REDOWNLOAD = "delete it and download it again"
_hash_lock = threading.Lock()


def inspect(path: Path) -> str:
    """Return 'safetensors', 'pickle' or 'zip' (torch checkpoint); raise ModelError for anything broken.

    Reads only the first bytes and the safetensors header; nothing in the file is executed.
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(256)
    except OSError as exc:
        raise ModelError(f"cannot read {path}: {exc.strerror}") from None
    if b"git-lfs" in head[:64] and head.startswith(b"version "):
        raise ModelError(f"{path} is a git-LFS pointer, not the weights: fetch it with `git lfs pull` or {REDOWNLOAD}")
    if len(head) < 8:
        raise ModelError(f"{path} is empty or truncated ({size} bytes): {REDOWNLOAD}")
    if head[:4] == b"PK\x03\x04":
        return "zip"
    if head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pickle"
    (header_len,) = struct.unpack("<Q", head[:8])
    if header_len < 2 or header_len > 100_000_000 or head[8:9] != b"{":
        raise ModelError(f"{path} is neither a .safetensors file nor a torch checkpoint (unknown content): "
                         f"{REDOWNLOAD}")
    if header_len + 8 > size:
        raise ModelError(f"{path} is truncated ({size} bytes, its header alone needs {header_len + 8}): {REDOWNLOAD}")
    try:
        with open(path, "rb") as f:
            f.seek(8)
            header = json.loads(f.read(header_len))
    except OSError as exc:
        raise ModelError(f"cannot read {path}: {exc.strerror}") from None
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ModelError(f"{path} is not a valid .safetensors file (unreadable header): {REDOWNLOAD}") from None
    if not isinstance(header, dict):
        raise ModelError(f"{path} is not a valid .safetensors file (bad header): {REDOWNLOAD}")
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)
                and 0 <= offsets[0] <= offsets[1]):
            raise ModelError(f"{path} is not a valid .safetensors file (tensor {str(name)[:80]!r} has bad offsets): "
                             f"{REDOWNLOAD}")
        end = max(end, offsets[1])
    if 8 + header_len + end > size:
        raise ModelError(f"{path} is truncated ({size} of {8 + header_len + end} bytes): {REDOWNLOAD}")
    _check_with_safetensors(path)
    return "safetensors"


def _check_with_safetensors(path: Path) -> None:
    """The safetensors library's own header checks (dtypes, shapes, offsets cover the file exactly)."""
    from safetensors import SafetensorError, safe_open
    try:
        with safe_open(str(path), framework="np"):
            pass
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelError(f"{path} is not a valid .safetensors file ({str(exc)[:200]}): {REDOWNLOAD}") from None


def require_safetensors(path: Path, allow_pickle: bool = False) -> str:
    """Refuse pickled weights unless the model's entry opts in; return the detected format."""
    kind = inspect(path)
    if kind != "safetensors" and not allow_pickle:
        raise ModelError(f"{path} holds pickled weights ({kind}), which can run code when loaded; "
                         "use a .safetensors file, or set `allow_pickle: true` on this model in models.yaml "
                         "to load it weights-only")
    if kind != "safetensors":
        _weights_only(path, kind)
    return kind


_plain_pickles: set[tuple] = set()  # files that passed _weights_only, by (path, size, mtime, inode, ctime)


def _weights_only(path: Path, kind: str) -> None:
    """Refuse an opted-in pickle that holds more than tensors, before diffusers or a plugin sees it.

    Loading is weights-only everywhere (torch's restricted unpickler); this check only turns its
    refusal into a sentence. Zip checkpoints are disassembled without running anything; a legacy
    pickle is test-loaded weights-only. Nothing in the file is ever executed.
    """
    import torch
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
    if key in _plain_pickles:
        return
    try:
        if kind == "zip":
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        else:
            torch.load(str(path), map_location="cpu", weights_only=True)
            unsafe = []
    except Exception as exc:  # UnpicklingError from the restricted unpickler, or a damaged file
        found = re.findall(r"GLOBAL ([\w.]+)", str(exc))
        unsafe = found or [f"unreadable: {type(exc).__name__}"]
    if unsafe:
        raise ModelError(f"{path} is a pickle that is not plain weights ({', '.join(unsafe[:5])}); weights-only "
                         "loading refuses it because it could run code: do not use this file, get a .safetensors one")
    _plain_pickles.add(key)


def _cache_file() -> Path:
    from sdcompose.pipelines.catalog import home
    return home() / "sha256.json"


def _read_cache(cache_path: Path) -> dict[str, str]:
    try:
        cache = json.loads(cache_path.read_text())
    except (OSError, ValueError, RecursionError):
        return {}
    return cache if isinstance(cache, dict) else {}


def sha256(path: Path) -> str:
    """sha256 of a file, cached by (path, size, mtime) so a large model is hashed once.

    A changed file is hashed again: the key also holds the inode and ctime, which every write,
    copy or ``touch -d`` changes, so even a same-size rewrite with its old mtime put back is
    noticed. A file that changes while it is being hashed is not cached. The cache records
    contents, never a verdict: ``verify`` compares against models.yaml every time.
    """
    path = path.resolve()
    st = path.stat()
    prefix = f"{path}|"
    key = f"{prefix}{st.st_size}|{st.st_mtime_ns}|{st.st_ino}|{st.st_ctime_ns}"
    cache_path = _cache_file()
    with _hash_lock:
        cached = _read_cache(cache_path).get(key)
    if isinstance(cached, str) and len(cached) == 64:
        return cached
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    value = digest.hexdigest()
    after = path.stat()
    if (after.st_size, after.st_mtime_ns, after.st_ctime_ns) != (st.st_size, st.st_mtime_ns, st.st_ctime_ns):
        return value  # written to while hashed: report, but do not remember
    with _hash_lock:
        cache = {k: v for k, v in _read_cache(cache_path).items() if not k.startswith(prefix)}
        cache[key] = value
        try:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
            tmp.write_text(json.dumps(cache))
            os.replace(tmp, cache_path)
        except OSError:
            pass  # a read-only home only costs a re-hash next time
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
