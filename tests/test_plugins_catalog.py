"""A plugin package that ships its own models.yaml: a ControlNet that says which conditioner it serves and an
annotator, each a real pinned entry plus a tiny stand-in, used offline from the CLI; missing ids named when the
plugin loads; a plugin's entry never replaces one already declared. The package is built here and registered
for real (a dist-info folder with entry_points.txt on the path), as a pip install would."""
from __future__ import annotations

import hashlib
import importlib
import json
import os
import subprocess
import sys
import textwrap
import warnings
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdcompose.images import fit, open_image
from sdcompose.metadata import read_png

PKG = f"sdc_edgenet_{uuid.uuid4().hex[:6]}"
PLUGIN = '''
from sdcompose.plugins.api import Conditioner


class EdgeNet(Conditioner):
    """A 3x3 filter whose kernel is a weight file (an annotator): the tiny stand-in's kernel is the identity."""
    id, api_version, version = "edgenet", "2.0", "0.1"
    families = frozenset({"sd15"})
    annotators = ("annotator-edgenet",)

    def preprocess(self, source, ctx, params):
        import numpy as np  # importing a plugin costs nothing: heavy imports where they are used
        from PIL import Image
        from safetensors.numpy import load_file
        kernel = load_file(str(ctx.weight("annotator-edgenet")))["kernel"]
        grey = np.asarray(source.image.convert("L"), np.float32)
        pad = np.pad(grey, 1, mode="edge")
        h, w = grey.shape
        out = sum(kernel[i, j] * pad[i:i + h, j:j + w] for i in range(3) for j in range(3))
        return Image.fromarray(np.clip(np.abs(out), 0, 255).round().astype(np.uint8)).convert("RGB")


class Needy(EdgeNet):
    id = "needy"
    families = frozenset({"sd15", "sdxl"})
    annotators = ("annotator-edgenet", "annotator-not-shipped")
'''
CATALOG = '''
version: 1
models:
  controlnet-edgenet-sd15:
    kind: controlnet
    family: sd15
    conditioner: edgenet
    repo: example/controlnet-edgenet-sd15
    revision: 0123456789abcdef0123456789abcdef01234567
  tiny-controlnet-edgenet-sd15:
    kind: controlnet
    family: sd15
    conditioner: edgenet
    tiny: true
    stands_in_for: controlnet-edgenet-sd15
  controlnet-needy-sd15:
    kind: controlnet
    family: sd15
    conditioner: needy
    tiny: true
  annotator-edgenet:
    kind: annotator
    repo: example/edgenet-weights
    revision: 89abcdef0123456789abcdef0123456789abcdef
    filename: edgenet.safetensors
    sha256: {real}
  tiny-annotator-edgenet:
    kind: annotator
    file: tiny-edgenet.safetensors
    sha256: {tiny}
    stands_in_for: annotator-edgenet
  tiny-sd15:
    kind: base
    family: sd15
    tiny: true
    description: a plugin trying to replace a shipped id
'''


def cli(*args, site):
    env = os.environ | {"SDCOMPOSE_DEBUG": "", "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "sdcompose.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=600)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    from safetensors.numpy import save_file
    root = tmp_path_factory.mktemp("site")
    package = root / PKG
    package.mkdir()
    (package / "__init__.py").write_text(PLUGIN)
    identity = np.zeros((3, 3), np.float32)
    identity[1, 1] = 1.0
    save_file({"kernel": identity}, str(package / "tiny-edgenet.safetensors"))
    info = root / "sdc_edgenet-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: sdc-edgenet\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(f"""
        [sdcompose.plugins]
        edgenet = {PKG}:EdgeNet
        needy = {PKG}:Needy

        [sdcompose.models]
        sdc-edgenet = {PKG}
        """))
    return root


def test_models_hash_prints_what_the_entry_needs_and_the_package_works_offline_from_the_cli(site, photo, tmp_path):
    weights = site / PKG / "tiny-edgenet.safetensors"
    run = cli("models", "hash", weights, site=site)
    assert run.returncode == 0, run.stderr
    digest, size = run.stdout.split()[:2]
    assert digest == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert int(size.replace(",", "")) == weights.stat().st_size
    (site / PKG / "models.yaml").write_text(CATALOG.format(real="ab" * 32, tiny=digest))

    listed = cli("plugins", "list", site=site)
    rows = {line.split()[0]: line for line in listed.stdout.splitlines()}
    assert rows["edgenet"].split()[:5] == ["edgenet", "conditioner", "sd15", "loaded", "sdc-edgenet"], listed.stdout
    assert "broken" in rows["needy"] and ("needs models.yaml entries that are missing: a sdxl ControlNet saying "
                                          "`conditioner: needy`, annotator 'annotator-not-shipped'; add them to ") \
        in rows["needy"] and "no-user-models.yaml (SDCOMPOSE_MODELS_YAML) or the plugin package's own models.yaml" \
        in rows["needy"]
    assert f"{site / PKG / 'models.yaml'}: model 'tiny-sd15' is already declared in " in listed.stderr

    models = cli("models", "list", site=site).stdout
    assert "tiny-controlnet-edgenet-sd15" in models and "annotator-edgenet" in models

    out = tmp_path / "edges.png"
    run = cli("generate", "--model", "tiny-sd15", "--control", f"edgenet={photo}", "-W", "64", "-H", "64",
              "--steps", "2", "--seed", "3", "-o", out, site=site)
    assert run.returncode == 0, run.stderr
    meta, inputs = read_png(out)
    assert set(meta["models"]) == {"tiny-sd15", "tiny-controlnet-edgenet-sd15"}
    assert meta["plugins"]["edgenet"] == {"version": "0.1", "package": "sdc-edgenet", "api_version": "2.0"}
    grey = fit(Image.open(photo).convert("L").convert("RGB"), 64, 64, "crop_and_resize")
    assert np.array_equal(np.asarray(open_image(inputs["control-0"]).convert("RGB")), np.asarray(grey))  # the stand-in's kernel



def test_a_plugins_entry_is_overlaid_by_the_users_file(site, tmp_path, monkeypatch):
    from sdcompose.pipelines.catalog import Catalog
    from sdcompose.pipelines.plugin_models import default_controlnet
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    if not (site / PKG / "models.yaml").is_file():
        (site / PKG / "models.yaml").write_text(CATALOG.format(real="ab" * 32, tiny="cd" * 32))
    user = tmp_path / "user.yaml"
    user.write_text(json.dumps({"version": 1, "models": {"controlnet-mine-sd15": {
        "kind": "controlnet", "family": "sd15", "conditioner": "edgenet", "path": "mine"}}}))
    with pytest.warns(UserWarning, match="model 'tiny-sd15' is already declared"):
        catalog = Catalog(user)
    assert catalog.entries["tiny-sd15"].description != "a plugin trying to replace a shipped id"
    assert catalog.serving("edgenet", "sd15", tiny=False).id == "controlnet-mine-sd15"  # the latest file wins
    assert catalog.serving("edgenet", "sd15", tiny=True).id == "tiny-controlnet-edgenet-sd15"
    plugin = type("Probe", (), {"id": "edgenet", "controlnets": {}})()
    assert default_controlnet(catalog, plugin, catalog.get("tiny-sd15")) == "tiny-controlnet-edgenet-sd15"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        catalog = Catalog()  # without the user's entry, a real base gets the plugin's pinned ControlNet
    assert default_controlnet(catalog, plugin, catalog.entries["tiny-sd15"].model_copy(update={"tiny": False})) \
        == "controlnet-edgenet-sd15"
    assert catalog.local("tiny-edgenet.safetensors", "tiny-annotator-edgenet") == \
        (site / PKG / "tiny-edgenet.safetensors").resolve()  # a plugin's files resolve inside its package
