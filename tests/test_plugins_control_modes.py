"""Per-unit control modes: the residuals diffusers' UNet receives, measured with hooks on the real modules."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import sdcompose
from conftest import max_diff
from sdcompose.pipelines.control_modes import soft_scales

KW = dict(prompt="a tower", negative_prompt="fog", model="tiny-sd15", width=64, height=64, steps=2, seed=11)


class Recorder:
    """What each ControlNet returns and what the UNet is given, per denoising step."""

    def __init__(self, pipe, controls, model="tiny-sd15"):
        composed = pipe.diffusers_pipeline(model=model, controls=controls)  # shares the cached modules
        nets = composed.controlnet.nets if hasattr(composed.controlnet, "nets") else [composed.controlnet]
        inner = [getattr(net, "controlnet", net) for net in nets]
        self.outputs = [[] for _ in inner]
        self.given = []
        self.handles = [net.register_forward_hook(self._output(i)) for i, net in enumerate(inner)]
        self.handles.append(composed.unet.register_forward_pre_hook(self._unet, with_kwargs=True))

    def _output(self, index):
        def hook(_module, _args, output):
            self.outputs[index].append(([d.clone() for d in output[0]], output[1].clone()))
        return hook

    def _unet(self, _module, _args, kwargs):
        self.given.append(([d.clone() for d in kwargs["down_block_additional_residuals"]],
                           kwargs["mid_block_additional_residual"].clone()))

    def close(self):
        for handle in self.handles:
            handle.remove()


def record(pipe, controls, **kw):
    recorder = Recorder(pipe, controls, kw.get("model", "tiny-sd15"))
    try:
        result = pipe.generate(controls=controls, **(KW | kw))
    finally:
        recorder.close()
    return recorder, result


def flat(residuals):
    down, mid = residuals
    return [*down, mid]


def test_prompt_first_scales_residuals_softly_on_both_halves(pipe, photo):
    recorder, _ = record(pipe, [sdcompose.Control("canny", photo, weight=0.7, control_mode="prompt_first")])
    assert len(recorder.given) == KW["steps"]
    for out, given in zip(recorder.outputs[0], recorder.given):
        out, given = flat(out), flat(given)
        scales = soft_scales(len(out))
        assert scales[-1] == 1.0 and scales[0] == pytest.approx(0.825 ** (len(out) - 1))
        for o, g, s in zip(out, given, scales):
            assert torch.allclose(g, o * s, atol=1e-6)  # ``o`` already carries the unit's weight 0.7


def test_control_first_adds_control_to_the_conditional_half_only(pipe, photo):
    recorder, _ = record(pipe, [sdcompose.Control("canny", photo, control_mode="control_first")], guidance=5.0)
    for out, given in zip(recorder.outputs[0], recorder.given):
        for o, g, s in zip(flat(out), flat(given), soft_scales(len(flat(out)))):
            half = g.shape[0] // 2  # diffusers batches [negative prompt, prompt]
            assert g[:half].abs().max() == 0
            assert torch.allclose(g[half:], o[half:] * s, atol=1e-6) and o[half:].abs().max() > 0


def test_balanced_passes_residuals_through_unchanged(pipe, photo):
    recorder, _ = record(pipe, [sdcompose.Control("canny", photo, weight=0.6)])
    for out, given in zip(recorder.outputs[0], recorder.given):
        for o, g in zip(flat(out), flat(given)):
            assert torch.equal(o, g)


def test_modes_change_the_image_and_control_first_needs_guidance(pipe, photo):
    def image(mode, **kw):
        return pipe.generate(controls=[sdcompose.Control("canny", photo, control_mode=mode)], **(KW | kw)).arrays[0]

    balanced, prompt_first, control_first = image("balanced"), image("prompt_first"), image("control_first")
    assert max_diff(balanced, prompt_first) > 1e-3 and max_diff(prompt_first, control_first) > 1e-3
    # without classifier-free guidance there is no unconditional half: control_first equals prompt_first
    assert max_diff(image("prompt_first", guidance=1.0), image("control_first", guidance=1.0)) == 0


def test_units_keep_their_own_modes(pipe, photo):
    controls = [sdcompose.Control("canny", photo, weight=0.8),
                sdcompose.Control("depth", np.tile(np.arange(64, dtype=np.uint8) * 4, (64, 1)),
                                  control_mode="control_first")]
    recorder, result = record(pipe, controls)
    assert result.metadata["request"]["controls"][1]["control_mode"] == "control_first"
    for first, second, given in zip(*recorder.outputs, recorder.given):
        for a, b, g, s in zip(flat(first), flat(second), flat(given), soft_scales(len(flat(first)))):
            half = g.shape[0] // 2
            assert torch.allclose(g[:half], a[:half], atol=1e-6)  # only the balanced unit reaches the negative half
            assert torch.allclose(g[half:], a[half:] + b[half:] * s, atol=1e-6)


def test_sdxl_units_take_modes_too(pipe, photo):
    recorder, result = record(pipe, [sdcompose.Control("canny", photo, control_mode="control_first")],
                              model="tiny-sdxl")
    assert result.images[0].size == (64, 64)
    out, given = flat(recorder.outputs[0][0]), flat(recorder.given[0])
    half = given[0].shape[0] // 2
    assert all(g[:half].abs().max() == 0 for g in given)
    assert all(torch.allclose(g[half:], o[half:] * s, atol=1e-6) for o, g, s in zip(out, given, soft_scales(len(out))))
