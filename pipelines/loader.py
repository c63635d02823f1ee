"""Turn catalogue entries into local files and loaded modules: hub repos (pinned), local folders,
single ``.safetensors`` files with a shipped config, and the tiny test models, all through one path.

Every weight file is checked by content (safetensors, not pickle, not truncated, not an LFS
pointer) before diffusers sees it, and hashed for the image metadata.
"""
from __future__ import annotations

import threading
import warnings
from pathlib import Path
from typing import Any

import torch

from sdcompose.errors import ModelError, describe, first_line
from sdcompose.pipelines import families, tiny, weights
from sdcompose.pipelines.catalog import CONFIGS, Catalog, Entry
from sdcompose.pipelines.custom_code import refuse_custom_code

HUB_PATTERNS = {"controlnet": ["config.json", "diffusion_pytorch_model.safetensors"],  # a base's: its family's
                "t2i_adapter": ["config.json", "diffusion_pytorch_model.safetensors"],
                "image_encoder": ["config.json", "model.safetensors"]}

# Loading patches torch.nn for the whole process while it runs (accelerate's init_empty_weights, used by
# from_pretrained), so two threads loading at once, for two Pipelines, break each other's modules.
LOADING = threading.RLock()


def quiet() -> None:
    """Load reports replace diffusers'/transformers' progress bars and key warnings."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging
    from huggingface_hub.utils import logging as hub_logging
    for module in (diffusers_logging, transformers_logging):
        module.set_verbosity_error()
        module.disable_progress_bar()
    hub_logging.set_verbosity_error()  # no retry chatter; download progress bars stay
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(diffusers|transformers)\.")
    warnings.filterwarnings("ignore", category=UserWarning, module=r"peft\.")  # the LoRA load report says it once


def pipeline_class(family: str):
    """The diffusers class a base model of ``family`` loads with."""
    return families.get(family).pipeline_class("txt2img")


class Loader:
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self._hub_paths: dict[tuple, Path] = {}  # pinned revisions never change: resolve each once
        self._checked: dict[str, tuple[Any, dict[str, str]]] = {}
        quiet()

    # ---- where the files are -------------------------------------------------------------
    def path(self, entry: Entry) -> Path:
        """Local path of an entry's folder or file, downloading a pinned hub revision if needed."""
        if entry.tiny:
            target = tiny.ensure(entry, self.catalog.root / "tiny" / f"v{tiny.VERSION}" / entry.id)
            return target / tiny.FILES[entry.kind] if entry.kind in tiny.FILES else target
        if entry.repo:
            return self._hub(entry)
        if entry.found:
            return self.catalog.found_file(entry)
        relative = entry.path or entry.file
        local = self.catalog.local(f"{relative}/{entry.filename}" if entry.filename else relative, entry.id)
        if not local.exists():
            raise ModelError(f"model {entry.id!r}: {local} does not exist; put the files there or fix models.yaml")
        return local

    def _hub(self, entry: Entry) -> Path:
        key = (entry.repo, entry.revision, entry.subfolder, entry.filename, entry.kind, entry.allow_pickle)
        if key not in self._hub_paths:
            self._hub_paths[key] = self._download(entry)
        return self._hub_paths[key]

    def _download(self, entry: Entry) -> Path:
        from huggingface_hub import hf_hub_download, snapshot_download
        try:
            if entry.filename:
                return Path(hf_hub_download(entry.repo, entry.filename, subfolder=entry.subfolder,
                                            revision=entry.revision))
            patterns = list(families.get(entry.family).hub_patterns) if entry.kind == "base" \
                else HUB_PATTERNS.get(entry.kind)
            if entry.allow_pickle:  # opted in: the .bin twins, loaded weights-only
                patterns = patterns + [p.replace("/model.safetensors", "/pytorch_model.bin")
                                       .replace(".safetensors", ".bin") for p in patterns if p.endswith(".safetensors")]
            if entry.subfolder:
                patterns = [f"{entry.subfolder}/{p}" for p in patterns]
            folder = Path(snapshot_download(entry.repo, revision=entry.revision, allow_patterns=patterns))
            return folder / entry.subfolder if entry.subfolder else folder
        except Exception as exc:  # network, auth, missing revision: one sentence for the user
            raise ModelError(f"model {entry.id!r}: could not get {entry.repo}@{entry.revision[:10]} "
                             f"({describe(exc, 200)}); check the network "
                             "or download it and point models.yaml `path:` at the folder") from None

    def is_local(self, entry: Entry) -> bool:
        """Whether an entry's files are on this machine already (tiny models build offline on first use)."""
        if entry.tiny:
            return True
        if entry.repo:
            from huggingface_hub import try_to_load_from_cache
            probe = entry.filename or ("model_index.json" if entry.kind == "base" else "config.json")
            probe = f"{entry.subfolder}/{probe}" if entry.subfolder else probe
            return isinstance(try_to_load_from_cache(entry.repo, probe, revision=entry.revision), str)
        if entry.found:
            return Path(entry.found).is_file()
        try:
            return self.catalog.local(entry.path or entry.file, entry.id).exists()
        except ModelError:
            return False

    def files(self, entry: Entry) -> list[Path]:
        """The entry's weight files, each checked by content; pickles refused unless opted in."""
        root = self.path(entry)
        if not entry.repo and not entry.tiny and root.is_dir():
            self.catalog.inside(root, entry.id)
        found = [root] if root.is_file() else weights.weight_files(root)
        if not found:
            raise ModelError(f"model {entry.id!r}: no weight files in {root}")
        for file in found:
            weights.require_safetensors(file, entry.allow_pickle)
        return found

    def hashes(self, entry: Entry) -> dict[str, str]:
        """sha256 of every weight file of an entry (verified against models.yaml for single files).

        Remembered per process while the files' stat stamps stay the same, so a request for models
        already checked costs a few stat calls."""
        root = self.path(entry)
        found = [root] if root.is_file() else weights.weight_files(root)
        stamp = (entry, tuple((str(f), *_stamp(f)) for f in found))
        memo = self._checked.get(entry.id)
        if memo is not None and memo[0] == stamp:
            return dict(memo[1])
        out = {}
        for file in self.files(entry):
            name = file.name if root.is_file() else str(file.relative_to(root))
            out[name] = weights.verify(file, entry.sha256 if root.is_file() else None)
        self._checked[entry.id] = (stamp, out)
        return dict(out)

    def verified_path(self, entry: Entry) -> Path:
        """``path`` once every weight file passed the content and sha256 checks (for plugins that load files)."""
        self.hashes(entry)
        path = self.path(entry)
        refuse_custom_code(path, f"model {entry.id!r}")
        return path

    def _config(self, entry: Entry) -> Path:
        """The diffusers config folder of a single-file model: a family's shipped one or under the models root."""
        if entry.found:
            return self.catalog.found_config(entry)
        if entry.config is None:
            raise ModelError(f"model {entry.id!r} is a single file and needs `config:` in models.yaml "
                             f"({', '.join(families.shipped_configs())}, or a diffusers config folder under the models root)")
        shipped = families.shipped_configs()
        folder = CONFIGS / entry.config if entry.config in shipped else self.catalog.local(entry.config, entry.id)
        if not folder.is_dir():
            raise ModelError(f"model {entry.id!r}: its `config:` folder {folder} does not exist; use "
                             f"{', '.join(families.shipped_configs())} "
                             "or a diffusers config folder under the models root")
        refuse_custom_code(folder, f"model {entry.id!r}")
        return folder

    # ---- loading modules -----------------------------------------------------------------
    def base(self, entry: Entry, dtype: torch.dtype) -> dict[str, Any]:
        """The diffusers components of a base model, on the CPU in ``dtype``."""
        cls = pipeline_class(entry.family)
        extra = dict(families.get(entry.family).load_kwargs)
        with LOADING:
            return self._base(entry, cls, dtype, extra)

    def _base(self, entry: Entry, cls: Any, dtype: torch.dtype, extra: dict[str, Any]) -> dict[str, Any]:
        source = self.verified_path(entry)
        try:
            if source.is_file():
                pipe = cls.from_single_file(str(source), config=str(self._config(entry)), local_files_only=True,
                                            torch_dtype=dtype, **extra)
            else:
                pipe = cls.from_pretrained(source, torch_dtype=dtype, local_files_only=True, trust_remote_code=False,
                                           use_safetensors=None if entry.allow_pickle else True, **extra)
        except ModelError:
            raise
        except Exception as exc:  # a malformed file or config from a model author: one sentence, not a traceback
            raise ModelError(f"model {entry.id!r} from {source} did not load as a {entry.family} model: "
                             f"{first_line(exc)}") from None
        return {k: v for k, v in pipe.components.items() if v is not None}

    def controlnet(self, entry: Entry, dtype: torch.dtype):
        with LOADING:
            return self._controlnet(entry, dtype)

    def _controlnet(self, entry: Entry, dtype: torch.dtype):
        family = families.get(entry.family)
        ControlNetModel = family.controlnet_model()
        source = self.verified_path(entry)
        try:
            if source.is_file():
                config = self._config(entry)
                # A pipeline config folder (a family's shipped one) gives a ControlNet its denoiser's architecture.
                pipeline_folder = not (config / "config.json").is_file() and \
                    (config / family.denoiser / "config.json").is_file()
                return ControlNetModel.from_single_file(str(source), config=str(config), torch_dtype=dtype,
                                                        local_files_only=True,
                                                        **({"subfolder": family.denoiser} if pipeline_folder else {}))
            return ControlNetModel.from_pretrained(source, torch_dtype=dtype,
                                                   use_safetensors=None if entry.allow_pickle else True,
                                                   local_files_only=True)
        except ModelError:
            raise
        except Exception as exc:  # a malformed file or config from a model author: one sentence, not a traceback
            raise ModelError(f"ControlNet {entry.id!r} from {source} did not load: "
                             f"{first_line(exc)}") from None

    def image_encoder(self, entry: Entry, dtype: torch.dtype):
        """An IP-Adapter's CLIP vision encoder (``CLIPVisionModelWithProjection``), on the CPU in ``dtype``."""
        from transformers import CLIPVisionModelWithProjection
        source = self.verified_path(entry)
        with LOADING:
            try:
                return CLIPVisionModelWithProjection.from_pretrained(source, dtype=dtype, local_files_only=True,
                                                                     use_safetensors=not entry.allow_pickle or None)
            except Exception as exc:  # a malformed file or config: one sentence
                raise ModelError(f"image encoder {entry.id!r} from {source} did not load as a CLIP vision model: "
                                 f"{first_line(exc)}") from None


    def adapter(self, entry: Entry, dtype: torch.dtype):
        """A T2I-Adapter (a diffusers folder)."""
        with LOADING:
            source = self.verified_path(entry)
            try:
                return families.get(entry.family).adapter_model().from_pretrained(
                    source, torch_dtype=dtype, use_safetensors=None if entry.allow_pickle else True,
                    local_files_only=True)
            except Exception as exc:  # a malformed folder from a model author: one sentence, not a traceback
                raise ModelError(f"T2I-Adapter {entry.id!r} from {source} did not load: {first_line(exc)}") from None


def _stamp(path: Path) -> tuple[int, int, int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns
