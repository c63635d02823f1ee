"""models.yaml: the catalogue of base models, ControlNets, LoRAs and annotator weights.

Pure data, read with ``yaml.safe_load`` rules (no tags that build objects) and
validated with pydantic; errors name the file, the line and the key. A user file
overlays the shipped one entry by entry. Local paths resolve under the models
root and may not escape it (``..``, absolute paths, symlinks out).
"""
from __future__ import annotations

import importlib.util
import os
import re
import warnings
from importlib import resources
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator,
                      model_validator)

from sdcompose.errors import CatalogError, ModelError, first_line, suggest
from sdcompose.pipelines import families
from sdcompose.pipelines.folders import FolderIndex
from sdcompose.settings import Settings

SHIPPED = Path(str(resources.files("sdcompose") / "models.yaml"))  # the repo's models.yaml, packaged with sdcompose
CONFIGS = Path(__file__).resolve().parent / "configs"


MODELS_GROUP = "sdcompose.models"  # entry points naming a plugin package whose folder holds a models.yaml


def plugin_catalogs() -> list[tuple[Path, Path]]:
    """(models.yaml, package folder) of every installed package that ships catalogue entries, found through
    entry points in MODELS_GROUP without importing the package; sorted by entry-point name."""
    found = []
    for ep in sorted(entry_points(group=MODELS_GROUP), key=lambda e: (e.name, e.value)):
        try:
            spec = importlib.util.find_spec(ep.module)
        except (ImportError, ValueError):
            spec = None
        folders = list(spec.submodule_search_locations or ()) if spec is not None else []
        if not folders or not (Path(folders[0]) / "models.yaml").is_file():
            warnings.warn(f"entry point {ep.name} = {ep.value!r} in {MODELS_GROUP} names no package folder holding "
                          "a models.yaml; skipped", UserWarning, stacklevel=3)
            continue
        root = Path(folders[0]).resolve()
        found.append((root / "models.yaml", root))
    return found


def home() -> Path:
    return Settings.from_env().home


def user_catalog() -> Path:
    return Settings.from_env().user_models


class Recommended(BaseModel):
    """Settings a model works best with (few-step LoRAs and bases: LCM, TCD, Lightning, Hyper-SD); the UI applies them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    steps: int | None = Field(default=None, ge=1, le=500)
    guidance: float | None = Field(default=None, ge=0, le=50)
    sampler: str | None = Field(default=None, pattern=r"^[\w .+-]{1,40}$")


class Entry(BaseModel):
    """One model. Exactly one source: ``repo`` (+ pinned ``revision``), ``path``, ``file`` or ``tiny``
    (or ``found``: a file a folder scan indexed in place, never written in models.yaml)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = ""
    kind: Literal["base", "controlnet", "lora", "annotator", "embedding", "upscaler", "ip_adapter", "image_encoder",
                  "t2i_adapter"]
    family: str | None = None  # a model family (pipelines/families/)
    description: str = ""
    license: str = ""
    repo: str | None = Field(default=None, pattern=r"^[\w.-]+/[\w.-]+$")
    revision: str | None = Field(default=None, pattern=r"^[0-9a-f]{40}$")
    subfolder: str | None = None
    filename: str | None = None  # one file inside the repo or folder (LoRAs, annotators, single-file models)
    path: str | None = None
    file: str | None = None
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    config: str | None = None  # single-file models: a family's shipped config name (sd15, sdxl) or a diffusers folder
    tiny: bool = False
    stands_in_for: str | None = None
    conditioner: str | None = Field(default=None, pattern=r"^[\w.-]{1,100}$")  # a ControlNet/T2I-Adapter: its plugin
    trigger_words: tuple[str, ...] = ()
    allow_pickle: bool = False
    recommended: Recommended | None = None  # steps, guidance, sampler hints (few-step models)
    image_encoder: str | None = None  # an ip_adapter's CLIP vision encoder: a models.yaml image_encoder id
    found: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> "Entry":
        sources = [name for name in ("repo", "path", "file", "found") if getattr(self, name)] + \
            (["tiny"] if self.tiny else [])
        if len(sources) != 1:
            raise ValueError(f"needs exactly one source of repo, path, file, tiny; has {sources or 'none'}")
        if self.repo and not self.revision:
            raise ValueError("a hub repo needs a pinned `revision` (a 40-character commit hash)")
        if self.file and not self.sha256:
            raise ValueError("a single `file` needs its `sha256`")
        if self.file and self.kind in ("base", "controlnet") and not self.config:
            raise ValueError(f"a single-file {self.kind} needs an explicit `config` "
                             f"({', '.join(families.shipped_configs())} or a folder)")
        named = self.filename or self.file or self.path or self.found or ""
        if self.kind == "embedding" and not self.tiny and not named.lower().endswith(".safetensors"):
            raise ValueError("a textual-inversion embedding is one .safetensors file (name it in `file`, `path` or "
                             "`filename`); .pt and .bin embeddings are pickles, which can run code when loaded: "
                             "convert them")
        if self.kind not in ("annotator", "upscaler", "image_encoder") and self.family is None:
            raise ValueError(f"a {self.kind} needs a `family` ({' or '.join(families.names())})")
        if (self.kind == "ip_adapter") != (self.image_encoder is not None):
            raise ValueError("an ip_adapter needs `image_encoder:` (a models.yaml image_encoder id), and only an "
                             "ip_adapter has one")
        if self.conditioner is not None and self.kind not in ("controlnet", "t2i_adapter"):
            raise ValueError("`conditioner` names the plugin a ControlNet or T2I-Adapter serves; only those have one")
        if self.kind == "t2i_adapter" and self.file:
            raise ValueError("a T2I-Adapter is a diffusers folder (config.json and its weights): give `repo` or `path`")
        return self

    @field_validator("family")
    @classmethod
    def _known_family(cls, value: str | None) -> str | None:
        if value is not None and value not in families.names():
            raise ValueError(f"family {value!r} is not one of {', '.join(families.names())}")
        return value

    @field_validator("path", "file", "subfolder", "filename", "config")
    @classmethod
    def _relative(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and (not value or os.path.isabs(value) or ".." in Path(value).parts
                                  or value.startswith(("~", "\\")) or "\x00" in value):
            raise ValueError(f"`{info.field_name}` {value!r} must be a relative path inside the models root")
        return value

    def describe(self) -> dict[str, Any]:
        return self.model_dump(exclude_defaults=True)

    def stems(self) -> set[str]:
        """The names of the entry's file (with and without its extension), as A1111 prompts and infotexts use them."""
        names = set()
        for value in (self.file, self.filename, self.path, self.found):
            stem = (value or "").replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
            if stem:
                names.update((stem, stem.rsplit(".", 1)[0]))
        return names

    def check_base(self, what: str, base: Entry) -> None:
        """Refuse this entry (``what`` in the message: "ControlNet", "lora", ...) with ``base`` of another family, or a
        tiny entry with a real base (and the reverse)."""
        if self.family != base.family:
            raise ModelError(f"{what} {self.id!r} is {self.family}; base {base.id!r} is {base.family}: "
                             f"pick an {base.family} {what} or an {self.family} base")
        if self.tiny != base.tiny:
            raise ModelError(f"{what} {self.id!r} is {'a tiny test model' if self.tiny else 'a real model'} and base "
                             f"{base.id!r} is {'a tiny test model' if base.tiny else 'a real model'}: use them with "
                             "their own kind")


class CatalogFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = 1
    models: dict[str, Entry] = {}
    folders: list[str] = []  # model folders indexed in place (docs/models.md)


def _line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """Follow a pydantic error location through the composed YAML tree; return a 1-based line."""
    line = node.start_mark.line + 1 if node is not None else None
    for key in loc:
        if not isinstance(node, yaml.MappingNode):
            break
        for key_node, value_node in node.value:
            if key_node.value == key:
                line, node = key_node.start_mark.line + 1, value_node
                break
        else:
            break
    return line


def _key_at(node: yaml.Node | None, line: int, prefix: str = "", depth: int = 0) -> str:
    """The dotted key path of the deepest mapping entry whose value spans 1-based ``line``.

    Bounded in depth: an anchor that refers to itself makes the tree a cycle."""
    if not isinstance(node, yaml.MappingNode) or depth > 4:
        return prefix
    for key_node, value_node in node.value:
        if key_node.start_mark.line + 1 <= line <= value_node.end_mark.line + 1:
            name = f"{prefix}.{key_node.value}" if prefix else str(key_node.value)
            return _key_at(value_node, line, name, depth + 1)
    return prefix


def _no_duplicate_keys(path: Path, node: yaml.Node | None, prefix: str = "", depth: int = 0) -> None:
    """YAML lets a later key silently replace an earlier one; in a catalogue that hides a mistake."""
    if not isinstance(node, yaml.MappingNode) or depth > 4:
        return
    seen: set[str] = set()
    for key_node, value_node in node.value:
        name = f"{prefix}.{key_node.value}" if prefix else str(key_node.value)
        if key_node.value in seen:
            raise CatalogError(f"{path}:{key_node.start_mark.line + 1}: {name}: duplicate key "
                               "(an earlier one with the same name would be replaced)")
        seen.add(key_node.value)
        _no_duplicate_keys(path, value_node, name, depth + 1)


def read_catalog(path: Path, root: Path | None = None) -> dict[str, Entry]:
    """Parse and validate one models.yaml; raise CatalogError with file, line and key.

    With ``root``, local paths that resolve outside it (through ``..`` or a symlink) are refused too.
    """
    return read_catalog_file(path, root)[0]


def read_catalog_file(path: Path, root: Path | None = None) -> tuple[dict[str, Entry], list[Path]]:
    """``read_catalog`` plus the file's ``folders:`` (relative ones are taken from the file's own folder)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CatalogError(f"{path}: cannot read: {exc}") from None
    if len(text) > 5_000_000:
        raise CatalogError(f"{path}: larger than 5 MB; is this really a models.yaml?")
    tree = None
    try:
        tree = yaml.compose(text, Loader=yaml.SafeLoader)
        _no_duplicate_keys(path, tree)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else None
        where = f":{line}" if line else ""
        key = _key_at(tree, line) if line else ""
        problem = getattr(exc, "problem", None) or first_line(exc) or type(exc).__name__
        if "constructor for the tag" in problem:
            problem += " (models.yaml is plain data: tags that build Python objects are refused)"
        raise CatalogError(f"{path}{where}: {key + ': ' if key else ''}{problem}") from None
    except RecursionError:
        raise CatalogError(f"{path}: nested too deeply to be a models.yaml") from None
    if not isinstance(data, dict):
        raise CatalogError(f"{path}:1: the top level must be a mapping with a `models:` key")
    try:
        parsed = CatalogFile.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(err["loc"])
        key = ".".join(str(part) for part in loc if not str(part).startswith("function-after"))
        line = _line_of(tree, loc)
        message = err["msg"].removeprefix("Value error, ")
        raise CatalogError(f"{path}:{line}: {key}: {message}") from None
    for model_id in parsed.models:
        if not re.fullmatch(r"[A-Za-z0-9][\w.-]{0,99}", model_id):
            raise CatalogError(f"{path}:{_line_of(tree, ('models', model_id))}: models.{model_id}: "
                               "ids are letters, digits, '.', '_' and '-', at most 100")
        entry = parsed.models[model_id]
        if entry.found is not None:
            raise CatalogError(f"{path}:{_line_of(tree, ('models', model_id, 'found'))}: models.{model_id}.found: "
                               "is set by folder scans; use `file:` (or list the folder under `folders:`)")
        for name in ("path", "file", "config"):
            value = getattr(entry, name)
            if root is None or value is None or (name == "config" and value in families.shipped_configs()):
                continue
            target = _resolve(root / value)
            if target is None or not target.is_relative_to(root):
                raise CatalogError(f"{path}:{_line_of(tree, ('models', model_id, name))}: models.{model_id}.{name}: "
                                   f"{value!r} resolves to {target or 'nowhere (a symlink loop?)'}, outside the "
                                   f"models root {root} (symlinks out of it are refused)")
    folders = [path.parent / Path(folder).expanduser() for folder in parsed.folders]
    return {model_id: entry.model_copy(update={"id": model_id}) for model_id, entry in parsed.models.items()}, folders


def _resolve(path: Path) -> Path | None:
    """``path`` with symlinks followed; None for a symlink loop or an unreadable path."""
    try:
        return path.resolve()
    except (OSError, RuntimeError, ValueError):
        return None


class Catalog:
    """The shipped catalogue, overlaid by the user's file and any extra files given, plus the model
    folders those files list under ``folders:`` (or given as ``folders``), indexed in place."""

    def __init__(self, extra: str | os.PathLike | list | None = None, root: Path | None = None,
                 folders: str | os.PathLike | list | None = None, settings: Settings | None = None) -> None:
        settings = settings or Settings.from_env()
        self.root = (root or settings.home / "models").resolve()
        self.user_file = settings.user_models
        files = [SHIPPED]
        if self.user_file.is_file():
            files.append(self.user_file)
        if extra is not None:
            files.extend(Path(p) for p in (extra if isinstance(extra, list) else [extra]))
        self.declared: dict[str, Entry] = {}
        self.origins: dict[str, Path] = {}  # id -> the models.yaml that declared it last
        self.roots: dict[str, Path] = {}  # id -> where its local paths resolve, when not the models root
        self.folders: list[Path] = []
        self.files = [SHIPPED]
        self._add(SHIPPED, *read_catalog_file(SHIPPED, self.root))
        for path, package_root in plugin_catalogs():
            self._add_plugin_file(path, package_root)
        for path in files[1:]:
            self._add(path, *read_catalog_file(path, self.root))
        if folders is not None:
            self.folders.extend(Path(p) for p in (folders if isinstance(folders, list) else [folders]))
        self.index = FolderIndex(self.folders)
        self.entries: dict[str, Entry] = {}
        self.refresh()

    def _add(self, path: Path, entries: dict[str, Entry], listed: list[Path]) -> None:
        if path not in self.files:
            self.files.append(path)
        self.declared.update(entries)
        self.origins.update(dict.fromkeys(entries, path))
        for model_id in entries:
            self.roots.pop(model_id, None)
        self.folders.extend(listed)

    def _add_plugin_file(self, path: Path, package_root: Path) -> None:
        """A plugin package's models.yaml: its new ids join the catalogue, its local files resolve inside the
        package. A file that cannot be read, or an id already declared, is skipped with a warning naming both
        files, so one plugin's mistake never hides the catalogue."""
        try:
            entries, _ = read_catalog_file(path, package_root)
        except CatalogError as exc:
            warnings.warn(f"skipped a plugin's models.yaml: {exc}", UserWarning, stacklevel=3)
            return
        for model_id in [i for i in entries if i in self.declared]:
            warnings.warn(f"{path}: model {model_id!r} is already declared in {self.origins[model_id]}; the plugin's "
                          "entry was skipped (give it an id of its own)", UserWarning, stacklevel=3)
            del entries[model_id]
        self._add(path, entries, [])
        self.roots.update(dict.fromkeys(entries, package_root))

    def serving(self, conditioner: str, family: str, tiny: bool, kind: str = "controlnet") -> Entry | None:
        """The default ControlNet for a conditioner and family: the entry that says ``conditioner: <id>``, from the
        latest file (the user's over a plugin's over the shipped one), tiny or real as asked. A real base falls
        back to the model a serving tiny entry stands in for, when the user added it without ``conditioner:``.
        ``kind``: ``t2i_adapter`` for the T2I-Adapter serving it."""
        files = {path: rank for rank, path in enumerate(self.files)}
        pool = [e for e in self.entries.values() if e.kind == kind and e.family == family]
        serving = [e for e in pool if e.conditioner == conditioner]
        matches = [e for e in serving if e.tiny == tiny]
        if not matches and not tiny:
            matches = [self.entries[e.stands_in_for] for e in serving
                       if e.stands_in_for in self.entries and self.entries[e.stands_in_for].kind == kind]
        if not matches:
            return None
        return max(matches, key=lambda e: files.get(self.origins.get(e.id), -1))

    def refresh(self) -> dict[str, list[str]]:
        """Scan the model folders again (only new or changed files' headers are read); return the ids
        ``added`` and ``removed`` since the last scan."""
        before = set(self.index.by_id)
        self.index.rescan(set(self.declared))
        found = {model_id: Entry(id=model_id, kind=f.kind, family=f.family, found=str(f.path),
                                 description=f"{f.relative} in {f.root} ({f.why})")
                 for model_id, f in self.index.by_id.items()}
        self.entries = {**self.declared, **found}
        after = set(self.index.by_id)
        return {"added": sorted(after - before), "removed": sorted(before - after)}

    def find(self, name: str, kind: str | None = None) -> Entry | None:
        """The entry an AUTOMATIC1111 name points at: an id, a file name without its extension, or a
        path inside a scanned folder (``sub/name``); exact first, then ignoring case."""
        pool = {i: e for i, e in self.entries.items() if kind is None or e.kind == kind}
        names = {i: (i, *(self.index.by_id[i].names() if i in self.index.by_id else ())) for i in pool}
        for fold in (str, str.lower):
            for model_id, known in names.items():
                if fold(name) in map(fold, known):
                    return pool[model_id]
        return None

    def by_hash(self, short: str, kind: str | None = None) -> Entry | None:
        """The model whose hash an infotext records: AUTOMATIC1111's short hash (the first 10 or 12 hex
        digits of the file's sha256), its old 8-digit ``model hash``, or a LoRA's 12-digit tensor-data
        hash. Files whose sha256 is not known yet are hashed now (once: the hash is cached)."""
        short = short.strip().lower()
        if not re.fullmatch(r"[0-9a-f]{8,64}", short):
            return None
        pool = [(i, e) for i, e in self.entries.items() if kind is None or e.kind == kind]
        for model_id, entry in pool:
            if entry.sha256 and entry.sha256.startswith(short):
                return entry
        for model_id, entry in pool:
            if model_id in self.index.by_id and self.index.matches(model_id, short):
                return entry
        return None

    def found_file(self, entry: Entry) -> Path:
        """The file of a folder-scanned entry, if it is still there and still inside its folder."""
        found = self.index.by_id.get(entry.id)
        path = Path(entry.found or "")
        target = _resolve(path)
        if found is None or target is None or not target.is_file() \
                or not any(target.is_relative_to(f) for f in self.index.roots):
            raise ModelError(f"model {entry.id!r}: {path} is gone or now points outside its model folder; "
                             "refresh the model list")
        return target

    def found_config(self, entry: Entry) -> Path:
        found = self.index.by_id[entry.id]
        return CONFIGS / found.config if found.config in families.shipped_configs() else Path(found.config)

    def get(self, model_id: str, kind: str | None = None) -> Entry:
        entry = self.entries.get(model_id)
        if entry is None:
            pool = [k for k, e in self.entries.items() if kind is None or e.kind == kind]
            raise ModelError(f"no model {model_id!r} in models.yaml{suggest(model_id, pool)}")
        if kind is not None and entry.kind != kind:
            raise ModelError(f"model {model_id!r} is a {entry.kind}, not a {kind}")
        return entry

    def recommended(self, model_id: str, lora_ids: tuple[str, ...] | list[str] = ()) -> dict[str, Any]:
        """The ``recommended`` hints of a base and its LoRAs, merged in that order (a few-step LoRA's win)."""
        out: dict[str, Any] = {}
        for key in (model_id, *lora_ids):
            entry = self.entries.get(key)
            if entry is not None and entry.recommended is not None:
                out.update(entry.recommended.model_dump(exclude_none=True))
        return out

    def ids(self, kind: str) -> list[str]:
        return [model_id for model_id, entry in self.entries.items() if entry.kind == kind]

    def local(self, relative: str, model_id: str | None = None) -> Path:
        """Resolve a path from models.yaml under the models root (a plugin's own entries: under its package);
        refuse anything that escapes it."""
        root = self.roots.get(model_id, self.root)
        target = _resolve(root / relative)
        if target is None or not target.is_relative_to(root):
            raise ModelError(f"path {relative!r} resolves to {target or 'nowhere (a symlink loop?)'}, outside the "
                             f"models root {root}; move the files under the models root "
                             "(symlinks out of it are refused)")
        return target

    def inside(self, folder: Path, model_id: str | None = None) -> None:
        """Refuse a local model folder holding a file or symlink that resolves outside the models root."""
        root = self.roots.get(model_id, self.root)
        for file in folder.rglob("*"):
            target = _resolve(file)
            if target is None or not target.is_relative_to(root):
                raise ModelError(f"{file} resolves to {target or 'nowhere (a symlink loop?)'}, outside the "
                                 f"models root {root}; move the files under the models root "
                             "(symlinks out of it are refused)")

    def stand_in(self, model_id: str, tiny: bool) -> str:
        """For a tiny base, the tiny model standing in for ``model_id``; else ``model_id``.

        A stand-in may name a real model the shipped catalogue does not pin (users add it themselves)."""
        if not tiny or (model_id in self.entries and self.entries[model_id].tiny):
            return model_id
        for other_id, entry in self.entries.items():
            if entry.tiny and entry.stands_in_for == model_id:
                return other_id
        self.get(model_id)
        raise ModelError(f"no tiny test model stands in for {model_id!r}; use a real base model with it")
