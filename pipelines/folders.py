"""Model folders indexed in place: an AUTOMATIC1111 or ComfyUI tree, or any folder of ``.safetensors``.

Nothing is copied, linked or loaded: each file's kind and family come from its header
(``header.py``), its id from its file name. Symlinks are never followed out of the folder,
symlinked sub-folders are not entered, and the walk is bounded in depth and file count. A
file that cannot be used is listed with the reason, never guessed at.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from sdcompose.pipelines import families
from sdcompose.pipelines import header as headers

# The sub-folders each tool keeps its models in, and the kind it expects there.
TREES = {
    "AUTOMATIC1111": {"models/Stable-diffusion": "base", "models/Lora": "lora", "models/LyCORIS": "lora",
                      "models/ControlNet": "controlnet", "embeddings": "embedding"},
    "ComfyUI": {"models/checkpoints": "base", "models/loras": "lora", "models/controlnet": "controlnet",
                "models/embeddings": "embedding"},
}
PICKLES = {".ckpt", ".pt", ".pth", ".bin"}
MAX_FILES = 50_000  # entries looked at per folder; a tree with more is indexed up to here and says so
MAX_DEPTH = 8


@dataclass
class Found:
    """One model file of a scanned folder; ``status`` is "ok" or why it cannot be used."""

    path: Path  # where it is (inside the scanned folder)
    relative: str  # from the scanned folder, with '/'
    name: str  # the file name without its extension, as AUTOMATIC1111 names it
    kind: str | None
    family: str | None
    why: str
    status: str = "ok"
    id: str = ""
    config: str | Path | None = None  # a family's shipped config name or a config folder beside the file
    stamp: tuple = ()
    root: Path | None = None  # the scanned folder
    inner: str = ""  # from its tool's sub-folder, without the extension ("styles/fresh"): AUTOMATIC1111's name

    def names(self) -> tuple[str, ...]:
        """Every name an AUTOMATIC1111 infotext or prompt may use for this file."""
        return self.name, self.inner, self.relative, self.relative.rsplit(".", 1)[0]

    def row(self) -> dict:
        return {"id": self.id, "kind": self.kind, "family": self.family, "file": self.relative,
                "status": self.status, "why": self.why}


@dataclass
class Scan:
    folder: Path
    tree: str  # AUTOMATIC1111, ComfyUI or folder
    found: list[Found] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (relative path, reason)


def layout(folder: Path) -> tuple[str, dict[str, str | None]]:
    """Which tool's tree ``folder`` is (or its ``models/`` folder), and the sub-folders to scan."""
    for tree, subfolders in TREES.items():
        for prefix in ("", "models/"):
            present = {sub: kind for sub, kind in subfolders.items()
                       if sub.startswith(prefix) and (folder / sub.removeprefix(prefix)).is_dir()
                       and not (folder / sub.removeprefix(prefix)).is_symlink()}
            if any(kind == "base" for kind in present.values()):
                return tree, {sub.removeprefix(prefix): kind for sub, kind in present.items()}
    return "folder", {"": None}


def _walk(root: Path, start: Path, scan: Scan, budget: list[int]) -> list[Path]:
    """Model-looking files under ``start``, not following symlinks out of ``root``."""
    out: list[Path] = []
    stack = [(start, 0)]
    while stack:
        folder, depth = stack.pop()
        try:
            with os.scandir(folder) as it:
                items = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            scan.skipped.append((_rel(root, Path(folder)), f"folder cannot be read ({exc.strerror})"))
            continue
        for item in items:
            if budget[0] <= 0:
                scan.skipped.append((_rel(root, Path(folder)), f"stopped after {MAX_FILES} entries"))
                return out
            budget[0] -= 1
            path = Path(item.path)
            if item.name.startswith("."):
                continue
            try:
                if item.is_symlink():
                    target = path.resolve()
                    if not target.is_relative_to(root):
                        scan.skipped.append((_rel(root, path), f"a symlink out of the folder (to {target}), not followed"))
                        continue
                    if target.is_dir():
                        scan.skipped.append((_rel(root, path), "a symlinked folder, not entered"))
                        continue
                    if target.is_file():
                        out.append(path)
                elif item.is_dir(follow_symlinks=False):
                    if depth + 1 >= MAX_DEPTH:
                        scan.skipped.append((_rel(root, path), f"deeper than {MAX_DEPTH} folders, not entered"))
                    else:
                        stack.append((path, depth + 1))
                elif item.is_file(follow_symlinks=False):
                    out.append(path)
            except (OSError, RuntimeError) as exc:
                scan.skipped.append((_rel(root, path), f"cannot be read ({getattr(exc, 'strerror', None) or exc})"))
    return out


def _rel(root: Path, path: Path) -> str:
    try:
        return path.relative_to(root).as_posix() or "."
    except ValueError:
        return str(path)


def _stamp(path: Path) -> tuple:
    st = path.stat()
    return st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns


def _sidecar(path: Path, kind: str, root: Path) -> Path | None:
    """A diffusers config folder beside a checkpoint (``name/`` next to ``name.safetensors``)."""
    folder = path.with_suffix("")
    if folder.is_symlink() or not folder.is_dir() or not folder.resolve().is_relative_to(root):
        return None
    marker = ("model_index.json",) if kind == "base" else ("config.json", "unet/config.json")
    return folder if any((folder / m).is_file() for m in marker) else None


def inspect(path: Path, root: Path, expected: str | None, cache: dict | None = None) -> Found:
    """One file's entry, from its header only (``cache``: path -> Found, reused while the file's stamp holds)."""
    relative = _rel(root, path)
    stem = path.name[: -len(path.suffix)] if path.suffix else path.name
    try:
        stamp = _stamp(path)
    except OSError as exc:
        return Found(path, relative, stem, None, None, "", f"cannot be read ({exc.strerror})")
    previous = (cache or {}).get(str(path))
    if previous is not None and previous.stamp == stamp:
        return previous
    if path.suffix.lower() in PICKLES:
        return Found(path, relative, stem, None, None, "", f"pickled weights ({path.suffix}), which can run code "
                     "when loaded: not indexed; convert it to .safetensors", stamp=stamp)
    try:
        verdict = headers.classify(headers.read_header(path.resolve()))
    except headers.HeaderError as exc:
        return Found(path, relative, stem, None, None, "", f"not used: the file {exc}", stamp=stamp)
    found = Found(path, relative, stem, verdict.kind, verdict.family, verdict.why, stamp=stamp)
    if verdict.kind is None:
        found.status = f"not a model this project uses ({verdict.why})"
    elif verdict.family is None:
        found.status = f"family unknown ({verdict.why}); add it to models.yaml with its family to use it"
    elif not verdict.supported:
        found.status = f"unsupported family {verdict.family} ({verdict.why}); sdcompose runs {' and '.join(families.names())}"
    elif verdict.kind in ("base", "controlnet"):
        found.config = _sidecar(path, verdict.kind, root) or (verdict.family if verdict.standard else None)
        if found.config is None:
            found.status = (f"its shapes are not the standard {verdict.family} ones; put a diffusers config "
                            f"folder beside it at {_rel(root, path.with_suffix(''))}/")
    if found.status == "ok" and expected is not None and verdict.kind != expected:
        found.why += f"; found in a {expected} folder"
    return found


def scan(folder: Path | str, cache: dict | None = None) -> Scan:
    """Index ``folder`` (an AUTOMATIC1111 or ComfyUI tree, or any folder); ids are not assigned yet."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise NotADirectoryError("it is not a folder")
    root = root.resolve()
    tree, subfolders = layout(root)
    result = Scan(root, tree)
    budget = [MAX_FILES]
    for sub, expected in subfolders.items():
        for path in _walk(root, root / sub if sub else root, result, budget):
            if path.suffix.lower() not in PICKLES and path.suffix.lower() != ".safetensors":
                continue
            found = inspect(path, root, expected, cache)
            found.root = root
            found.inner = _rel(root / sub, path).rsplit(".", 1)[0] if sub else found.relative.rsplit(".", 1)[0]
            if cache is not None:
                cache[str(path)] = found
            result.found.append(found)
    return result


def model_id(name: str) -> str:
    """A catalogue id from a file name: letters, digits, '.', '_' and '-', at most 100."""
    cleaned = re.sub(r"[^\w.-]+", "_", name, flags=re.ASCII).strip("._-") or "model"
    return cleaned[:100]


def assign_ids(scans: list[Scan], taken: set[str]) -> None:
    """Give every usable file an id from its name; a name already taken gets ``-2``, ``-3``..."""
    used = set(taken)
    for result in scans:
        for found in result.found:
            if found.status != "ok":
                continue
            base = model_id(found.name)
            candidate, n = base, 1
            while candidate in used:
                n += 1
                candidate = f"{base[:96]}-{n}"
            found.id = candidate
            used.add(candidate)


class FolderIndex:
    """The usable files of a list of model folders by id, rescanned on demand; headers are read
    again only for files whose size, mtime, inode or ctime changed."""

    def __init__(self, folders: list[Path]) -> None:
        self.folders = list(folders)
        self.roots: list[Path] = []
        self.scans: list[Scan] = []
        self.by_id: dict[str, Found] = {}
        self._cache: dict[str, Found] = {}
        self._hashes: dict[str, tuple[tuple, set[str]]] = {}

    def rescan(self, taken: set[str]) -> None:
        from sdcompose.errors import ModelError
        scans = []
        for folder in self.folders:
            try:
                scans.append(scan(folder, self._cache))
            except OSError as exc:
                raise ModelError(f"model folder {folder} cannot be scanned ({exc}): fix the path (in "
                                 "`folders:` in models.yaml, or --folder)") from None
        assign_ids(scans, taken)
        self.scans, self.roots = scans, [s.folder for s in scans]
        self.by_id = {f.id: f for s in scans for f in s.found if f.status == "ok"}

    def matches(self, model_id: str, short: str) -> bool:
        """Whether ``short`` is one of the file's AUTOMATIC1111 hashes (see ``hashes``)."""
        full, legacy, addnet = self.hashes(model_id)
        return full.startswith(short) or short == legacy or (addnet is not None and addnet.startswith(short))

    def hashes(self, model_id: str) -> tuple[str, str, str | None]:
        """(sha256, old 8-digit model hash, LoRA tensor-data sha256 or None), computed once per file version."""
        from sdcompose.pipelines import weights
        found = self.by_id[model_id]
        memo = self._hashes.get(str(found.path))
        if memo is not None and memo[0] == found.stamp:
            return memo[1]
        path = found.path.resolve()
        values = (weights.sha256(path), legacy_hash(path), tensor_data_hash(path) if found.kind == "lora" else None)
        self._hashes[str(found.path)] = (found.stamp, values)
        return values


def legacy_hash(path: Path) -> str:
    """AUTOMATIC1111's first ``model hash``: sha256 of the 64 KiB at 1 MiB into the file, 8 digits."""
    import hashlib
    with open(path, "rb") as f:
        f.seek(0x100000)
        return hashlib.sha256(f.read(0x10000)).hexdigest()[:8]


def tensor_data_hash(path: Path) -> str:
    """sha256 of a safetensors file's tensor data (after its header): what AUTOMATIC1111 records for LoRAs."""
    import hashlib
    import struct
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        f.seek(8 + length)
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
