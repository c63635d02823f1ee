"""A1111 prompt syntax end to end: emphasis, long prompts, BREAK, <lora:...> tags, clip skip, literal prompts."""
from __future__ import annotations

import pytest
import torch

import sdcompose
from conftest import max_diff
from sdcompose.errors import ModelError, ValidationError
from sdcompose.pipelines import prompt_encode
from sdcompose.prompt_syntax import lora_tags, parse

RUN = dict(width=64, height=64, steps=2, seed=11, guidance=6.0)
LONG = ", ".join(["a small cat on a wooden table"] * 4)  # about 120 tokens for the tiny tokenizer


def image(pipe, prompt, **kw):
    return pipe.generate(prompt, **({"model": "tiny-sd15"} | RUN | kw)).arrays[0]


@pytest.mark.parametrize("model", ["tiny-sd15", "tiny-sdxl"])
def test_emphasis_changes_the_image(pipe, model):
    plain, weighted = image(pipe, "a cat, red", model=model), image(pipe, "a cat, (red:1.5)", model=model)
    assert max_diff(plain, weighted) > 1e-3
    assert max_diff(image(pipe, "a cat, (red:1.0)", model=model), plain) == 0  # weight 1 is the plain prompt


@pytest.mark.parametrize("model", ["tiny-sd15", "tiny-sdxl"])
def test_words_after_token_77_count(pipe, model):
    tokenizer = pipe.diffusers_pipeline(model=model).tokenizer
    assert prompt_encode.token_counts(tokenizer, LONG)["tokens"] > 80
    red, blue = image(pipe, LONG + ", red", model=model), image(pipe, LONG + ", blue dragon, underwater", model=model)
    assert max_diff(red, blue) > 1e-3


@pytest.mark.parametrize("model", ["tiny-sd15", "tiny-sdxl"])
def test_embeddings_of_a_plain_prompt_equal_diffusers(pipe, model):
    """The prompt_embeds path, forced on a plain prompt, gives diffusers' own embeddings (and pooled ones)."""
    dp = pipe.diffusers_pipeline(model=model)
    with torch.inference_mode():
        ours = prompt_encode.arguments(dp, "a red fox", "blurry", embeds=True)
        ours_skip = prompt_encode.arguments(dp, "a red fox", "blurry", clip_skip=2, embeds=True)
        if model == "tiny-sdxl":
            theirs = dp.encode_prompt("a red fox", device="cpu", negative_prompt="blurry")
            theirs_skip = dp.encode_prompt("a red fox", device="cpu", negative_prompt="blurry", clip_skip=1)
            names = ["prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds"]
            pairs = [(ours[n], t) for n, t in zip(names, theirs)] + [(ours_skip["prompt_embeds"], theirs_skip[0])]
        else:
            theirs = dp.encode_prompt("a red fox", "cpu", 1, True, negative_prompt="blurry")
            ids = dp.tokenizer("a red fox", padding="max_length", max_length=77, return_tensors="pt").input_ids
            penultimate = dp.text_encoder(ids, output_hidden_states=True).hidden_states[-2]
            skipped = dp.text_encoder.final_layer_norm(penultimate)  # diffusers' own clip_skip path, which
            # reaches for text_model.final_layer_norm, fails on this transformers version
            pairs = [(ours["prompt_embeds"], theirs[0]), (ours["negative_prompt_embeds"], theirs[1]),
                     (ours_skip["prompt_embeds"], skipped)]
    for mine, reference in pairs:
        assert mine.shape == reference.shape and torch.equal(mine, reference)


def test_long_prompt_chunks_and_token_counts(pipe):
    tokenizer = pipe.diffusers_pipeline(model="tiny-sd15").tokenizer
    counts = prompt_encode.token_counts(tokenizer, LONG + " BREAK (dog:1.2) <lora:tiny-lora-sd15:0.5>")
    assert len(counts["chunks"]) == 3 and counts["limit"] == 225 and counts["label"] == f"{counts['tokens']}/225"
    assert all(n <= 75 for n in counts["chunks"]) and counts["chunks"][-1] == 3  # "dog"; the tag is not counted
    assert prompt_encode.token_counts(tokenizer, "")["label"] == "0/75"
    assert pipe.token_counts(LONG, model="tiny-sd15")["label"] == f"{prompt_encode.token_counts(tokenizer, LONG)['tokens']}/150"
    with torch.inference_mode():
        kw = prompt_encode.arguments(pipe.diffusers_pipeline(model="tiny-sd15"), LONG, "")
    assert kw["prompt_embeds"].shape[1] == kw["negative_prompt_embeds"].shape[1] == 2 * 77  # negative padded


def test_break_starts_a_new_chunk(pipe):
    assert max_diff(image(pipe, "a cat BREAK red"), image(pipe, "a cat red")) > 1e-3


def test_lora_tag_equals_lora_argument(pipe):
    tagged = image(pipe, "a cat <lora:tiny-lora-sd15:0.8>")
    given = pipe.generate("a cat", loras=[sdcompose.Lora("tiny-lora-sd15", 0.8)], model="tiny-sd15", **RUN)
    assert max_diff(tagged, given.arrays[0]) == 0
    assert given.metadata["adapter_reports"]["lora"]
    assert max_diff(tagged, image(pipe, "a cat")) > 1e-3


def test_clip_skip_and_literal_prompts(pipe):
    assert max_diff(image(pipe, "a cat", clip_skip=2), image(pipe, "a cat")) > 1e-3
    literal = image(pipe, "a (cat:1.5)", prompt_syntax="literal")
    assert max_diff(literal, image(pipe, "a (cat:1.5)")) > 1e-3
    assert max_diff(literal, image(pipe, r"a \(cat:1.5\)")) == 0  # escaped brackets are the literal text
    with pytest.raises(ValidationError, match="clip skip 5 is more than"):
        image(pipe, "a cat", clip_skip=5)


def test_parser_matches_a1111():
    assert parse("a (b) [c] (d:1.5) \\(e\\)") == [("a ", 1.0), ("b", 1.1), (" ", 1.0), ("c", 1 / 1.1), (" ", 1.0),
                                                  ("d", 1.5), (" (e)", 1.0)]
    assert parse("((a:1.2) b)") == [("a", pytest.approx(1.32)), (" b", 1.1)]
    assert parse("x BREAK y") == [("x", 1.0), ("BREAK", -1.0), ("y", 1.0)]
    assert parse("(a:1.5)", "literal") == [("(a:1.5)", 1.0)]
    assert lora_tags("a <lora:x:0.5>, b <lora:y>") == ("a , b ", [("x", 0.5), ("y", 1.0)])


@pytest.mark.parametrize("prompt,message", [
    ("a (cat", r"'\(' at character 3 that is never closed"),
    ("a cat]", r"'\]' at character 6 with no '\['"),
    ("a (cat:1.2.3)", "is not a number"),
    ("a <lora:tiny-lora-sd15:heavy>", "weight that is not a number"),
    ("a <lora:tiny-lora-sd15:9>", "weight must be between -4 and 4"),
    ("a <hypernet:h:1>", "not supported here"),
])
def test_bad_prompts_are_one_sentence(pipe, prompt, message):
    with pytest.raises(ValidationError, match=message) as info:
        image(pipe, prompt)
    assert "\n" not in str(info.value)


def test_unknown_lora_tag_suggests(pipe):
    with pytest.raises(ModelError, match=r"<lora:tiny-lora-sd51> names no LoRA.*did you mean 'tiny-lora-sd15'"):
        image(pipe, "a cat <lora:tiny-lora-sd51:0.8>")
    with pytest.raises(ModelError, match="asked for twice"):
        pipe.generate("a <lora:tiny-lora-sd15>", loras=[sdcompose.Lora("tiny-lora-sd15")], model="tiny-sd15", **RUN)


HOSTILE = r"""
import sdcompose
from sdcompose.errors import SdcomposeError
from sdcompose.pipelines.resolve import resolve
from sdcompose.request import GenerationRequest
pipe = sdcompose.Pipeline(device="cpu")
out = []
for prompt in ["(" * 20000, "a]" * 10000, "(a:" * 6000, "((a:1.1)" * 2500, "\\" * 19998 + "(", "[" * 9999 + "]" * 10001,
               "<lora:" + "x" * 19990 + ">", "<lora:tiny-lora-sd51:1>" * 800, "embedding:" + "q" * 19990, "(a)" * 6000]:
    try:
        resolve(GenerationRequest(prompt=prompt, model="tiny-sd15"), pipe.catalog, pipe.registry)
        out.append("ok")
    except SdcomposeError as exc:
        out.append(str(exc))
emit(out)
"""


def test_hostile_prompts_under_a_memory_limit():
    """Deep, unbalanced and huge bracket runs, long tags and names: one sentence each (or fine), bounded."""
    from bounded import run_bounded
    out = run_bounded(HOSTILE, memory_mb=1500, cpu_s=120)
    assert out[0].startswith("the prompt has a '(' at character 20000 that is never closed")
    assert out[1].startswith("the prompt has a ']' at character 2 with no '['")
    assert "never closed" in out[2] and "never closed" in out[3]
    assert out[4].startswith("the prompt has a '(' at character 19999")  # the escapes pair up; the last bracket is open
    assert out[5].startswith("the prompt has a ']' at character 19999 with no '['")
    assert "names no LoRA" in out[6] and len(out[6]) < 400
    assert "<lora:tiny-lora-sd51> names no LoRA" in out[7] and "did you mean 'tiny-lora-sd15'" in out[7]
    assert "names no textual-inversion embedding" in out[8] and len(out[8]) < 400
    assert out[9] == "ok"
    assert all("\n" not in line for line in out)
