"""Textual-inversion embeddings, as AUTOMATIC1111 uses them: an embedding's name written in a prompt as a word
stands for its vectors.

``used(catalog, base, texts)`` picks, before any weight loads, the embeddings of the base's family that a
prompt or negative prompt names (a models.yaml ``kind: embedding`` entry by id or file name, or a scanned
``embeddings`` folder's file); ComfyUI's ``embedding:NAME`` is read too, and an unknown name there is refused
with "did you mean". ``load`` reads their ``.safetensors`` files (A1111/kohya ``emb_params``, a flattened
``string_to_param.*``, a diffusers concept's single tensor, SDXL's ``clip_l``/``clip_g``); pickled ``.pt``/``.bin``
embeddings are refused. ``inserted`` puts the vectors in place of the placeholder tokens of one encoder call
through a forward hook on the encoder's token embedding that touches only that call's input (the shared
text encoder's weights and tokenizer are never changed).
"""
from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from sdcompose.errors import ModelError, suggest
from sdcompose.pipelines.catalog import Catalog, Entry
from sdcompose.prompt_syntax import word_pattern

# ComfyUI's explicit embedding:NAME (a name starts with a letter: "(embedding:1.2)" is A1111 emphasis on a word)
COMFY = re.compile(r"(?<![^\W_])embedding:([^\W\d][^\s,()\[\]<>:]*)", re.I)
SUFFIXES = (".safetensors", ".pt", ".bin")
MAX_VECTORS = 75  # one chunk


@dataclass(frozen=True)
class Embedding:
    name: str  # as the prompt writes it
    id: str  # the catalogue entry
    vectors: tuple[Any, ...]  # one [n, width] tensor per text encoder (SD1.5: one; SDXL: clip_l, clip_g)

    @property
    def count(self) -> int:
        return int(self.vectors[0].shape[0])


def names(entry: Entry) -> set[str]:
    """The words that name an embedding: its id and its file name (without the extension, as A1111 names it)."""
    return {entry.id, *(stem for stem in entry.stems() if not stem.lower().endswith(SUFFIXES))}


def used(catalog: Catalog, base: Entry, texts: list[str]) -> tuple[list[str], dict[str, Entry]]:
    """``texts`` with ComfyUI's ``embedding:NAME`` written as ``NAME``, and the embeddings they name (by name)."""
    pool = {}
    for entry in catalog.entries.values():
        if entry.kind == "embedding" and entry.family == base.family:
            pool.update({name.lower(): entry for name in names(entry) if name})

    def explicit(match: re.Match) -> str:
        name = match.group(1)
        stem = name[: -len(suffix)] if (suffix := next((s for s in SUFFIXES if name.lower().endswith(s)), "")) else name
        if stem.lower() not in pool:
            others = [e.id for e in catalog.entries.values() if e.kind == "embedding"]
            other = next((e for e in catalog.entries.values() if e.kind == "embedding"
                          and stem.lower() in {n.lower() for n in names(e)}), None)
            where = (f" for {base.family} (it is {other.family}; base {base.id!r} is {base.family})" if other is not None
                     else f"{suggest(stem, others)}")
            raise ModelError(f"the prompt's embedding:{name[:80]} names no textual-inversion embedding{where}")
        return stem

    texts = [COMFY.sub(explicit, text) for text in texts]
    pattern = word_pattern(pool)
    wanted = {m.group(0).lower() for text in texts for m in pattern.finditer(text)} if pattern else set()
    return texts, {name: pool[name] for name in sorted(wanted)}


def load(parts: Any, wanted: dict[str, Entry], path_of: Any) -> dict[str, Embedding]:
    """The vectors of ``wanted`` (name -> entry), checked against the text encoders of ``parts`` (a diffusers
    pipeline or its components dict); ``path_of(entry)``: the verified file."""
    get = parts.get if isinstance(parts, dict) else lambda name: getattr(parts, name, None)
    widths = [get(name).config.hidden_size for name in ("text_encoder", "text_encoder_2") if get(name) is not None]
    read: dict[str, tuple[Any, ...]] = {}
    out = {}
    for name, entry in wanted.items():
        if entry.id not in read:
            read[entry.id] = vectors(Path(path_of(entry)), entry.id, widths)
        out[name] = Embedding(name, entry.id, read[entry.id])
    return out


def vectors(path: Path, model_id: str, widths: list[int]) -> tuple[Any, ...]:
    """One [n, width] float tensor per text encoder from an embedding file; ModelError in one sentence.

    Shapes are checked from the header before any tensor is read."""
    from safetensors import SafetensorError, safe_open
    if path.suffix.lower() != ".safetensors":
        raise ModelError(f"embedding {model_id!r}: {path.name} is not a .safetensors file; textual-inversion "
                         "embeddings are read from .safetensors only (a .pt/.bin is a pickle, which can run code "
                         "when loaded): convert it")
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = sorted(f.keys())
            chosen = _keys(keys)
            if chosen is None:
                raise ModelError(f"embedding {model_id!r}: {path.name} holds {', '.join(keys)[:120] or 'no tensors'}, "
                                 "not an embedding's vectors (emb_params, string_to_param, clip_l and clip_g, or one "
                                 "tensor)")
            shapes = [tuple(f.get_slice(k).get_shape()) for k in chosen]
            shapes = [(1, *s) if len(s) == 1 else s for s in shapes]
            _check(model_id, shapes, widths)
            found = [f.get_tensor(k).reshape(shape) for k, shape in zip(chosen, shapes)]
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelError(f"embedding {model_id!r}: {path.name} cannot be read ({str(exc)[:120]}); download it "
                         "again") from None
    return tuple(v.float() for v in found)


def _keys(keys: list[str]) -> list[str] | None:
    if "clip_l" in keys and "clip_g" in keys:
        return ["clip_l", "clip_g"]
    if "emb_params" in keys:
        return ["emb_params"]
    params = [k for k in keys if k.startswith("string_to_param.")]
    if len(params) == 1:
        return params
    return keys if len(keys) == 1 else None  # a diffusers concept: {"<token>": vector}


def _check(model_id: str, shapes: list[tuple[int, ...]], widths: list[int]) -> None:
    if len(shapes) != len(widths) or any(len(s) != 2 or s[1] != w for s, w in zip(shapes, widths)):
        what = "SDXL (clip_l + clip_g)" if len(shapes) == 2 else "one text encoder"
        raise ModelError(f"embedding {model_id!r} holds vectors of shape {', '.join(map(str, shapes))} for {what}; "
                         f"this model's text encoders take width {' and '.join(map(str, widths))}: is it for another "
                         "model family?")
    if len({s[0] for s in shapes}) != 1 or not 1 <= shapes[0][0] <= MAX_VECTORS:
        raise ModelError(f"embedding {model_id!r} holds {' and '.join(str(s[0]) for s in shapes)} vectors; an "
                         f"embedding needs 1 to {MAX_VECTORS}, the same number for each encoder")


@contextlib.contextmanager
def inserted(encoder: Any, ids: Any, rows: dict[int, Any]) -> Iterator[None]:
    """While the block runs, ``encoder`` called with ``ids`` sees ``rows`` (position -> vector) in place of those
    tokens' embeddings. Other calls (other threads) pass through untouched: the hook matches ``ids``' storage."""
    if not rows:
        yield
        return
    import torch
    layer = encoder.get_input_embeddings()
    positions = torch.tensor(list(rows))
    values = torch.stack(list(rows.values()))

    def hook(_module: Any, args: tuple, output: Any) -> Any:
        if not args or args[0].data_ptr() != ids.data_ptr():
            return None
        output = output.clone()
        output[:, positions.to(output.device)] = values.to(device=output.device, dtype=output.dtype)
        return output

    handle = layer.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
