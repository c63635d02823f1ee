"""A third-party conditioner gets its controls in the page from its ParamSpecs alone; broken plugins are listed.

The test package is registered for real: a dist-info folder with entry_points.txt on sys.path.
"""
from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
from PIL import Image

import sdcompose

PLUGIN = '''
import numpy as np
from PIL import Image
from sdcompose.plugins.api import Conditioner, ParamSpec


class Gradient(Conditioner):
    id = "grad-edges"
    version = "2.0"
    api_version = "2.0"
    families = frozenset({"sd15"})
    controlnets = {"sd15": "controlnet-canny-sd15"}
    params = (
        ParamSpec("ksize", "int", 3, min=1, max=7, step=2, help="Kernel size."),
        ParamSpec("gain", "float", 1.0, help="Unbounded gain."),
        ParamSpec("invert", "bool", False),
        ParamSpec("axis", "choice", "both", choices=("x", "y", "both")),
        ParamSpec("label", "str", ""),
    )

    def preprocess(self, source, ctx, params):
        gray = np.asarray(source.image.convert("L"), dtype=np.float32)
        dx = np.abs(np.diff(gray, axis=1, prepend=0)) if params["axis"] in ("x", "both") else 0
        dy = np.abs(np.diff(gray, axis=0, prepend=0)) if params["axis"] in ("y", "both") else 0
        edges = np.clip((dx + dy) * params["gain"], 0, 255)
        return Image.fromarray((255 - edges if params["invert"] else edges).astype(np.uint8)).convert("RGB")
'''


@pytest.fixture(scope="module")
def third_party(tmp_path_factory):
    root = tmp_path_factory.mktemp("site")
    (root / "sdc_ui_gradient.py").write_text(PLUGIN)
    (root / "sdc_ui_broken.py").write_text("raise ImportError('needs libfoo, which is not installed')\n")
    info = root / "sdc_ui_plugins-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: sdc-ui-plugins\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(textwrap.dedent("""
        [sdcompose.plugins]
        grad-edges = sdc_ui_gradient:Gradient
        broken-edges = sdc_ui_broken:Broken
        """))
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(root))
        yield sdcompose.Pipeline(device="cpu")


def test_third_party_params_become_widgets_and_reach_the_plugin(third_party, photo, tmp_path):
    from sdcompose.ui.app import build_app
    from sdcompose.ui.form import Form
    from sdcompose.ui.handlers import Handlers
    from sdcompose.ui.sessions import Sessions
    from sdcompose.ui.widgets import conditioners, unusable_plugins

    demo = build_app(third_party, tmp_path, units=1)
    params = {p["parameter_name"]: p for p in demo.get_api_info()["named_endpoints"]["/generate"]["parameters"]}
    kinds = {name: params[f"cn0_grad_edges_{name}"]["component"]
             for name in ("ksize", "gain", "invert", "axis", "label")}
    assert kinds == {"ksize": "Slider", "gain": "Number", "invert": "Checkbox", "axis": "Dropdown", "label": "Textbox"}
    assert params["cn0_grad_edges_ksize"]["parameter_default"] == 3
    assert "cn0_canny_low_threshold" in params and "cn1_enable" not in params
    assert "broken-edges (sdc-ui-plugins): broken: ImportError: needs libfoo" in unusable_plugins(third_party)

    specs, _ = conditioners(third_party)
    form = Form(specs, [], 1)
    handlers = Handlers(third_party, form, Sessions(tmp_path / "out"), ["tiny-sd15"])
    values = form.defaults() | {"model": "tiny-sd15", "width": 64, "height": 64, "steps": 2, "seed": 4,
                                "cn0_enable": True, "cn0_plugin": "grad-edges", "cn0_image": str(photo),
                                "cn0_grad_edges_axis": "x", "cn0_grad_edges_invert": True}
    *previews, (gallery, info, status, seed) = handlers.generate(None, progress=lambda *a, **k: None, **values)
    assert [gallery_items[0][1] for gallery_items, *_ in previews][-1] == "preview at step 2"
    meta = json.loads(info)
    assert meta["plugins"]["grad-edges"] == {"version": "2.0", "package": "sdc-ui-plugins",
                                             "api_version": "2.0"} and seed == 4
    assert meta["request"]["controls"][0]["params"] == {"ksize": 3, "gain": 1.0, "invert": True, "axis": "x",
                                                        "label": ""}
    with Image.open(gallery[0][0]) as png:
        assert "sdcompose" in png.text
    preview = handlers.previewer(0)(**values)
    assert preview.size == (64, 64) and np.asarray(preview.convert("L")).mean() > 180, "inverted: dark edges on white"
