"""Regenerate the CLIP tokenizer files shipped under pipelines/configs/ (no network, stdlib only).

SD1.5 and SDXL both use OpenAI CLIP's byte-level BPE (vocabulary 49408). Its source is
``bpe_simple_vocab_16e6.txt.gz`` (sha256 924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a),
which the PyPI package ``open_clip_torch`` ships as ``open_clip/bpe_simple_vocab_16e6.txt.gz``::

    pip download --no-deps open_clip_torch -d /tmp/oc
    python -m zipfile -e /tmp/oc/open_clip_torch-*.whl /tmp/oc/x
    python pipelines/configs/make_tokenizer.py /tmp/oc/x/open_clip/bpe_simple_vocab_16e6.txt.gz

``vocab.json`` and ``merges.txt`` are built the way OpenAI's ``SimpleTokenizer`` (and so Hugging Face's
``openai/clip-vit-large-patch14`` tokenizer) builds its encoder: the 256 byte characters in
``bytes_to_unicode`` order, the same with ``</w>``, one token per merge (the first 49152-256-2 = 48894
merge lines after the header), then ``<|startoftext|>`` and ``<|endoftext|>``.
SDXL's second tokenizer is the same vocabulary with ``!`` as its padding token.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
N_MERGES = 49152 - 256 - 2
VOCAB_SIZE = 49408
SPECIALS = ("<|startoftext|>", "<|endoftext|>")
# folder -> padding token
TARGETS = {"sd15/tokenizer": "<|endoftext|>", "sdxl/tokenizer": "<|endoftext|>", "sdxl/tokenizer_2": "!"}


def bytes_to_unicode() -> dict[int, str]:
    """OpenAI CLIP's reversible byte -> printable-character map, in its own (insertion) order."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def build(source: Path) -> tuple[dict[str, int], list[str]]:
    data = source.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != SOURCE_SHA256:
        raise SystemExit(f"{source}: sha256 {digest}, expected {SOURCE_SHA256}")
    lines = gzip.decompress(data).decode("utf-8").split("\n")
    merges = lines[1:N_MERGES + 1]  # line 0 is the "#version" header
    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m.split()) for m in merges] + list(SPECIALS)
    vocab = {token: i for i, token in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE or len(tokens) != VOCAB_SIZE:
        raise SystemExit(f"built {len(vocab)} tokens, expected {VOCAB_SIZE}")
    return vocab, merges


def write(folder: Path, vocab: dict[str, int], merges: list[str], pad: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, separators=(",", ":")), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    specials = {"bos_token": SPECIALS[0], "eos_token": SPECIALS[1], "unk_token": SPECIALS[1], "pad_token": pad}
    (folder / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n", encoding="utf-8")
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True,
              "errors": "replace", "add_prefix_space": False, **specials}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    parser.add_argument("source", type=Path, help="path to bpe_simple_vocab_16e6.txt.gz")
    args = parser.parse_args()
    vocab, merges = build(args.source)
    for name, pad in TARGETS.items():
        write(HERE / name, vocab, merges, pad)
        print(f"wrote {HERE / name} ({len(vocab)} tokens, {len(merges)} merges, pad {pad!r})")


if __name__ == "__main__":
    main()
