"""Model families: one file each, found through entry points (group ``sdcompose.families``). A third family
from a test package is listed with the plugins, accepted in models.yaml, and refused cleanly where it has
no models."""
from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import textwrap

import pytest

from sdcompose.errors import ModelError
from sdcompose.pipelines import families

TOY = '''
from sdcompose.pipelines.families import Family
from sdcompose.pipelines.families.sd15 import SD15

TOY = Family(name="toy", label="A toy family", pipelines=dict(SD15.pipelines), preview=SD15.preview,
             hub_patterns=SD15.hub_patterns, vae_scaling=0.5, size_multiple=16)  # no tiny test models
'''
SHAPE = "from sdcompose.pipelines.families import Family\nNOT_A_FAMILY = 'just text'\n"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A folder for PYTHONPATH with the family module and a dist-info registering it (and a broken one)."""
    root = tmp_path_factory.mktemp("family-site")
    (root / "toyfamily.py").write_text(TOY)
    (root / "shapeless.py").write_text(SHAPE)
    info = root / "toy_family-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-family\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[sdcompose.families]\ntoy = toyfamily:TOY\nshapeless = shapeless:NOT_A_FAMILY\n")
    (root / "toy.yaml").write_text(textwrap.dedent("""\
        version: 1
        models:
          toy-base:
            kind: base
            family: toy
            tiny: true
        """))
    return root


def cli(site, *args):
    env = os.environ | {"SDCOMPOSE_DEBUG": "", "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "sdcompose.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=600)


def test_the_shipped_families_answer_what_the_code_asks():
    assert families.names() == ("sd15", "sdxl")
    import diffusers
    for name in families.names():
        family = families.get(name)
        for task in families.TASKS:
            for controlnets in (False, True):
                cls = family.pipeline_class(task, controlnets)
                assert issubclass(cls, diffusers.DiffusionPipeline)
                if controlnets:
                    assert family.control_image_args[task] in inspect.signature(cls.__call__).parameters
        assert family.controlnet_model() is diffusers.ControlNetModel
        assert len(family.preview[0]) == family.latent_channels and family.denoiser == "unet"
    assert families.shipped_configs() == {"sd15": families.get("sd15"), "sdxl": families.get("sdxl")}


def test_an_unknown_family_is_one_sentence():
    with pytest.raises(ModelError, match=r"^no model family 'sd3' \(installed: sd15, sdxl\)$"):
        families.get("sd3")


def test_a_third_family_is_listed_accepted_and_refused_where_it_has_no_models(site, tmp_path):
    run = cli(site, "plugins", "list", "--json")
    assert run.returncode == 0, run.stderr
    rows = {row["id"]: row for row in json.loads(run.stdout)}
    assert (rows["toy"]["kind"], rows["toy"]["status"], rows["toy"]["package"]) == ("family", "loaded", "toy-family")
    assert rows["sd15"]["kind"] == "family" and rows["canny"]["kind"] == "conditioner"
    assert rows["shapeless"]["status"] == "broken" and "is not a Family named 'shapeless'" in rows["shapeless"]["error"]

    listed = cli(site, "models", "list", "--models", site / "toy.yaml")
    assert listed.returncode == 0 and "toy-base" in listed.stdout, listed.stderr
    made = cli(site, "generate", "x", "-m", "toy-base", "--models", site / "toy.yaml", "-W", "64", "-H", "64",
               "--steps", "1", "-o", tmp_path / "toy.png")
    assert made.returncode == 2 and made.stderr.strip().splitlines() == [
        "sdcompose: error: model 'toy-base': the toy family has no tiny test models; point models.yaml at real weights"]
    odd = cli(site, "generate", "x", "-m", "toy-base", "--models", site / "toy.yaml", "-W", "72", "-H", "64", "-q")
    assert odd.stderr.strip() == "sdcompose: error: width must be a multiple of 16 for toy models, got 72 (try 64)"

    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nmodels:\n  b:\n    kind: base\n    family: sd3\n    tiny: true\n")
    refused = cli(site, "models", "list", "--models", bad)
    assert refused.returncode == 2 and "family 'sd3' is not one of sd15, sdxl, toy" in refused.stderr
    assert not (tmp_path / "toy.png").exists()
