"""Single `.safetensors` checkpoints in the original (LDM) layout, loaded through models.yaml `file:` entries.

The tiny diffusers-folder models are exported with tests/ldm_export.py, the exports are loaded from
single files with config folders that hold no weights, and the images must equal the folders' images.
"""
from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import sdcompose
from conftest import max_diff
from ldm_export import (controlnet_to_ldm, export_base, export_controlnet, openclip_state, save, unet_keys, vae_keys,
                        vae_tensor)
from sdcompose.pipelines.catalog import CONFIGS

SIZE, STEPS, SEED = 64, 2, 11
BASE, CONTROLNET = "single-tiny-sd15", "single-tiny-controlnet-canny-sd15"
OUT = "single-file-test"  # folder under the models root for the exported checkpoints


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def copy_configs(source: Path, target: Path) -> Path:
    """A diffusers config folder without a single weight file, so the weights can only come from the checkpoint."""
    shutil.rmtree(target, ignore_errors=True)
    for file in [*source.rglob("*.json"), *source.rglob("*.txt")]:  # configs and tokenizer files
        (target / file.relative_to(source)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(file, target / file.relative_to(source))
    assert not [p for p in target.rglob("*") if p.suffix in (".safetensors", ".bin", ".ckpt", ".pt", ".pth")]
    return target


def entry(kind: str, file: str, digest: str, config: str | None, family: str = "sd15") -> str:
    lines = [f"    kind: {kind}", f"    family: {family}", f"    file: {file}", f"    sha256: '{digest}'"]
    return "\n".join(lines + ([f"    config: {config}"] if config else []))


def write_yaml(path: Path, entries: dict[str, str]) -> Path:
    path.write_text("version: 1\nmodels:\n" + "".join(f"  {name}:\n{body}\n" for name, body in entries.items()))
    return path


def folder(pipe, model_id: str) -> Path:
    return pipe.loader.path(pipe.catalog.get(model_id))


@pytest.fixture(scope="module")
def exported(pipe, tmp_path_factory):
    """The tiny sd15 base and canny ControlNet as single files and config folders under the models root."""
    root = pipe.catalog.root
    base = export_base(folder(pipe, "tiny-sd15"), root / OUT / "tiny-sd15.safetensors")
    controlnet = export_controlnet(folder(pipe, "tiny-controlnet-canny-sd15"),
                                   root / OUT / "tiny-controlnet-canny-sd15.safetensors")
    copy_configs(folder(pipe, "tiny-sd15"), root / "configs" / "tiny-sd15")
    copy_configs(folder(pipe, "tiny-controlnet-canny-sd15"), root / "configs" / "tiny-controlnet-canny-sd15")
    yaml = write_yaml(tmp_path_factory.mktemp("single-file") / "models.yaml", {
        BASE: entry("base", f"{OUT}/tiny-sd15.safetensors", sha256(base), "configs/tiny-sd15"),
        CONTROLNET: entry("controlnet", f"{OUT}/tiny-controlnet-canny-sd15.safetensors", sha256(controlnet),
                          "configs/tiny-controlnet-canny-sd15"),
    })
    return {"yaml": yaml, "base": base, "controlnet": controlnet}


@pytest.fixture(scope="module")
def single(exported):
    return sdcompose.Pipeline(models=exported["yaml"], device="cpu")


def generate(pipeline, **kw):
    kw = dict(prompt="a lighthouse at dusk", negative_prompt="blurry", width=SIZE, height=SIZE, steps=STEPS,
              guidance=6.0, seed=SEED, scheduler="dpmpp_2m") | kw
    return pipeline.generate(**kw)


def keys_of(path: Path) -> set[str]:
    with safe_open(path, "pt") as f:
        return set(f.keys())


def test_export_uses_the_original_layout(exported):
    keys = keys_of(exported["base"])
    assert all(k.startswith(("model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer."))
               for k in keys)
    for key in ("model.diffusion_model.input_blocks.3.1.proj_in.weight",
                "model.diffusion_model.input_blocks.2.0.op.weight",
                "model.diffusion_model.middle_block.2.in_layers.0.weight",
                "model.diffusion_model.output_blocks.1.2.conv.weight",
                "first_stage_model.decoder.up.0.block.0.nin_shortcut.weight",
                "first_stage_model.encoder.mid.attn_1.q.weight",
                "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight"):
        assert key in keys, key
    keys = keys_of(exported["controlnet"])
    assert all(k.startswith("control_model.") for k in keys)
    for key in ("control_model.input_blocks.1.0.in_layers.2.weight", "control_model.zero_convs.3.0.weight",
                "control_model.input_hint_block.14.weight", "control_model.middle_block_out.0.bias"):
        assert key in keys, key


def test_single_file_base_matches_folder(pipe, single, exported):
    result = generate(single, model=BASE)
    expected = generate(pipe, model="tiny-sd15")
    assert result.arrays[0].shape == (SIZE, SIZE, 3)
    assert max_diff(result.arrays[0], expected.arrays[0]) <= 1e-5
    recorded = result.metadata["models"][BASE]
    assert recorded["source"] == f"{OUT}/tiny-sd15.safetensors"
    assert recorded["sha256"] == {"tiny-sd15.safetensors": sha256(exported["base"])}


def test_single_file_controlnet_matches_folder(pipe, single, photo):
    def control(model=None):
        return sdcompose.Control("canny", image=photo, weight=0.8, end=0.6, resize_mode="just_resize", model=model)

    result = generate(single, model=BASE, controls=[control(CONTROLNET)])
    expected = generate(pipe, model="tiny-sd15", controls=[control()])
    assert max_diff(result.arrays[0], expected.arrays[0]) <= 1e-5
    plain = generate(single, model=BASE)
    assert max_diff(result.arrays[0], plain.arrays[0]) > 1e-3, "the single-file ControlNet must change the image"


def test_wrong_sha256_is_refused(exported, tmp_path):
    real = sha256(exported["base"])
    wrong = real[:-1] + ("0" if real[-1] != "0" else "1")
    yaml = write_yaml(tmp_path / "models.yaml", {
        BASE: entry("base", f"{OUT}/tiny-sd15.safetensors", wrong, "configs/tiny-sd15")})
    with pytest.raises(sdcompose.ModelError) as info:
        generate(sdcompose.Pipeline(models=yaml, device="cpu"), model=BASE)
    message = str(info.value)
    assert str(exported["base"]) in message
    assert f"has sha256 {real[:12]}..., models.yaml expects {wrong[:12]}..." in message


@pytest.mark.parametrize("kind", ["base", "controlnet"])
def test_single_file_without_config_is_refused_at_validation(tmp_path, kind):
    yaml = write_yaml(tmp_path / "models.yaml", {
        "fine": entry("base", f"{OUT}/tiny-sd15.safetensors", "0" * 64, "sd15"),
        "no-config": entry(kind, f"{OUT}/x.safetensors", "0" * 64, None)})
    line = yaml.read_text().splitlines().index("  no-config:") + 1
    with pytest.raises(sdcompose.CatalogError) as info:
        sdcompose.Pipeline(models=yaml, device="cpu")
    message = str(info.value)
    assert message.startswith(f"{yaml}:{line}: models.no-config: ")
    assert f"single-file {kind} needs an explicit `config`" in message


def test_missing_config_folder_is_refused(exported, tmp_path):
    yaml = write_yaml(tmp_path / "models.yaml", {
        BASE: entry("base", f"{OUT}/tiny-sd15.safetensors", sha256(exported["base"]), "configs/not-there")})
    with pytest.raises(sdcompose.ModelError, match=r"`config:` folder .*configs/not-there does not exist"):
        generate(sdcompose.Pipeline(models=yaml, device="cpu"), model=BASE)


def test_shipped_pipeline_config_gives_a_controlnet_its_architecture(exported, tmp_path):
    """`config: sd15` (a pipeline folder, no top-level config.json) builds the SD1.5 ControlNet from its UNet.

    The tiny checkpoint cannot fit that architecture; the error shows the shipped config was used."""
    yaml = write_yaml(tmp_path / "models.yaml", {
        CONTROLNET: entry("controlnet", f"{OUT}/tiny-controlnet-canny-sd15.safetensors",
                          sha256(exported["controlnet"]), "sd15")})
    pipeline = sdcompose.Pipeline(models=yaml, device="cpu")
    with pytest.raises(sdcompose.ModelError, match=r"did not load: .*expected shape torch.Size\(\[1280, 320\]\)"):
        pipeline.loader.controlnet(pipeline.catalog.get(CONTROLNET), torch.float32)


def test_sdxl_export_round_trips(pipe, tmp_path):
    """SDXL in the original layout: CLIP-L under embedders.0, OpenCLIP-G (fused qkv) under embedders.1."""
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint
    from safetensors.torch import load_file

    root = pipe.catalog.root
    source = folder(pipe, "tiny-sdxl")
    file = export_base(source, root / OUT / "tiny-sdxl.safetensors")
    copy_configs(source, root / "configs" / "tiny-sdxl")
    yaml = write_yaml(tmp_path / "models.yaml", {
        "single-tiny-sdxl": entry("base", f"{OUT}/tiny-sdxl.safetensors", sha256(file), "configs/tiny-sdxl", "sdxl")})
    pipeline = sdcompose.Pipeline(models=yaml, device="cpu")
    loaded = pipeline.loader.base(pipeline.catalog.get("single-tiny-sdxl"), torch.float32)
    for name in ("unet", "vae", "text_encoder"):
        expected = load_file(next((source / name).glob("*.safetensors")))
        got = loaded[name].state_dict()
        assert set(got) >= set(expected), name
        assert all(torch.equal(got[k], v) for k, v in expected.items()), name
    # diffusers picks the loader of SDXL's second text encoder by the width of the checkpoint's CLIP-L position
    # embedding; the tiny model's two encoders are equally wide, so check the OpenCLIP half with diffusers'
    # own converter instead of through the pipeline.
    expected = load_file(source / "text_encoder_2" / "model.safetensors")
    checkpoint = load_file(file)
    got = convert_open_clip_checkpoint(loaded["text_encoder_2"], checkpoint, prefix="conditioner.embedders.1.model.")
    assert set(got) == set(expected)
    assert all(torch.equal(got[k], v) for k, v in expected.items())


def _same(back: dict, state: dict) -> None:
    """Every tensor came back under its own name: the very same object, or (for the few that a converter rebuilds:
    the VAE's attention 1x1 convs, OpenCLIP's fused qkv and transposed projection) the same shape."""
    assert set(back) == set(state)
    rebuilt = [k for k in state if back[k] is not state[k]]
    assert all(back[k].shape == state[k].shape for k in rebuilt)
    allowed = r"mid_block\.attentions\.0\.(to_[qkv]|to_out\.0)\.weight|self_attn\.[qkv]_proj|text_projection"
    assert all(re.search(allowed, k) for k in rebuilt), rebuilt


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_full_size_key_maps_invert_diffusers(family):
    """The exporter inverts diffusers' converters on the real architectures (shipped configs, meta tensors)."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from diffusers.loaders import single_file_utils as sfu
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    def empty(cls, config):
        with init_empty_weights():
            return cls.from_config(config).state_dict()

    unet_config = UNet2DConditionModel.load_config(CONFIGS / family / "unet")
    unet = empty(UNet2DConditionModel, unet_config)
    ldm = {f"model.diffusion_model.{new}": unet[old]
           for old, new in unet_keys(unet, unet_config["layers_per_block"]).items()}
    _same(sfu.convert_ldm_unet_checkpoint(ldm, unet_config), unet)

    vae_config = AutoencoderKL.load_config(CONFIGS / family / "vae")
    vae = empty(AutoencoderKL, vae_config)
    ldm = {f"first_stage_model.{new}": vae_tensor(new, vae[old])
           for old, new in vae_keys(vae, len(vae_config["up_block_types"])).items()}
    _same(sfu.convert_ldm_vae_checkpoint(ldm, vae_config), vae)

    controlnet = empty(ControlNetModel, unet_config)
    ldm = controlnet_to_ldm(controlnet, unet_config["layers_per_block"])  # every key has an original name
    if family == "sd15":  # diffusers' converter leaves an original-layout SDXL ControlNet's label_emb unmapped
        _same(sfu.convert_controlnet_checkpoint(ldm, unet_config), controlnet)

    if family == "sdxl":
        config = CLIPTextConfig.from_pretrained(CONFIGS / "sdxl" / "text_encoder_2")
        with init_empty_weights():
            model = CLIPTextModelWithProjection(config)
        state = model.state_dict()
        prefix = "conditioner.embedders.1.model."
        _same(sfu.convert_open_clip_checkpoint(model, openclip_state(state, prefix), prefix), state)


@pytest.mark.slow
def test_shipped_sd15_config_loads_a_full_size_controlnet(pipe, tmp_path):
    """A full-size SD1.5 ControlNet (random fp16 weights) in the original layout loads with `config: sd15`."""
    from accelerate import init_empty_weights
    from diffusers import ControlNetModel

    config = ControlNetModel.load_config(CONFIGS / "sd15" / "unet")
    with init_empty_weights():
        shapes = {k: v.shape for k, v in ControlNetModel.from_config(config).state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    state = {k: torch.randn(shape, generator=generator).to(torch.float16) for k, shape in shapes.items()}
    file = save(controlnet_to_ldm(state, config["layers_per_block"]),
                pipe.catalog.root / OUT / "full-size-controlnet-sd15.safetensors")
    yaml = write_yaml(tmp_path / "models.yaml", {
        "full-size-cn": entry("controlnet", f"{OUT}/full-size-controlnet-sd15.safetensors", sha256(file), "sd15")})
    pipeline = sdcompose.Pipeline(models=yaml, device="cpu")
    try:
        model = pipeline.loader.controlnet(pipeline.catalog.get("full-size-cn"), torch.float16)
        got = model.state_dict()
        assert set(got) == set(state)
        assert all(torch.equal(got[k], v) for k, v in state.items())
    finally:
        file.unlink()
