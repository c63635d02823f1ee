"""Prompt text -> diffusers call arguments, the way AUTOMATIC1111 encodes it.

A plain prompt (no emphasis, no BREAK, no embedding, at most 75 tokens, no clip skip) goes to diffusers as
text, so its embeddings are diffusers' own. Anything else is encoded here and handed over through diffusers' ``prompt_embeds`` path:
the prompt is split into 75-token chunks (at the last comma within 20 tokens of the end, and at each
BREAK), each chunk is encoded as ``BOS + 75 tokens + EOS`` with every text encoder, each token's hidden
state is multiplied by its weight and the chunk rescaled to its original mean (A1111's "Original" emphasis),
and the chunks are concatenated (a chunk whose mean is numerically zero, as in the random-weight
test models, is not rescaled: dividing by it would blow up). SDXL's pooled embedding comes from the first chunk of its second encoder.
The prompt and negative prompt are padded with empty chunks to the same length. Clip skip N takes the
hidden state N layers from the end (1: the last), as A1111 counts it. A textual-inversion embedding named
in the text takes as many token places as it has vectors, in one chunk, and its vectors go in through
``embeddings.inserted``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sdcompose.errors import ValidationError
from sdcompose.prompt_syntax import is_plain, lora_tags, parse, plain_text, word_pattern

CHUNK = 75
COMMA_BACKTRACK = 20  # A1111's comma_padding_backtrack
PLACEHOLDER = 0  # the token id an embedding's places carry (A1111's too); their embeddings are replaced
MEAN_EPS = 1e-4  # below this (relative to the spread) a chunk's mean is zero and is not restored


@dataclass
class Chunk:
    tokens: list[int]
    weights: list[float]
    vectors: list[Any] = field(default_factory=list)  # per token: None, or (embedding, row) for an embedding's vector

    def cut(self, start: int, end: int | None = None) -> "Chunk":
        return Chunk(self.tokens[start:end], self.weights[start:end], self.vectors[start:end])


def chunks(tokenizer: Any, pieces: list[tuple[str, float]], embeddings: dict[str, Any] | None = None) -> list[Chunk]:
    """A parsed prompt as 75-token chunks (without BOS/EOS or padding), split as A1111 splits them.

    ``embeddings`` (lowercased name -> ``embeddings.Embedding``): where a name stands as a word, its vectors
    take as many token places (kept in one chunk, as in A1111), with the weight of the text around it.
    """
    comma = tokenizer.convert_tokens_to_ids(",</w>") if ",</w>" in tokenizer.get_vocab() else None
    pattern = word_pattern(embeddings or {})
    out: list[Chunk] = []
    current = Chunk([], [])
    last_comma = -1

    def close() -> None:
        nonlocal current, last_comma
        out.append(current)
        current, last_comma = Chunk([], []), -1

    def make_room(is_comma: bool) -> None:  # before each token or embedding, as A1111's tokenize_line
        nonlocal current, last_comma
        if is_comma:
            last_comma = len(current.tokens)
        elif len(current.tokens) == CHUNK and last_comma != -1 and len(current.tokens) - last_comma <= COMMA_BACKTRACK:
            rest, current = current.cut(last_comma + 1), current.cut(0, last_comma + 1)
            close()
            current = rest
        if len(current.tokens) == CHUNK:
            close()

    segments = [(_split(text, pattern, embeddings) if weight >= 0 else [], weight) for text, weight in pieces]
    texts = [part for parts, _ in segments for part in parts if isinstance(part, str)]
    encoded = iter(tokenizer(texts, add_special_tokens=False, truncation=False, verbose=False).input_ids if texts else [])
    for parts, weight in segments:
        if weight < 0:  # BREAK
            close()
            continue
        for part in parts:
            if not isinstance(part, str):
                make_room(False)
                if len(current.tokens) + part.count > CHUNK:
                    close()
                current.tokens += [PLACEHOLDER] * part.count
                current.weights += [weight] * part.count
                current.vectors += [(part, row) for row in range(part.count)]
                continue
            for token in next(encoded):
                make_room(token == comma)
                current.tokens.append(token)
                current.weights.append(weight)
                current.vectors.append(None)
    if current.tokens or not out:
        close()
    return out


def _split(text: str, pattern: Any, embeddings: dict[str, Any] | None) -> list[Any]:
    """``text`` as text parts and the embeddings named in it."""
    if pattern is None:
        return [text]
    parts: list[Any] = []
    start = 0
    for match in pattern.finditer(text):
        parts += [text[start:match.start()], embeddings[match.group(0).lower()]]
        start = match.end()
    return [p for p in parts + [text[start:]] if not isinstance(p, str) or p]


def token_counts(tokenizer: Any, text: str, syntax: str = "a1111",
                 embeddings: dict[str, Any] | None = None) -> dict[str, Any]:
    """What A1111 shows under a prompt ("83/150"): tokens used, the limit of the chunks they fill, and each chunk's count.

    LoRA tags are not counted (they are not encoded); an embedding counts as many tokens as it has vectors.
    Raises ValidationError for a malformed prompt.
    """
    text, _ = lora_tags(text, syntax)
    parts = chunks(tokenizer, parse(text, syntax), embeddings if syntax != "literal" else None)
    counts = [len(c.tokens) for c in parts]
    return {"tokens": sum(counts), "limit": CHUNK * len(parts), "chunks": counts,
            "label": f"{sum(counts)}/{CHUNK * len(parts)}"}


def arguments(pipe: Any, prompt: str, negative: str, syntax: str = "a1111", clip_skip: int = 1,
              embeds: bool = False, embeddings: dict[str, Any] | None = None) -> dict[str, Any]:
    """``prompt``/``negative_prompt`` (plain text) or ``prompt_embeds`` and friends for ``pipe(...)``.

    ``embeds``: encode here even a plain prompt (the tests check that this equals diffusers' own encoding).
    ``embeddings``: textual-inversion embeddings by lowercased name (``embeddings.load``), used where named.
    """
    encoders = _encoders(pipe)
    _check_clip_skip(encoders, clip_skip)
    parsed = [parse(prompt, syntax), parse(negative, syntax)]
    embeddings = embeddings if syntax != "literal" else None
    split = [[chunks(tokenizer, p, embeddings) for tokenizer, _ in encoders] for p in parsed]
    inserted = any(v is not None for s in split for parts in s for c in parts for v in c.vectors)
    if not embeds and clip_skip == 1 and not inserted and \
            all(is_plain(p) and all(len(c) == 1 for c in s) for p, s in zip(parsed, split)):
        return {"prompt": plain_text(parsed[0]), "negative_prompt": plain_text(parsed[1]) or None}
    import torch
    dual = len(encoders) == 2  # a second, projecting encoder (its pooled output conditions too)
    length = max(len(c) for s in split for c in s)
    embeds, pooled = [], []
    for chunk_lists in split:
        per_encoder = []
        for slot, ((tokenizer, encoder), parts) in enumerate(zip(encoders, chunk_lists)):
            parts = parts + [Chunk([], [])] * (length - len(parts))
            hidden, first_pooled = _encode(tokenizer, encoder, parts, clip_skip, dual, slot)
            per_encoder.append(hidden)
        embeds.append(torch.cat(per_encoder, dim=-1))
        pooled.append(first_pooled)
    kw = {"prompt_embeds": embeds[0], "negative_prompt_embeds": embeds[1]}
    if dual:
        kw.update(pooled_prompt_embeds=pooled[0], negative_pooled_prompt_embeds=pooled[1])
        if not negative and pipe.config.get("force_zeros_for_empty_prompt", False):  # as diffusers does
            kw.update(negative_prompt_embeds=torch.zeros_like(embeds[0]),
                      negative_pooled_prompt_embeds=torch.zeros_like(pooled[0]))
    return kw


def _encoders(pipe: Any) -> list[tuple[Any, Any]]:
    pairs = [(getattr(pipe, t, None), getattr(pipe, e, None))
             for t, e in (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2"))]
    return [(t, e) for t, e in pairs if t is not None and e is not None]


def _check_clip_skip(encoders: list[tuple[Any, Any]], clip_skip: int) -> None:
    layers = min(encoder.config.num_hidden_layers for _, encoder in encoders)
    most = layers  # clip skip N reads the hidden state N layers from the end (SDXL: from the penultimate one)
    if clip_skip > most:
        raise ValidationError(f"clip skip {clip_skip} is more than this model's text encoder allows (at most {most})")


def _encode(tokenizer: Any, encoder: Any, parts: list[Chunk], clip_skip: int, dual: bool, slot: int = 0):
    """Concatenated hidden states of every chunk, and the pooled output of the first (``slot``: which of an
    embedding's vector sets this encoder takes)."""
    import torch
    from diffusers.utils.torch_utils import get_module_execution_device

    from sdcompose.pipelines.embeddings import inserted
    device = get_module_execution_device(encoder)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    hidden, pooled = [], None
    for part in parts:
        ids = [bos] + part.tokens + [eos] + [pad] * (CHUNK - len(part.tokens))
        weights = torch.tensor([1.0] + part.weights + [1.0] * (CHUNK + 1 - len(part.tokens)))
        rows = {1 + i: v[0].vectors[slot][v[1]] for i, v in enumerate(part.vectors) if v is not None}
        ids = torch.tensor([ids], device=device)
        with inserted(encoder, ids, rows):
            out = encoder(ids, output_hidden_states=True)
        if dual:  # diffusers' SDXL default is the penultimate layer: that is clip skip 1 there
            z = out.hidden_states[-(clip_skip + 1)]
        elif clip_skip == 1:
            z = out[0]
        else:
            z = getattr(encoder, "text_model", encoder).final_layer_norm(out.hidden_states[-clip_skip])
        if pooled is None and out[0].ndim == 2:  # the projected encoder's text_embeds
            pooled = out[0]
        if not torch.all(weights == 1.0):
            weights = weights.to(device=z.device, dtype=z.dtype)
            mean = z.mean()
            z = z * weights[None, :, None]
            if abs(float(z.mean())) > MEAN_EPS * float(z.std()):  # a zero mean (random-weight test models) is kept
                z = z * (mean / z.mean())
        hidden.append(z)
    return torch.cat(hidden, dim=1), pooled
