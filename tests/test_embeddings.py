"""Textual-inversion embeddings used by name, as AUTOMATIC1111 uses them (SD1.5 and SDXL).

The stand-ins are tiny random vectors written in the real file formats: A1111/kohya's ``emb_params``
safetensors, a flattened ``string_to_param.*`` one, and SDXL's ``clip_l``/``clip_g``. The encoding is
checked against diffusers' own ``load_textual_inversion`` on a copy of the pipeline.
"""
from __future__ import annotations

import copy
import json

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import sdcompose
from conftest import max_diff
from sdcompose.errors import CatalogError, ModelError
from sdcompose.pipelines import embeddings, prompt_encode

RUN = dict(width=64, height=64, steps=2, seed=11, guidance=6.0)
SD15 = {"modelspec.architecture": "stable-diffusion-v1/textual-inversion"}


def vectors(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 3


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """An ``embeddings`` folder as A1111 keeps it."""
    root = tmp_path_factory.mktemp("embeddings")
    save_file({"emb_params": vectors(1, 2, 32)}, root / "tinyemb.safetensors", metadata=SD15)
    save_file({"string_to_param.*": vectors(2, 3, 32)}, root / "old-style.safetensors", metadata=SD15)
    save_file({"clip_l": vectors(3, 2, 32), "clip_g": vectors(4, 2, 48)}, root / "tinyxl.safetensors")
    (root / "pickled.pt").write_bytes(b"\x80\x04K\x01.")
    return root


@pytest.fixture(scope="module")
def ti(folder):
    return sdcompose.Pipeline(device="cpu", folders=folder)


def image(pipe, prompt, model="tiny-sd15", **kw):
    return pipe.generate(prompt, model=model, **(RUN | kw)).arrays[0]


def loaded(pipe, model, prompt):
    dp = pipe.diffusers_pipeline(model=model)
    _, wanted = embeddings.used(pipe.catalog, pipe.catalog.get(model), [prompt])
    return dp, embeddings.load(dp, wanted, pipe.loader.verified_path)


@pytest.mark.parametrize("model, name, files", [("tiny-sd15", "tinyemb", ["emb_params"]),
                                                ("tiny-sd15", "old-style", ["string_to_param.*"]),
                                                ("tiny-sdxl", "tinyxl", ["clip_l", "clip_g"])])
def test_embedding_equals_diffusers_textual_inversion(ti, folder, model, name, files):
    from safetensors.torch import load_file
    prompt = f"a cat, {name} on a mat"
    dp, found = loaded(ti, model, prompt)
    assert list(found) == [name]
    with torch.inference_mode():
        ours = prompt_encode.arguments(dp, prompt, "", embeds=True, embeddings=found)
    reference = copy.deepcopy(dp)
    data = load_file(folder / f"{name}.safetensors")
    if model == "tiny-sdxl":  # diffusers' documented SDXL way: each encoder gets its own vectors
        reference.load_textual_inversion(data["clip_l"], token=name)
        reference.load_textual_inversion(data["clip_g"], token=name, text_encoder=reference.text_encoder_2,
                                         tokenizer=reference.tokenizer_2)
        with torch.inference_mode():
            theirs = reference.encode_prompt(prompt, device="cpu", do_classifier_free_guidance=False)
        pairs = [(ours["prompt_embeds"], theirs[0]), (ours["pooled_prompt_embeds"], theirs[2])]
    else:
        reference.load_textual_inversion(data[files[0]], token=name)
        with torch.inference_mode():
            theirs = reference.encode_prompt(prompt, "cpu", 1, False)
        pairs = [(ours["prompt_embeds"], theirs[0])]
    for mine, expected in pairs:
        assert mine.shape == expected.shape and torch.allclose(mine, expected, atol=1e-6)


@pytest.mark.parametrize("model, name", [("tiny-sd15", "tinyemb"), ("tiny-sdxl", "tinyxl")])
def test_embedding_changes_the_pixels_and_takes_emphasis(ti, pipe, model, name):
    used = image(ti, f"a cat, {name}", model)
    assert max_diff(used, image(pipe, f"a cat, {name}", model)) > 1e-3  # without the file, the name is text
    assert max_diff(image(ti, f"a cat, ({name}:1.6)", model), used) > 1e-3
    assert max_diff(image(ti, f"a cat, {name.upper()}", model), used) == 0  # case ignored, as CLIP lowercases
    assert max_diff(image(ti, f"a cat, {name}x", model), image(pipe, f"a cat, {name}x", model)) == 0  # not a word
    assert max_diff(image(ti, "a cat", model, negative_prompt=name), image(pipe, "a cat", model, negative_prompt=name)) \
        > 1e-3  # in the negative prompt too


def test_embedding_counts_its_vectors_and_stays_in_one_chunk(ti):
    tokenizer = ti.diffusers_pipeline(model="tiny-sd15").tokenizer
    base = ti.token_counts("a cat", model="tiny-sd15")["tokens"]
    assert ti.token_counts("a cat old-style", model="tiny-sd15")["tokens"] == base + 3
    dp, found = loaded(ti, "tiny-sd15", "old-style")
    text = "x" * 73 + " old-style"  # 73 tokens, then 3 vectors that do not fit: they start the next chunk
    parts = prompt_encode.chunks(tokenizer, [(text, 1.0)], found)
    assert [len(p.tokens) for p in parts] == [73, 3] and all(v is not None for v in parts[1].vectors)


def test_metadata_infotext_and_reproduce(ti, tmp_path):
    result = ti.generate("a cat, tinyemb", negative_prompt="old-style", model="tiny-sd15", **RUN)
    models = result.metadata["models"]
    assert models["tinyemb"]["kind"] == models["old-style"]["kind"] == "embedding"
    path = result.save(tmp_path / "ti.png")[0]
    digest = next(iter(models["tinyemb"]["sha256"].values()))
    with Image.open(path) as saved:
        text = saved.text["parameters"]
    assert f"TI hashes: \"old-style: {next(iter(models['old-style']['sha256'].values()))[:12]}, tinyemb: " \
           f"{digest[:12]}\"" in text
    again = ti.reproduce(path)
    assert max_diff(again.arrays[0], result.arrays[0]) == 0
    assert json.loads(json.dumps(again.metadata["models"]))["tinyemb"] == models["tinyemb"]


def test_a1111_ti_hashes_are_kept_or_listed_as_dropped(ti, tmp_path):
    from sdcompose import infotext
    text = ("a cat, tinyemb\nNegative prompt: easynegative\nSteps: 2, Sampler: Euler, CFG scale: 6, Seed: 3, "
            "Size: 64x64, Model: tiny-sd15, TI hashes: \"tinyemb: 0123456789ab, tinyem: c74b4e810b03\"")
    restored = ti.restored(infotext.Found("AUTOMATIC1111", {"parameters": text}))
    assert restored.fields["prompt"] == "a cat, tinyemb"
    dropped = [d for d in restored.dropped if d.startswith("TI hashes")]
    assert dropped == ["TI hashes: tinyem (no such embedding here; did you mean 'tinyemb'?)"]


def test_comfyui_embedding_syntax_and_unknown_names(ti):
    assert max_diff(image(ti, "a cat, embedding:tinyemb.safetensors"), image(ti, "a cat, tinyemb")) == 0
    with pytest.raises(ModelError, match=r"embedding:tinyemx names no textual-inversion embedding.*did you mean "
                                         r"'tinyemb'") as info:
        image(ti, "a cat, embedding:tinyemx")
    assert "\n" not in str(info.value)
    with pytest.raises(ModelError, match=r"embedding:tinyxl names no textual-inversion embedding for sd15 \(it is "
                                         r"sdxl"):
        image(ti, "a cat, embedding:tinyxl")
    assert max_diff(image(ti, "a cat, tinyxl"), image(sdcompose.Pipeline(device="cpu"), "a cat, tinyxl")) == 0
    base = ti.catalog.get("tiny-sd15")
    assert embeddings.used(ti.catalog, base, ["a (embedding:1.2) map"]) == (["a (embedding:1.2) map"], {})  # emphasis


def test_literal_prompts_use_no_embeddings(ti, pipe):
    assert max_diff(image(ti, "a cat, tinyemb", prompt_syntax="literal"),
                    image(pipe, "a cat, tinyemb", prompt_syntax="literal")) == 0


@pytest.mark.parametrize("content, message", [
    ({"emb_params": torch.zeros(2, 768)}, r"shape \(2, 768\) for one text encoder; this model's text encoders take "
                                          "width 32: is it for another model family\\?"),
    ({"a": torch.zeros(1, 32), "b": torch.zeros(1, 32)}, "holds a, b, not an embedding's vectors"),
    ({"emb_params": torch.zeros(80, 32)}, "holds 80 vectors; an embedding needs 1 to 75"),
])
def test_bad_embedding_files_are_one_sentence(tmp_path, home, content, message):
    models = home / "models" / "ti-bad"
    models.mkdir(parents=True, exist_ok=True)
    save_file(content, models / "bad.safetensors")
    yaml = tmp_path / "models.yaml"
    yaml.write_text("version: 1\nmodels:\n  bademb:\n    kind: embedding\n    family: sd15\n    path: ti-bad/bad.safetensors\n")
    with pytest.raises(ModelError, match=message) as info:
        image(sdcompose.Pipeline(models=yaml, device="cpu"), "a cat, bademb")
    assert "\n" not in str(info.value)


def test_pickled_embeddings_are_refused_unread(ti, tmp_path):
    rows = {f.relative: f.status for f in ti.catalog.index.scans[0].found}
    assert "pickled weights" in rows["pickled.pt"] and "pickled" not in ti.catalog.entries
    yaml = tmp_path / "models.yaml"
    yaml.write_text("version: 1\nmodels:\n  evil:\n    kind: embedding\n    family: sd15\n    path: ti/evil.pt\n"
                    "    allow_pickle: true\n")
    with pytest.raises(CatalogError, match=r"models.yaml:3: models.evil: a textual-inversion embedding is one "
                                           r"\.safetensors file .*\.pt and \.bin embeddings are pickles"):
        sdcompose.Pipeline(models=yaml, device="cpu")


def test_the_a1111_api_lists_the_embeddings_of_the_current_checkpoints_family(ti):
    from starlette.testclient import TestClient

    from sdcompose.server.app import build_app
    from sdcompose.server.jobs import JobQueue
    from sdcompose.server.service import Service
    jobs = JobQueue()
    try:
        with TestClient(build_app(Service(ti, jobs, model="tiny-sd15"))) as client:
            found = client.get("/sdapi/v1/embeddings").json()
    finally:
        jobs.close()
    assert set(found["loaded"]) == {"tinyemb", "old-style"} and set(found["skipped"]) == {"tinyxl"}
