"""The plugin API's version contract: what ``sdcompose.plugins.api`` promises, which ``api_version`` loads,
and where a plugin's API version is recorded (``plugins list --json``, each image's metadata)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import sdcompose
from sdcompose.plugins import api
from sdcompose.plugins.api import API_VERSION, Conditioner, PluginError, validate_plugin_class


def test_the_api_is_2x_and_lists_what_a_plugin_and_its_tests_need():
    assert API_VERSION.split(".")[0] == "2" and api.API_MAJOR == 2
    guide = {"Conditioner", "Adapter", "Upscaler", "ParamSpec", "ControlSource", "PluginContext", "PluginError",
             "first_line", "check_params", "validate_plugin_class", "API_VERSION"}
    assert guide <= set(api.__all__) and all(hasattr(api, name) for name in api.__all__)
    assert api.PluginContext(weights={"x": "p"}).weight("x") == "p"


def plugin(version=None, **attrs):
    body = {"id": "probe", **({"api_version": version} if version is not None else {}), **attrs}
    return type("Probe", (Conditioner,), body)


@pytest.mark.parametrize("version,match", [
    (None, "declares no api_version; set api_version = '2.2'"),
    (2.0, "api_version must be text of the form MAJOR.MINOR such as '2.2', got 2.0"),
    ("2", "api_version must be text of the form MAJOR.MINOR"),
    ("v2.0", "api_version must be text of the form MAJOR.MINOR"),
    ("2.9", "was written for plugin API 2.9, newer than this sdcompose's 2.2 \\(it provides 2.2\\): upgrade"),
    ("1.7", "was written for plugin API 1.7, newer than this sdcompose's 1.2"),
    ("3.0", "was written for plugin API 3.0; this sdcompose provides 2.2: upgrade sdcompose"),
    ("0.3", "was written for plugin API 0.3; this sdcompose provides 2.2 \\(and 1.x"),
])
def test_api_version_is_required_and_checked(version, match):
    with pytest.raises(PluginError, match=match):
        validate_plugin_class(plugin(version), "probe")


def test_1x_conditioners_load_by_the_1x_rules_and_2x_ones_need_no_controlnet_ids():
    validate_plugin_class(plugin("2.0"), "probe")  # the catalogue's `conditioner:` entries name its ControlNets
    validate_plugin_class(plugin("1.0", controlnets={"sd15": "a", "sdxl": "b"}), "probe")
    with pytest.raises(PluginError, match=r"declares families \['sdxl'\] without a ControlNet id"):
        validate_plugin_class(plugin("1.2", controlnets={"sd15": "a"}, families=frozenset({"sd15", "sdxl"})),
                              "probe")


def test_api_version_is_listed_and_recorded_in_metadata(home, photo):
    run = subprocess.run([sys.executable, "-m", "sdcompose.cli", "plugins", "list", "--json"], capture_output=True,
                         text=True, timeout=300, env=os.environ | {"SDCOMPOSE_DEBUG": ""})
    rows = {row["id"]: row for row in json.loads(run.stdout)}
    assert rows["canny"]["api_version"] == "2.0" and rows["lora"]["api_version"] == "2.2"
    result = sdcompose.Pipeline(device="cpu").generate(
        "x", model="tiny-sd15", width=64, height=64, steps=1, seed=1, controls=[sdcompose.Control("canny", photo)])
    assert result.metadata["plugins"]["canny"] == {"version": "1.0", "package": "sdcompose", "api_version": "2.0"}


def test_adapters_written_for_2_1_load_through_the_compatibility_layer():
    """2.0/2.1 adapters have ``apply`` (and IP-Adapter loaders ``set_scales``) instead of ``contribute``/``set_weights``:
    the core still merges what they return."""
    from sdcompose.plugins import compat
    from sdcompose.plugins.api import Adapter, IpAdapterLoader, PluginContext, Use

    class OldLora(Adapter):
        id, api_version = "lora", "2.0"

        def apply(self, pipe, adapters, ctx):
            return {a["id"]: {"weight": a["weight"], "path": str(a["path"])} for a in adapters}

    class OldIp(IpAdapterLoader):
        id, api_version = "ip_adapter", "2.1"
        scales: list = []

        def apply(self, pipe, units, ctx):
            return {"arguments": {"ip_adapter_image": [u["images"] for u in units]},
                    "report": {u["id"]: [u["start"], u["end"], u["encoder"]] for u in units}}

        def set_scales(self, pipe, scales):
            self.scales.append(scales)

    for cls in (OldLora, OldIp):
        validate_plugin_class(cls, cls.id)
    ctx = PluginContext()
    lora = compat.contribute(OldLora(), None, [Use("a", "a.safetensors", None, 0.5)], ctx)
    assert lora.arguments == {} and lora.report == {"a": {"weight": 0.5, "path": "a.safetensors"}}
    old_ip = OldIp()
    use = Use("b", "b.safetensors", type("E", (), {"image_encoder": "enc"})(), 0.7, {"start": 0.1, "end": 0.9},
              ["ref"], {"image_encoder": "loaded-encoder"})
    done = compat.contribute(old_ip, None, [use], ctx)
    assert done.arguments == {"ip_adapter_image": [["ref"]]} and done.report == {"b": [0.1, 0.9, "loaded-encoder"]}
    assert compat.contribute(old_ip, None, [], ctx).arguments == {}  # 2.1 loaders only ran with IP-Adapters
    compat.set_weights(old_ip, None, [0.7])
    assert old_ip.scales == [[0.7]]
