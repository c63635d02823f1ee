"""Plugins that raise at import, at registration (bad metadata), at preprocessing and mid-denoise; duplicate ids;
allow/deny lists. Test plugins are registered for real: a dist-info folder with entry_points.txt on sys.path."""
from __future__ import annotations

import re
import sys
import textwrap
import warnings
import uuid

import numpy as np
import pytest

import sdcompose
from sdcompose.plugins.api import API_VERSION
from sdcompose.plugins.registry import Registry

SMALL = dict(prompt="x", model="tiny-sd15", width=64, height=64, steps=2, seed=4)
TAG = uuid.uuid4().hex[:6]
PKG = f"sdc_faulty_{TAG}"  # module names unique to this run: nothing cached from elsewhere

PLUGINS = '''
import sys
import numpy as np
from PIL import Image
from sdcompose.plugins.api import API_VERSION, Adapter, Conditioner, ParamSpec

EDGES = {"sd15": "controlnet-canny-sd15", "sdxl": "controlnet-canny-sdxl"}


class Sobel(Conditioner):
    id = "sobel"
    version = "0.1"
    api_version = API_VERSION
    controlnets = EDGES
    params = (ParamSpec("gain", "float", 1.0, min=0.0, max=4.0),)

    def preprocess(self, source, ctx, params):
        grey = np.asarray(source.image.convert("L"), dtype=np.float32)
        edges = np.abs(np.diff(grey, axis=1, prepend=0)) * params["gain"]
        return Image.fromarray(np.clip(edges, 0, 255).astype(np.uint8)).convert("RGB")


class FakeCanny(Sobel):
    id = "canny"


class Dupe(Sobel):
    id = "dupe"


class BadMeta(Sobel):
    id = "badmeta"
    families = frozenset({"sd3"})


class WrongId(Sobel):
    id = "not-the-entry-point-name"


class OldApi(Sobel):
    id = "oldapi"
    api_version = "0.3"


class CrashPre(Sobel):
    id = "crashpre"

    def preprocess(self, source, ctx, params):
        return 1 / 0


class BadReturn(Sobel):
    id = "badreturn"

    def preprocess(self, source, ctx, params):
        return "not an image"


class HookyLora(Adapter):
    """An adapter whose forward hook raises at the second UNet call: a failure mid-denoise."""
    id = "lora"
    version = "0.1"
    api_version = API_VERSION
    fail_remove = False

    def __init__(self):
        self.handles = []

    def apply(self, pipe, adapters, ctx):
        if adapters:
            calls = []

            def hook(module, args, output):
                calls.append(1)
                if len(calls) == 2:
                    raise RuntimeError("hooky adapter exploded mid-denoise")
            self.handles.append(pipe.unet.register_forward_hook(hook))
        return {}

    def remove(self, pipe):
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


class StuckLora(HookyLora):
    """An adapter that changes the UNet's weights and cannot take the change back."""

    def apply(self, pipe, adapters, ctx):
        if adapters:
            import torch
            with torch.no_grad():
                next(pipe.unet.parameters()).mul_(3.0)
        return {}

    def remove(self, pipe):
        raise RuntimeError("cannot remove")
'''

BADSPEC = '''
from sdcompose.plugins.api import API_VERSION, Conditioner, ParamSpec


class BadSpec(Conditioner):
    id = "badspec"
    api_version = API_VERSION
    params = (ParamSpec("radius", "int", 99, min=0, max=8),)
'''

ENTRY_POINTS = {
    "sdc-faulty-plugins": f"""
        [sdcompose.plugins]
        sobel = {PKG}.plugins:Sobel
        canny = {PKG}.plugins:FakeCanny
        dupe = {PKG}.plugins:Dupe
        badmeta = {PKG}.plugins:BadMeta
        wrongid = {PKG}.plugins:WrongId
        oldapi = {PKG}.plugins:OldApi
        crashpre = {PKG}.plugins:CrashPre
        badreturn = {PKG}.plugins:BadReturn
        explodes = {PKG}.explodes:Thing
        explodes2 = {PKG}.explodes:OtherThing
        badspec = {PKG}.badspec:BadSpec
        exits = {PKG}.exits:Thing
        missing = {PKG}.plugins:NoSuchClass
        """,
    "sdc-other-plugins": f"""
        [sdcompose.plugins]
        dupe = {PKG}.plugins:Dupe
        """,
    "sdc-hooky-lora": f"""
        [sdcompose.plugins]
        lora = {PKG}.plugins:HookyLora
        """,
    "sdc-stuck-lora": f"""
        [sdcompose.plugins]
        lora = {PKG}.plugins:StuckLora
        """,
}


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A folder on sys.path holding the plugin module and one dist-info per test package."""
    root = tmp_path_factory.mktemp("site")
    package = root / PKG
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "plugins.py").write_text(PLUGINS)
    (package / "explodes.py").write_text("raise ImportError('explodes needs libfoo, which is not installed')\n")
    (package / "badspec.py").write_text(BADSPEC)
    (package / "exits.py").write_text("import sys\nsys.exit('a plugin calling sys.exit at import')\n")
    for name, entry_points in ENTRY_POINTS.items():
        info = root / f"{name.replace('-', '_')}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
        (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(root))
        yield root
    for module in [m for m in sys.modules if m.startswith(PKG)]:
        del sys.modules[module]


def by_id(registry: Registry) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for item in registry.describe_all():
        out.setdefault(item["id"], []).append(item)
    return out


def status(registry: Registry, plugin_id: str, package: str) -> dict:
    [item] = [d for d in by_id(registry)[plugin_id] if d["package"] == package]
    return item


def test_entry_points_are_listed_without_importing(site):
    registry = Registry(deny="sdcompose:lora,sdc-stuck-lora:lora")
    assert "sobel" in registry.entries and registry.entries["sobel"].status == "available"
    assert not any(m.startswith(f"{PKG}.") for m in sys.modules)


def test_plugin_raising_at_import_is_listed_broken_and_the_rest_keep_working(site, photo):
    registry = Registry(deny="sdc-hooky-lora:lora,sdc-stuck-lora:lora")
    explodes = status(registry, "explodes", "sdc-faulty-plugins")
    assert explodes["status"] == "broken" and "explodes needs libfoo" in explodes["error"]
    for plugin_id in ("explodes", "explodes2"):  # each names the module and every class it held
        assert f"module '{PKG}.explodes' failed to import, so every class it held is unavailable: " \
               "OtherThing (plugin 'explodes2'), Thing (plugin 'explodes')" in \
               status(registry, plugin_id, "sdc-faulty-plugins")["error"]
    exits = status(registry, "exits", "sdc-faulty-plugins")
    assert exits["status"] == "broken" and "SystemExit" in exits["error"]
    missing = status(registry, "missing", "sdc-faulty-plugins")
    assert missing["status"] == "broken" and "NoSuchClass" in missing["error"]
    assert status(registry, "sobel", "sdc-faulty-plugins")["status"] == "loaded"
    assert status(registry, "canny", "sdcompose")["status"] == "loaded"
    p = sdcompose.Pipeline(device="cpu", plugins_deny="sdc-hooky-lora:lora,sdc-stuck-lora:lora")
    with pytest.raises(sdcompose.PluginError, match="plugin 'explodes' from 'sdc-faulty-plugins' is broken: "
                                                    "ImportError: explodes needs libfoo"):
        p.generate(controls=[sdcompose.Control("explodes", photo)], **SMALL)
    assert p.generate(controls=[sdcompose.Control("sobel", photo, params={"gain": 2})], **SMALL).images


@pytest.mark.parametrize("plugin_id,match", [
    ("badmeta", r"families \['sd3'\] must be a non-empty subset"),
    ("wrongid", "declares id 'not-the-entry-point-name' but its entry point is named 'wrongid'"),
    ("oldapi", f"written for plugin API 0.3; this sdcompose provides {re.escape(API_VERSION)}"),
])
def test_plugin_with_bad_metadata_refused_at_registration(site, photo, plugin_id, match):
    registry = Registry(deny="sdc-hooky-lora:lora,sdc-stuck-lora:lora")
    item = status(registry, plugin_id, "sdc-faulty-plugins")
    assert item["status"] == "broken"
    with pytest.raises(sdcompose.PluginError, match=match):
        registry.get(plugin_id)


def test_a_bad_param_default_names_its_class(site):
    registry = Registry(deny="sdc-hooky-lora:lora,sdc-stuck-lora:lora")
    with pytest.raises(sdcompose.PluginError, match=f"class {PKG}.badspec.BadSpec: param 'radius' must be <= 8, "
                                                    "got 99"):
        registry.get("badspec")


def test_unknown_ids_and_allow_lists_that_switch_off_built_ins_are_warned_about(site):
    with pytest.warns(UserWarning, match="SDCOMPOSE_PLUGINS_DENY names 'sobl', which no installed plugin has "
                                         r"\(did you mean 'sobel'\?\); it has no effect"):
        Registry(deny="sobl,sdc-hooky-lora:lora,sdc-stuck-lora:lora")
    with pytest.warns(UserWarning, match="SDCOMPOSE_PLUGINS_DENY names 'nosuch-package:sobel'"):
        Registry(deny="nosuch-package:sobel,sdc-hooky-lora:lora,sdc-stuck-lora:lora")
    with pytest.warns(UserWarning, match="SDCOMPOSE_PLUGINS_ALLOW switches off every plugin it does not name, "
                                         "sdcompose's own included: canny, depth, .* are off"):
        assert Registry(allow="sobel").entries["canny"].status == "disabled"
    with pytest.warns(UserWarning, match="SDCOMPOSE_PLUGINS_ALLOW is set but empty: every plugin is switched off"):
        assert all(e.status == "disabled" for e in Registry(allow="").entries.values())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # known names, no allow list: nothing to say
        Registry(deny="sobel,sdc-other-plugins:dupe,sdc-hooky-lora:lora,sdc-stuck-lora:lora")


def test_what_cannot_run_on_this_device_is_refused_before_preprocessing(site, photo):
    p = sdcompose.Pipeline(device="cpu", plugins_deny="sdc-hooky-lora:lora,sdc-stuck-lora:lora")
    with pytest.raises(sdcompose.ValidationError, match="attention 'xformers' (needs the xformers package|runs on "
                                                        "CUDA only)"):  # not crashpre's ZeroDivisionError
        p.generate(controls=[sdcompose.Control("crashpre", photo)], attention="xformers", **SMALL)


def test_plugin_raising_at_preprocessing_fails_the_request_cleanly(site, photo, pipe):
    p = sdcompose.Pipeline(device="cpu", plugins_deny="sdc-hooky-lora:lora,sdc-stuck-lora:lora")
    with pytest.raises(sdcompose.PluginError, match="conditioner 'crashpre' failed on its input: ZeroDivisionError"):
        p.generate(controls=[sdcompose.Control("crashpre", photo)], **SMALL)
    with pytest.raises(sdcompose.PluginError, match="conditioner 'badreturn' returned str, not a PIL image"):
        p.generate(controls=[sdcompose.Control("badreturn", photo)], **SMALL)
    ours = p.generate(controls=[sdcompose.Control("canny", photo)], **SMALL).arrays[0]
    assert np.array_equal(ours, pipe.generate(controls=[sdcompose.Control("canny", photo)], **SMALL).arrays[0])


def test_plugin_raising_mid_denoise_fails_cleanly_and_the_next_request_is_clean(site, photo, pipe):
    p = sdcompose.Pipeline(device="cpu", plugins_deny="sdcompose:lora,sdc-stuck-lora:lora")
    assert p.registry.entries["lora"].package == "sdc-hooky-lora"
    with pytest.raises(sdcompose.PluginError, match="adapter plugin 'lora' failed during generation: "
                                                    "RuntimeError: hooky adapter exploded mid-denoise"):
        p.generate(loras=[sdcompose.Lora("tiny-lora-sd15")], **SMALL)
    assert np.array_equal(p.generate(**SMALL).arrays[0], pipe.generate(**SMALL).arrays[0])
    control = [sdcompose.Control("canny", photo)]
    assert np.array_equal(p.generate(controls=control, **SMALL).arrays[0],
                          pipe.generate(controls=control, **SMALL).arrays[0])


def test_adapter_that_cannot_remove_itself_gets_a_fresh_base(site, pipe):
    p = sdcompose.Pipeline(device="cpu", plugins_deny="sdcompose:lora,sdc-hooky-lora:lora")
    assert p.registry.entries["lora"].package == "sdc-stuck-lora"
    with pytest.warns(RuntimeWarning, match="could not remove its weights"):
        p.generate(loras=[sdcompose.Lora("tiny-lora-sd15")], **SMALL)
    assert "tiny-sd15" not in p._bases  # the changed weights were dropped
    with pytest.warns(RuntimeWarning):  # its remove() keeps failing; each time the base is reloaded
        assert np.array_equal(p.generate(**SMALL).arrays[0], pipe.generate(**SMALL).arrays[0])


def test_duplicate_ids_refused_naming_both_packages(site):
    registry = Registry(deny="sdc-hooky-lora:lora,sdc-stuck-lora:lora")
    fake = status(registry, "canny", "sdc-faulty-plugins")
    assert fake["status"] == "duplicate"
    assert "'sdcompose'" in fake["error"] and "'sdc-faulty-plugins'" in fake["error"]
    assert registry.entries["canny"].package == "sdcompose"  # the built-in keeps its id
    dupes = by_id(registry)["dupe"]
    assert {d["package"] for d in dupes} == {"sdc-faulty-plugins", "sdc-other-plugins"}
    assert all(d["status"] == "duplicate" for d in dupes)  # neither wins by an accident of sorting
    with pytest.raises(sdcompose.PluginError, match="'sdc-faulty-plugins'.*'sdc-other-plugins'|"
                                                    "'sdc-other-plugins'.*'sdc-faulty-plugins'"):
        registry.get("dupe")
    lora = by_id(registry)["lora"]
    assert {d["package"]: d["status"] for d in lora} == {"sdcompose": "loaded", "sdc-hooky-lora": "disabled",
                                                         "sdc-stuck-lora": "disabled"}


def test_a_duplicate_is_resolved_by_denying_one_package(site):
    registry = Registry(deny="sdc-other-plugins:dupe,sdc-hooky-lora:lora,sdc-stuck-lora:lora")
    assert registry.get("dupe").id == "dupe"
    assert registry.entries["dupe"].package == "sdc-faulty-plugins"
    registry = Registry(deny="sdcompose:canny,sdc-hooky-lora:lora,sdc-stuck-lora:lora")
    assert registry.entries["canny"].package == "sdc-faulty-plugins"


def test_allow_and_deny_lists(site, photo, monkeypatch):
    registry = Registry(allow="canny,lora")
    assert registry.entries["sobel"].status == "disabled" and registry.entries["canny"].package == "sdcompose"
    with pytest.raises(sdcompose.PluginError, match="plugin 'sobel' from 'sdc-faulty-plugins' is disabled"):
        registry.get("sobel")
    monkeypatch.setenv("SDCOMPOSE_PLUGINS_DENY", "sobel,sdc-hooky-lora:lora,sdc-stuck-lora:lora")
    assert Registry().entries["sobel"].status == "disabled"
    monkeypatch.setenv("SDCOMPOSE_PLUGINS_ALLOW", "sobel")
    monkeypatch.delenv("SDCOMPOSE_PLUGINS_DENY")
    env_allowed = Registry()
    assert env_allowed.entries["sobel"].status == "available" and env_allowed.entries["canny"].status == "disabled"
    monkeypatch.delenv("SDCOMPOSE_PLUGINS_ALLOW")
    p = sdcompose.Pipeline(device="cpu", plugins_deny="canny,sdc-hooky-lora:lora,sdc-stuck-lora:lora")
    with pytest.raises(sdcompose.PluginError, match="is disabled: disabled by the allow/deny list"):
        p.generate(controls=[sdcompose.Control("canny", photo)], **SMALL)
    p = sdcompose.Pipeline(device="cpu", plugins_allow="canny")
    with pytest.raises(sdcompose.PluginError, match="plugin 'lora' from 'sdcompose' is disabled"):
        p.generate(loras=[sdcompose.Lora("tiny-lora-sd15")], **SMALL)
    assert p.generate(controls=[sdcompose.Control("canny", photo)], **SMALL).images  # the rest works
