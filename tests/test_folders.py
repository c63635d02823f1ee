"""Model folders indexed in place: an AUTOMATIC1111-style tree of tiny models used with no models.yaml entry.

The tiny sd15 base and canny ControlNet are exported as single files in the original (LDM) layout,
each with a config folder beside it (their shapes are not the real SD1.5 ones); the tiny LoRA and a
textual-inversion file carry the modelspec metadata trainers write. Images made from the scanned
folder must equal the ones made from the tiny models' own folders.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import sdcompose
from conftest import max_diff
from ldm_export import export_base, export_controlnet
from sdcompose.errors import CatalogError
from sdcompose.pipelines import folders as scanner
from sdcompose.pipelines.catalog import Catalog
from test_single_file import copy_configs

KW = dict(prompt="a lighthouse at dusk", negative_prompt="blurry", width=64, height=64, steps=2, guidance=6.0, seed=5,
          scheduler="dpmpp_2m")
SD15_LORA = {"modelspec.architecture": "stable-diffusion-v1/lora"}


def tiny_path(pipe, model_id: str) -> Path:
    return pipe.loader.path(pipe.catalog.get(model_id))


def cli(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "SDCOMPOSE_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "sdcompose.cli", *args], capture_output=True, text=True, env=env,
                          timeout=600)


@pytest.fixture(scope="module")
def tree(pipe, tmp_path_factory) -> Path:
    """An AUTOMATIC1111 install's model folders, holding tiny models and the files a real one also has."""
    root = tmp_path_factory.mktemp("webui")
    sd, lora, cn, emb = (root / "models" / "Stable-diffusion", root / "models" / "Lora", root / "models" / "ControlNet",
                         root / "embeddings")
    export_base(tiny_path(pipe, "tiny-sd15"), sd / "tinymix v1.safetensors")
    copy_configs(tiny_path(pipe, "tiny-sd15"), sd / "tinymix v1")
    export_controlnet(tiny_path(pipe, "tiny-controlnet-canny-sd15"), cn / "tinycanny.safetensors")
    copy_configs(tiny_path(pipe, "tiny-controlnet-canny-sd15"), cn / "tinycanny")
    lora.mkdir(parents=True)
    save_file(load_file(tiny_path(pipe, "tiny-lora-sd15")), lora / "tinystyle.safetensors", metadata=SD15_LORA)
    emb.mkdir()
    save_file({"emb_params": torch.randn(2, 32)}, emb / "tinyemb.safetensors",
              metadata={"modelspec.architecture": "stable-diffusion-v1/textual-inversion"})
    # what else such folders hold: previews, a pickle, an SD2 checkpoint header, garbage, links out
    Image.new("RGB", (8, 8)).save(sd / "tinymix v1.preview.png")
    (sd / "old.ckpt").write_bytes(b"\x80\x04K\x01.")
    save_file({"cond_stage_model.model.ln_final.weight": torch.zeros(1),
               "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1, 4, 1, 1)}, sd / "sd21.safetensors")
    (lora / "broken.safetensors").write_bytes(b"\xff" * 8 + b"{garbage")
    outside = tmp_path_factory.mktemp("outside") / "secret.safetensors"
    save_file({"emb_params": torch.zeros(1, 768)}, outside)
    (lora / "escape.safetensors").symlink_to(outside)
    (lora / "loop.safetensors").symlink_to(lora / "loop.safetensors")
    return root


@pytest.fixture(scope="module")
def scanned(tree):
    return sdcompose.Pipeline(device="cpu", folders=tree)


def test_scan_indexes_kinds_and_families_from_headers(tree):
    catalog = Catalog(folders=tree)
    result = catalog.index.scans[0]
    assert result.tree == "AUTOMATIC1111"
    rows = {f.relative: f for f in result.found}
    usable = {(f.id, f.kind, f.family) for f in rows.values() if f.status == "ok"}
    assert usable == {("tinymix_v1", "base", "sd15"), ("tinycanny", "controlnet", "sd15"),
                      ("tinystyle", "lora", "sd15"), ("tinyemb", "embedding", "sd15")}
    assert rows["models/Stable-diffusion/tinymix v1.safetensors"].config == tree / "models/Stable-diffusion/tinymix v1"
    assert "unsupported family SD2" in rows["models/Stable-diffusion/sd21.safetensors"].status
    assert "pickled" in rows["models/Stable-diffusion/old.ckpt"].status
    assert "not used" in rows["models/Lora/broken.safetensors"].status
    skipped = dict(result.skipped)
    assert "symlink out of the folder" in skipped["models/Lora/escape.safetensors"]
    assert "escape" not in str(catalog.entries) and "secret" not in str(catalog.entries)
    for model_id in ("tinymix_v1", "tinycanny", "tinystyle", "tinyemb"):
        assert catalog.get(model_id).found  # in the catalogue, with no models.yaml entry


def test_models_scan_previews_the_folder(tree, home):
    run = cli("models", "scan", str(tree), home=home)
    assert run.returncode == 0, run.stderr
    out = run.stdout
    assert "(AUTOMATIC1111): 4 usable of 7 model files" in out
    for line in ("tinymix_v1", "tinycanny", "tinystyle", "tinyemb", "unsupported family SD2", "pickled weights",
                 "symlink out of the folder"):
        assert line in out
    listed = cli("models", "list", "--folder", str(tree), "--kind", "embedding", home=home)
    assert listed.returncode == 0 and "tinyemb" in listed.stdout and "tiny-sd15" not in listed.stdout


def test_cli_generates_from_the_folder_with_no_models_yaml(tree, home, pipe, scanned, photo, tmp_path):
    """The must-show: checkpoint, LoRA, ControlNet and embedding straight from the A1111 tree, through the CLI;
    the embedding changes the pixels, is recorded (metadata, TI hashes) and reproduced."""
    out, prompt = tmp_path / "folder.png", KW["prompt"] + ", tinyemb"
    run = cli("generate", "-p", prompt, "-n", KW["negative_prompt"], "--folder", str(tree), "-m", "tinymix_v1",
              "--lora", "tinystyle:0.8", "--control", f"canny={photo}:model=tinycanny", "-W", "64", "-H", "64",
              "--steps", "2", "--cfg", "6", "--seed", "5", "-o", str(out), "-q", "--device", "cpu", home=home)
    assert run.returncode == 0, run.stderr
    kw = dict(KW, prompt=prompt, loras=[sdcompose.Lora("tiny-lora-sd15", 0.8)],
              controls=[sdcompose.Control("canny", photo)])
    reference = scanned.generate(model="tiny-sd15", **kw)  # the same parts from their own folders, and the embedding
    made = np.asarray(Image.open(out))
    assert max_diff(made, np.asarray(reference.images[0])) <= 1
    assert max_diff(made, np.asarray(pipe.generate(model="tiny-sd15", **kw).images[0])) > 1  # no embedding: text
    assert max_diff(made, np.asarray(pipe.generate(model="tiny-sd15", **KW).images[0])) > 5
    with Image.open(out) as image:
        meta, text = json.loads(image.text["sdcompose"]), image.text["parameters"]
    assert meta["models"]["tinyemb"]["kind"] == "embedding" and 'TI hashes: "tinyemb: ' in text
    again = tmp_path / "again.png"
    run = cli("reproduce", str(out), "--folder", str(tree), "-o", str(again), "--device", "cpu", home=home)
    assert run.returncode == 0, run.stderr
    assert max_diff(np.asarray(Image.open(again)), made) == 0


def test_lookups_by_name_and_a1111_hash(scanned, tree):
    catalog = scanned.catalog
    file = tree / "models" / "Stable-diffusion" / "tinymix v1.safetensors"
    digest = hashlib.sha256(file.read_bytes()).hexdigest()
    assert catalog.by_hash(digest[:10]).id == "tinymix_v1"
    assert catalog.by_hash(digest[:10], kind="lora") is None
    with open(file, "rb") as f:
        f.seek(0x100000)
        legacy = hashlib.sha256(f.read(0x10000)).hexdigest()[:8]
    assert catalog.by_hash(legacy, kind="base").id == "tinymix_v1"
    assert catalog.by_hash("0123456789") is None and catalog.by_hash("not hex") is None
    lora = (tree / "models" / "Lora" / "tinystyle.safetensors").read_bytes()
    data = hashlib.sha256(lora[8 + int.from_bytes(lora[:8], "little"):]).hexdigest()
    assert catalog.by_hash(data[:12], kind="lora").id == "tinystyle"
    assert catalog.find("tinymix v1", "base").id == "tinymix_v1"
    assert catalog.find("TINYSTYLE", "lora").id == "tinystyle"
    assert catalog.find("models/Lora/tinystyle").id == "tinystyle"
    assert catalog.find("nothing") is None


def test_refresh_adds_and_removes_without_restart(scanned, tree):
    lora_dir = tree / "models" / "Lora" / "styles"
    lora_dir.mkdir()
    new = lora_dir / "fresh.safetensors"
    new.write_bytes((tree / "models" / "Lora" / "tinystyle.safetensors").read_bytes())
    try:
        assert scanned.refresh() == {"added": ["fresh"], "removed": []}
        assert scanned.catalog.get("fresh", "lora").found == str(new)
        assert scanned.catalog.find("styles/fresh").id == "fresh"
    finally:
        new.unlink()
        lora_dir.rmdir()
    assert scanned.refresh() == {"added": [], "removed": ["fresh"]}
    with pytest.raises(sdcompose.ModelError, match="no model 'fresh'"):
        scanned.catalog.get("fresh")


def test_ids_never_shadow_models_yaml_and_collide_cleanly(tree, tmp_path):
    other = tmp_path / "more"
    other.mkdir()
    (other / "tiny-sd15.safetensors").write_bytes((tree / "models" / "Lora" / "tinystyle.safetensors").read_bytes())
    (other / "tinystyle.safetensors").write_bytes((tree / "models" / "Lora" / "tinystyle.safetensors").read_bytes())
    catalog = Catalog(folders=[tree, other])
    assert catalog.get("tiny-sd15").tiny and catalog.get("tiny-sd15-2").found
    assert catalog.get("tinystyle").found.startswith(str(tree)) and catalog.get("tinystyle-2").found


def test_folders_key_in_models_yaml(tree, tmp_path):
    yaml = tmp_path / "conf" / "models.yaml"
    yaml.parent.mkdir()
    link = tmp_path / "webui"
    link.symlink_to(tree)
    yaml.write_text("version: 1\nfolders:\n  - ../webui\n")
    assert Catalog(yaml).get("tinymix_v1", "base").family == "sd15"
    yaml.write_text("version: 1\nfolders: [../nowhere]\n")
    with pytest.raises(sdcompose.ModelError, match=r"model folder .*nowhere cannot be scanned \(it is not a folder\)"):
        Catalog(yaml)
    yaml.write_text(f"version: 1\nmodels:\n  x:\n    kind: lora\n    family: sd15\n    found: {tree}/a.safetensors\n")
    with pytest.raises(CatalogError, match=r"models.yaml:6: models.x.found: is set by folder scans"):
        Catalog(yaml)


def test_a_scanned_file_that_changes_kind_or_goes_is_refused_cleanly(tree, tmp_path, scanned):
    folder = tmp_path / "moving"
    folder.mkdir()
    file = folder / "gone.safetensors"
    file.write_bytes((tree / "models" / "Lora" / "tinystyle.safetensors").read_bytes())
    pipe = sdcompose.Pipeline(device="cpu", folders=folder)
    file.unlink()
    with pytest.raises(sdcompose.ModelError, match="gone.safetensors is gone or now points outside"):
        pipe.loader.path(pipe.catalog.get("gone"))


HOSTILE = r"""
import os, resource, struct, sys
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
from sdcompose.pipelines.folders import scan
root = sys.argv[1]
result = scan(root)
print(len(result.found), sum(f.status == "ok" for f in result.found), len(result.skipped))
"""


def test_hostile_folder_under_a_memory_limit(tmp_path):
    """Thousands of files, header bombs, deep nesting, loops and links out: one reason each, nothing loaded."""
    root = tmp_path / "hostile"
    many = root / "many"
    many.mkdir(parents=True)
    good = {"emb_params": torch.zeros(1, 768)}
    save_file(good, many / "ok.safetensors")
    for i in range(3000):
        (many / f"junk{i:04}.safetensors").write_bytes(b"")
    (root / "bomb.safetensors").write_bytes(struct_header(1 << 40))
    (root / "big-claim.safetensors").write_bytes(struct_header(15 * 2**20) + b"{")
    (root / "nested.safetensors").write_bytes(nested_header(200_000))
    deep = root
    for i in range(12):
        deep = deep / f"d{i}"
    deep.mkdir(parents=True)
    save_file(good, deep / "too-deep.safetensors")
    (root / "dir.safetensors").mkdir()
    (root / "dangling.safetensors").symlink_to(root / "missing")
    (root / "up").symlink_to(root)
    os.mkfifo(root / "fifo.safetensors")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    run = subprocess.run([sys.executable, "-c", HOSTILE, str(root)], capture_output=True, text=True, env=env,
                         timeout=300)
    assert run.returncode == 0 and run.stderr == "", run.stderr
    files, usable, skipped = map(int, run.stdout.split())
    assert usable == 1 and files == 3004 and skipped >= 2
    result = scanner.scan(root)
    reasons = {f.relative: f.status for f in result.found}
    assert "empty or truncated" in reasons["many/junk0000.safetensors"]
    assert "claims a 1099511627776-byte header" in reasons["bomb.safetensors"]
    assert "truncated" in reasons["big-claim.safetensors"]
    assert "unreadable header" in reasons["nested.safetensors"]
    assert any("deeper than" in why for _, why in result.skipped)
    assert ("up", "a symlinked folder, not entered") in result.skipped


def struct_header(length: int) -> bytes:
    return length.to_bytes(8, "little")


def nested_header(depth: int) -> bytes:
    body = b"[" * depth + b"]" * depth
    return struct_header(len(body) + 2) + b"{" + body + b"}"


def header(shapes: dict[str, list[int]], meta: dict | None = None) -> dict:
    out = {k: {"dtype": "F16", "shape": v, "data_offsets": [0, 0]} for k, v in shapes.items()}
    return out | ({"__metadata__": meta} if meta else {})


UNET = "model.diffusion_model."
TO_K = "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"


@pytest.mark.parametrize("shapes, meta, expected", [
    ({UNET + "input_blocks.0.0.weight": [320, 4, 3, 3], UNET + TO_K: [320, 768],
      "cond_stage_model.transformer.text_model.final_layer_norm.weight": [768]}, None, ("base", "sd15", True)),
    ({UNET + "input_blocks.0.0.weight": [320, 9, 3, 3], "cond_stage_model.transformer.x": [1]}, None,
     ("base", "SD inpainting/edit", True)),
    ({UNET + "input_blocks.0.0.weight": [320, 4, 3, 3], UNET + "input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight":
      [640, 2048], "conditioner.embedders.0.transformer.x": [1], "conditioner.embedders.1.model.x": [1]}, None,
     ("base", "sdxl", True)),
    ({UNET + "input_blocks.0.0.weight": [320, 4, 3, 3], "conditioner.embedders.0.model.x": [1]}, None,
     ("base", "SDXL refiner", True)),
    ({UNET + TO_K: [320, 1024], "cond_stage_model.model.ln_final.weight": [1024]}, None, ("base", "SD2", True)),
    ({UNET + "joint_blocks.0.x_block.attn.qkv.weight": [1, 1]}, None, ("base", "SD3", True)),
    ({"double_blocks.0.img_attn.qkv.weight": [1, 1]}, None, ("base", "Flux", True)),
    ({UNET + TO_K: [320, 768], "cond_stage_model.transformer.x": [1],
      UNET + "input_blocks.0.0.weight": [32, 4, 3, 3]}, None, ("base", "sd15", False)),
    ({"control_model.input_hint_block.0.weight": [16, 3, 3, 3], "control_model.zero_convs.0.0.weight": [1],
      "control_model.input_blocks.0.0.weight": [320, 4, 3, 3], "control_model." + TO_K: [320, 768]}, None,
     ("controlnet", "sd15", True)),
    ({"controlnet_cond_embedding.conv_in.weight": [16, 3, 3, 3], "controlnet_down_blocks.0.weight": [1],
      "add_embedding.linear_1.weight": [1280, 2816], "conv_in.weight": [320, 4, 3, 3],
      "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight": [640, 2048]}, None,
     ("controlnet", "sdxl", True)),
    ({"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": [8, 768]}, None,
     ("lora", "sd15", True)),
    ({"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": [8, 1024]}, None,
     ("lora", "SD2", True)),
    ({"lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": [8, 1280]}, None, ("lora", "sdxl", True)),
    ({"unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight": [4, 2048]}, None,
     ("lora", "sdxl", True)),
    ({"lora_unet_x.hada_w1_a": [1, 1]}, None, ("lora", None, True)),
    ({"lora_unet_x.lora_down.weight": [1, 1]}, {"ss_base_model_version": "sdxl_base_v1-0"}, ("lora", "sdxl", True)),
    ({"transformer.x.lora_A.weight": [1, 1]}, {"modelspec.architecture": "flux-1-dev/lora"}, ("lora", "Flux", True)),
    ({"emb_params": [4, 768]}, None, ("embedding", "sd15", True)),
    ({"emb_params": [4, 1024]}, None, ("embedding", "SD2", True)),
    ({"clip_l": [2, 768], "clip_g": [2, 1280]}, None, ("embedding", "sdxl", True)),
    ({"string_to_param.*": [3, 768]}, None, ("embedding", "sd15", True)),
    ({"<cat-toy>": [768]}, None, ("embedding", "sd15", True)),
    ({"encoder.down.0.block.0.conv1.weight": [1]}, None, (None, None, True)),
])
def test_header_rules(shapes, meta, expected):
    from sdcompose.pipelines.header import classify
    verdict = classify(header(shapes, meta))
    assert (verdict.kind, verdict.family, verdict.standard) == expected, verdict.why
