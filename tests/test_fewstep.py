"""Few-step hints: models.yaml `recommended` on a base or LoRA, merged (the LoRA's win) and applied by the UI on selection."""
from __future__ import annotations

import json

import pytest

import sdcompose
from sdcompose.errors import CatalogError


@pytest.fixture(scope="module")
def hinted(tmp_path_factory):
    overlay = tmp_path_factory.mktemp("catalog") / "models.yaml"
    overlay.write_text(json.dumps({"version": 1, "models": {
        "tiny-fast-base": {"kind": "base", "family": "sd15", "tiny": True, "recommended": {"steps": 8, "guidance": 2.0}},
        "tiny-lcm-lora": {"kind": "lora", "family": "sd15", "tiny": True,
                          "recommended": {"steps": 4, "guidance": 1.0, "sampler": "euler"}},
        "tiny-odd-lora": {"kind": "lora", "family": "sd15", "tiny": True, "recommended": {"sampler": "no-such"}}}}))
    return sdcompose.Pipeline(models=overlay, device="cpu")


def test_hints_merge_base_then_loras(hinted):
    assert hinted.catalog.recommended("tiny-fast-base") == {"steps": 8, "guidance": 2.0}
    assert hinted.catalog.recommended("tiny-fast-base", ["tiny-lcm-lora"]) == {"steps": 4, "guidance": 1.0,
                                                                                "sampler": "euler"}
    assert hinted.catalog.recommended("tiny-sd15") == {}
    assert hinted.catalog.recommended("sd15", ["lcm-lora-sd15"]) == {"steps": 4, "guidance": 1.0, "sampler": "lcm"}


def test_a_bad_hint_names_the_file_line_and_key(tmp_path):
    bad = tmp_path / "models.yaml"
    bad.write_text("version: 1\nmodels:\n  x:\n    kind: lora\n    family: sd15\n    tiny: true\n"
                   "    recommended: {steps: 0}\n")
    with pytest.raises(CatalogError, match=r"models.yaml:7: models.x.recommended.steps"):
        sdcompose.Pipeline(models=bad, device="cpu")


def test_the_ui_applies_them_when_the_user_picks_the_model_or_lora(hinted, tmp_path):
    from sdcompose.ui.form import Form
    from sdcompose.ui.handlers import Handlers
    from sdcompose.ui.sessions import Sessions
    handlers = Handlers(hinted, Form({}, ["tiny-lcm-lora", "tiny-odd-lora"], 1), Sessions(tmp_path / "out"),
                        ["tiny-sd15", "tiny-fast-base"])
    steps, guidance, sampler, status = handlers.recommended("tiny-sd15", ["tiny-lcm-lora"])
    assert (steps["value"], guidance["value"], sampler["value"]) == (4, 1.0, "euler")
    assert "recommended steps 4, guidance 1.0, sampler euler" in status
    steps, guidance, sampler, status = handlers.recommended("tiny-fast-base", [])
    assert (steps["value"], guidance["value"]) == (8, 2.0) and "value" not in sampler  # no sampler hint: unchanged
    *_, sampler, status = handlers.recommended("tiny-sd15", ["tiny-odd-lora"])
    assert "value" not in sampler and "sampler no-such is not available here" in status
    assert all("value" not in update for update in handlers.recommended("tiny-sd15", [])[:3])


@pytest.mark.parametrize("fields,message", [
    (dict(scheduler="lcm", steps=100), r"the lcm sampler runs at most 50 steps here \(50 x strength 1; it is made for "
                                       r"2-8\); steps is 100: lower it"),
    (dict(scheduler="LCM", steps=4, hires=dict(steps=30)), r"at most 25 steps here \(50 x strength 0.5.*hires steps is 30"),
    (dict(scheduler="tcd", steps=51), "the tcd sampler runs at most 50 steps"),
    (dict(steps=4, hires=dict(steps=1)), r"hires steps 1 at strength 0.5 leaves no step to run"),
    (dict(steps=2, init_image="x.png", strength=0.4), r"steps 2 at strength 0.4 leaves no step to run"),
])
def test_a_few_step_sampler_with_too_many_steps_is_one_sentence_before_any_work(fields, message):
    with pytest.raises(sdcompose.ValidationError, match=message):
        sdcompose.GenerationRequest(model="tiny-sd15", **fields)
