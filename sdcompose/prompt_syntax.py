"""AUTOMATIC1111's prompt syntax as pure text (no torch): emphasis, ``BREAK`` and ``<lora:name:weight>`` tags.

``(word)`` multiplies attention by 1.1, ``[word]`` divides it by 1.1, ``(word:1.3)`` sets a factor, ``\\(``
is a literal bracket, ``BREAK`` starts a new 75-token chunk. Unlike A1111, an unbalanced bracket is refused
(A1111 silently weights the rest of the prompt). ``pipelines/prompt_encode.py`` turns the parsed pieces
into text-encoder embeddings.
"""
from __future__ import annotations

import re

from sdcompose.errors import ValidationError

SYNTAXES = ("a1111", "literal")  # literal: no emphasis, BREAK or tags; the text as written (still chunked)
BREAK = "BREAK"
_ATTENTION = re.compile(r"""
\\\(|\\\)|\\\[|\\]|\\\\|\\|
\(|\[|
:\s*([+-]?[.\d]+)\s*\)|
\)|]|
[^\\()\[\]:]+|
:
""", re.X)
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)
TAG = re.compile(r"<(\w+):([^>]*)>")
NETWORKS = ("lora", "lyco")  # A1111 reads <lyco:...> (old LyCORIS extension) as a LoRA too


def parse(text: str, syntax: str = "a1111") -> list[tuple[str, float]]:
    """The prompt as (text, weight) pieces; a ``(BREAK, -1.0)`` piece marks a chunk break."""
    if syntax == "literal":
        return [(text, 1.0)]
    pieces: list[list] = []
    opened: list[tuple[str, int, int]] = []  # bracket, piece index, character offset

    def multiply(start: int, factor: float) -> None:
        for piece in pieces[start:]:
            if piece[1] >= 0:
                piece[1] *= factor

    for match in _ATTENTION.finditer(text):
        token, weight = match.group(0), match.group(1)
        if token.startswith("\\") and len(token) == 2:
            pieces.append([token[1:], 1.0])
        elif token in ("(", "["):
            opened.append((token, len(pieces), match.start()))
        elif weight is not None or token in (")", "]"):
            want = "[" if token == "]" else "("
            if not opened or opened[-1][0] != want:
                raise ValidationError(f"the prompt has a {token[-1]!r} at character {match.start() + 1} with no "
                                      f"{want!r} before it: add one, or write \\{token[-1]} for a literal bracket")
            _, start, _ = opened.pop()
            if weight is None:
                multiply(start, 1.1 if token == ")" else 1 / 1.1)
            else:
                try:
                    multiply(start, float(weight))
                except ValueError:
                    raise ValidationError(f"the prompt's weight {weight!r} at character {match.start() + 2} "
                                          "is not a number (write (word:1.3))") from None
        else:
            for i, part in enumerate(_BREAK.split(token)):
                if i:
                    pieces.append([BREAK, -1.0])
                pieces.append([part, 1.0])
    if opened:
        bracket, _, where = opened[-1]
        closing = ")" if bracket == "(" else "]"
        raise ValidationError(f"the prompt has a {bracket!r} at character {where + 1} that is never closed: add "
                              f"{closing!r}, or write \\{bracket} for a literal bracket")
    merged: list[tuple[str, float]] = []
    for piece_text, weight in pieces:
        if merged and weight >= 0 and merged[-1][1] == weight:
            merged[-1] = (merged[-1][0] + piece_text, weight)
        elif piece_text or weight < 0:
            merged.append((piece_text, weight))
    return merged or [("", 1.0)]


def is_plain(pieces: list[tuple[str, float]]) -> bool:
    """No emphasis and no BREAK: the text can go to diffusers as it is."""
    return all(weight == 1.0 for _, weight in pieces)


def plain_text(pieces: list[tuple[str, float]]) -> str:
    return "".join(text for text, _ in pieces)


def lora_tags(text: str, syntax: str = "a1111") -> tuple[str, list[tuple[str, float]]]:
    """The prompt without its ``<lora:name:weight>`` tags, and the (name, weight) of each tag.

    ``<lora:name>`` has weight 1; A1111's separate text-encoder/UNet weights (``<lora:name:0.8:0.5>``)
    are refused unless equal. Other ``<kind:...>`` tags (hypernetworks) are refused.
    """
    if syntax == "literal":
        return text, []
    found: list[tuple[str, float]] = []

    def take(match: re.Match) -> str:
        kind, args = match.group(1), match.group(2).split(":")
        if kind.lower() not in NETWORKS:
            raise ValidationError(f"the prompt's <{kind}:...> tag is not supported here (only <lora:name:weight>); "
                                  "remove it")
        name, weights = args[0].strip(), [a.strip() for a in args[1:] if "=" not in a]
        if not name:
            raise ValidationError(f"the prompt's tag {match.group(0)[:80]!r} names no LoRA (write <lora:name:0.8>)")
        try:
            values = [float(w) for w in weights] or [1.0]
        except ValueError:
            raise ValidationError(f"the prompt's tag {match.group(0)[:80]!r} has a weight that is not a number "
                                  "(write <lora:name:0.8>)") from None
        if len(set(values)) > 1:
            raise ValidationError(f"the prompt's tag {match.group(0)[:80]!r} gives separate text-encoder and UNet "
                                  "weights; sdcompose applies one weight per LoRA")
        found.append((name, values[0]))
        return ""

    return TAG.sub(take, text), found


def word_pattern(names) -> re.Pattern | None:
    """Where any of ``names`` (textual-inversion embeddings) stands as a whole word, case ignored (CLIP's tokenizer
    lowercases): not inside a longer run of letters and digits; the longest name wins."""
    names = sorted({n for n in names if n}, key=len, reverse=True)
    if not names:
        return None
    return re.compile(r"(?<![^\W_])(?:%s)(?![^\W_])" % "|".join(map(re.escape, names)), re.I)


def check_syntax(name: str, value: object) -> str:
    if value not in SYNTAXES:
        raise ValidationError(f"{name} must be one of {', '.join(SYNTAXES)}, got {value!r:.60}")
    return value  # type: ignore[return-value]
