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
from bounded import run_bounded
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


class Raiser(Sobel):
    """Raises ``error`` (any BaseException) while preprocessing; ``signal`` sends itself a real SIGINT first."""
    id = "raiser"
    error = SystemExit(3)
    signal = False

    def preprocess(self, source, ctx, params):
        if self.signal:
            import signal
            # raise_signal runs the handler before it returns; os.kill could land on another of torch's threads and
            # reach the main thread only after the plugin's own error (seen once in a loaded CI run)
            signal.raise_signal(signal.SIGINT)
        raise self.error


class HugeMap(Sobel):
    id = "hugemap"

    def preprocess(self, source, ctx, params):
        return Image.new("1", (30000, 30000))  # 112 MB as bits; 2.7 GB as the RGB the pipeline would make of it


class HookyLora(Adapter):
    """An adapter whose forward hook raises ``error`` at the second UNet call: a failure mid-denoise."""
    id = "lora"
    version = "0.1"
    api_version = API_VERSION
    fail_remove = False
    error = RuntimeError("hooky adapter exploded mid-denoise")

    def __init__(self):
        self.handles = []

    def apply(self, pipe, adapters, ctx):
        if adapters:
            calls = []

            def hook(module, args, output):
                calls.append(1)
                if len(calls) == 2:
                    raise self.error
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
        raiser = {PKG}.plugins:Raiser
        hugemap = {PKG}.plugins:HugeMap
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
    assert "tiny-sd15" not in p.cache.loaded()["base"]  # the changed weights were dropped
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


@pytest.mark.parametrize("error", [SystemExit(3), KeyboardInterrupt(), GeneratorExit()])
def test_plugin_raising_systemexit_or_keyboardinterrupt_fails_only_that_request(site, photo, pipe, error):
    p = sdcompose.Pipeline(device="cpu", plugins_deny="sdc-stuck-lora:lora,sdcompose:lora")
    p.registry.get("raiser", "conditioner").error = error
    with pytest.raises(sdcompose.PluginError, match=f"conditioner 'raiser' failed on its input: {type(error).__name__}"):
        p.generate(controls=[sdcompose.Control("raiser", photo)], **SMALL)
    p.registry.get("lora", "adapter").error = error
    with pytest.raises(sdcompose.PluginError, match=f"adapter plugin 'lora' failed during generation: "
                                                    f"{type(error).__name__}"):
        p.generate(loras=[sdcompose.Lora("tiny-lora-sd15")], **SMALL)
    assert np.array_equal(p.generate(**SMALL).arrays[0], pipe.generate(**SMALL).arrays[0])


def test_plugin_systemexit_in_the_cli_is_one_line_and_exit_2(site, photo):
    import os
    import subprocess
    run = subprocess.run([sys.executable, "-m", "sdcompose.cli", "generate", "--control", f"raiser={photo}",
                          "--model", "tiny-sd15", "-W", "64", "-H", "64", "--steps", "1", "-o", str(site / "x.png")],
                         capture_output=True, text=True, timeout=600,
                         env=os.environ | {"PYTHONPATH": str(site), "SDCOMPOSE_DEBUG": ""})
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip() == "sdcompose: error: conditioner 'raiser' failed on its input: SystemExit: 3"


def test_a_real_interrupt_during_plugin_code_still_interrupts(site, photo):
    """Ctrl-C (a SIGINT to the process) while a plugin runs is the user's, not the plugin's: it goes through."""
    out = run_bounded(f"""
        import signal, sys
        signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C as in a terminal, even if CI ignores it
        sys.path.insert(0, {str(site)!r})
        import sdcompose
        p = sdcompose.Pipeline(device="cpu")
        plugin = p.registry.get("raiser", "conditioner")
        plugin.signal, plugin.error = True, RuntimeError("not reached: the interrupt comes first")
        try:
            p.preprocess("raiser", {str(photo)!r})
        except KeyboardInterrupt:
            emit("interrupted")
        except sdcompose.PluginError as exc:
            emit(str(exc))
    """, memory_mb=3000)
    assert out == "interrupted"


def test_plugin_returning_a_huge_map_is_one_sentence(site, photo):
    p = sdcompose.Pipeline(device="cpu")
    with pytest.raises(sdcompose.PluginError, match="conditioner 'hugemap' returned a 30000x30000 map; the limit is"):
        p.generate(controls=[sdcompose.Control("hugemap", photo)], **SMALL)


def test_plugin_systemexit_in_the_web_ui_fails_that_run_and_the_page_keeps_serving(site, photo, tmp_path):
    """The page's generate event: the plugin's SystemExit is the run's one-line error; the next run works."""
    from sdcompose.ui.form import Form
    from sdcompose.ui.handlers import Handlers
    from sdcompose.ui.sessions import Sessions
    p = sdcompose.Pipeline(device="cpu", plugins_deny="sdc-stuck-lora:lora,sdc-hooky-lora:lora")
    handlers = Handlers(p, Form({"raiser": ()}, [], 1), Sessions(tmp_path / "session"), ["tiny-sd15"])
    for error in (SystemExit(3), KeyboardInterrupt()):
        p.registry.get("raiser", "conditioner").error = error
        values = handlers.form.defaults() | {**SMALL, "cn0_enable": True, "cn0_plugin": "raiser", "cn0_image": str(photo)}
        *_, (_, _, status, _, _, _) = handlers.generate_in_page(None, **values)  # the last event is the outcome
        detail = "SystemExit: 3" if isinstance(error, SystemExit) else "KeyboardInterrupt: "
        assert status == ('<span class="sdc-error">Plugin problem: conditioner \'raiser\' failed on its input: '
                          f'{detail}</span>'), status
    *_, (gallery, _, status, _, _, _) = handlers.generate_in_page(None, **(handlers.form.defaults() | SMALL))
    assert "sdc-error" not in status and len(gallery) == 1


def test_plugin_systemexit_in_the_http_api_is_a_400_and_the_server_keeps_serving(site, photo):
    import base64
    from starlette.testclient import TestClient
    from sdcompose.server.app import build_app
    from sdcompose.server.jobs import JobQueue
    from sdcompose.server.service import Service
    p = sdcompose.Pipeline(device="cpu", plugins_deny="sdc-stuck-lora:lora,sdc-hooky-lora:lora")
    p.registry.get("raiser", "conditioner").error = SystemExit(3)
    image = base64.b64encode(photo.read_bytes()).decode()
    jobs = JobQueue(max_queue=4)
    try:
        with TestClient(build_app(Service(p, jobs), api=True)) as client:
            failed = client.post("/v1/generate", json={**SMALL, "controls": [{"id": "raiser", "image": image}]})
            assert failed.status_code == 400, failed.text
            assert failed.json()["error"]["message"] == "conditioner 'raiser' failed on its input: SystemExit: 3"
            assert client.post("/v1/generate", json=SMALL).status_code == 200
    finally:
        jobs.close()
