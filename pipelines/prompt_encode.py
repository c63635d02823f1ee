"""Prompt text -> diffusers call arguments, the way AUTOMATIC1111 encodes it.

A plain prompt (no emphasis, no BREAK, at most 75 tokens, no clip skip) goes to diffusers as text, so its embeddings are
diffusers' own. Anything else is encoded here and handed over through diffusers' ``prompt_embeds`` path:
the prompt is split into 75-token chunks (at the last comma within 20 tokens of the end, and at each
BREAK), each chunk is encoded as ``BOS + 75 tokens + EOS`` with every text encoder, each token's hidden
state is multiplied by its weight and the chunk rescaled to its original mean (A1111's "Original" emphasis),
and the chunks are concatenated (a chunk whose mean is numerically zero, as in the random-weight
test models, is not rescaled: dividing by it would blow up). SDXL's pooled embedding comes from the first chunk of its second encoder.
The prompt and negative prompt are padded with empty chunks to the same length. Clip skip N takes the
hidden state N layers from the end (1: the last), as A1111 counts it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sdcompose.errors import ValidationError
from sdcompose.prompt_syntax import is_plain, lora_tags, parse, plain_text

CHUNK = 75
COMMA_BACKTRACK = 20  # A1111's comma_padding_backtrack
MEAN_EPS = 1e-4  # below this (relative to the spread) a chunk's mean is zero and is not restored


@dataclass
class Chunk:
    tokens: list[int]
    weights: list[float]


def chunks(tokenizer: Any, pieces: list[tuple[str, float]]) -> list[Chunk]:
    """A parsed prompt as 75-token chunks (without BOS/EOS or padding), split as A1111 splits them."""
    comma = tokenizer.convert_tokens_to_ids(",</w>") if ",</w>" in tokenizer.get_vocab() else None
    out: list[Chunk] = []
    current = Chunk([], [])
    last_comma = -1

    def close() -> None:
        nonlocal current, last_comma
        out.append(current)
        current, last_comma = Chunk([], []), -1

    texts = [text for text, weight in pieces if weight >= 0]
    encoded = iter(tokenizer(texts, add_special_tokens=False, truncation=False, verbose=False).input_ids if texts else [])
    for text, weight in pieces:
        if weight < 0:  # BREAK
            close()
            continue
        for token in next(encoded):
            if token == comma:
                last_comma = len(current.tokens)
            elif len(current.tokens) == CHUNK and last_comma != -1 and len(current.tokens) - last_comma <= COMMA_BACKTRACK:
                cut = last_comma + 1
                rest = Chunk(current.tokens[cut:], current.weights[cut:])
                current = Chunk(current.tokens[:cut], current.weights[:cut])
                close()
                current = rest
            if len(current.tokens) == CHUNK:
                close()
            current.tokens.append(token)
            current.weights.append(weight)
    if current.tokens or not out:
        close()
    return out


def token_counts(tokenizer: Any, text: str, syntax: str = "a1111") -> dict[str, Any]:
    """What A1111 shows under a prompt ("83/150"): tokens used, the limit of the chunks they fill, and each chunk's count.

    LoRA tags are not counted (they are not encoded). Raises ValidationError for a malformed prompt.
    """
    text, _ = lora_tags(text, syntax)
    parts = chunks(tokenizer, parse(text, syntax))
    counts = [len(c.tokens) for c in parts]
    return {"tokens": sum(counts), "limit": CHUNK * len(parts), "chunks": counts,
            "label": f"{sum(counts)}/{CHUNK * len(parts)}"}


def arguments(pipe: Any, prompt: str, negative: str, syntax: str = "a1111", clip_skip: int = 1,
              embeds: bool = False) -> dict[str, Any]:
    """``prompt``/``negative_prompt`` (plain text) or ``prompt_embeds`` and friends for ``pipe(...)``.

    ``embeds``: encode here even a plain prompt (the tests check that this equals diffusers' own encoding).
    """
    encoders = _encoders(pipe)
    _check_clip_skip(encoders, clip_skip)
    parsed = [parse(prompt, syntax), parse(negative, syntax)]
    split = [[chunks(tokenizer, p) for tokenizer, _ in encoders] for p in parsed]
    if not embeds and clip_skip == 1 and all(is_plain(p) and all(len(c) == 1 for c in s) for p, s in zip(parsed, split)):
        return {"prompt": plain_text(parsed[0]), "negative_prompt": plain_text(parsed[1]) or None}
    import torch
    dual = len(encoders) == 2  # a second, projecting encoder (its pooled output conditions too)
    length = max(len(c) for s in split for c in s)
    embeds, pooled = [], []
    for chunk_lists in split:
        per_encoder = []
        for (tokenizer, encoder), parts in zip(encoders, chunk_lists):
            parts = parts + [Chunk([], [])] * (length - len(parts))
            hidden, first_pooled = _encode(tokenizer, encoder, parts, clip_skip, dual)
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


def _encode(tokenizer: Any, encoder: Any, parts: list[Chunk], clip_skip: int, dual: bool):
    """Concatenated hidden states of every chunk, and the pooled output of the first."""
    import torch
    from diffusers.utils.torch_utils import get_module_execution_device
    device = get_module_execution_device(encoder)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    hidden, pooled = [], None
    for part in parts:
        ids = [bos] + part.tokens + [eos] + [pad] * (CHUNK - len(part.tokens))
        weights = torch.tensor([1.0] + part.weights + [1.0] * (CHUNK + 1 - len(part.tokens)))
        out = encoder(torch.tensor([ids], device=device), output_hidden_states=True)
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
