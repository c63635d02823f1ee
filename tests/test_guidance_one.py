"""guidance <= 1 drops the classifier-free-guidance batch on every path: txt2img, img2img, inpaint, ControlNet
(balanced and the control modes), both passes of hires fix, IP-Adapter, SD1.5 and SDXL. The UNet and ControlNets then see one latent per image."""
from __future__ import annotations

import pytest

import sdcompose

CASES = {
    "txt2img": {},
    "img2img": {"init": True},
    "inpaint": {"init": True, "mask": True},
    "controlnet": {"controls": "balanced"},
    "controlnet prompt_first": {"controls": "prompt_first"},
    "controlnet control_first": {"controls": "control_first"},
    "controlnet img2img": {"controls": "balanced", "init": True},
    "controlnet inpaint": {"controls": "control_first", "init": True, "mask": True},
    "hires with controlnet": {"controls": "balanced", "hires": True},
    "ip-adapter": {"ip": "tiny-ip-adapter-sd15"},
}


def batches(pipe, model, photo, mask, guidance, case):
    """The batch sizes the UNet and the ControlNets were called with during one generation."""
    options = CASES[case]
    controls = [sdcompose.Control("canny", photo, control_mode=options["controls"])] if "controls" in options else []
    diffusers_pipe = pipe.diffusers_pipeline(model=model, controls=controls)  # the very modules generation uses
    nets = [diffusers_pipe.unet, *getattr(diffusers_pipe.controlnet, "nets", [diffusers_pipe.controlnet])] \
        if controls else [diffusers_pipe.unet]
    nets = [getattr(net, "controlnet", net) for net in nets]  # a moded unit wraps the ControlNet
    seen = {id(net): set() for net in nets}
    hooks = [net.register_forward_pre_hook(lambda module, args, kwargs, key=id(net): seen[key].add(
        (args[0] if args else kwargs["sample"]).shape[0]), with_kwargs=True) for net in nets]
    try:
        pipe.generate("a harbour", negative_prompt="fog", model=model, controls=controls, width=64, height=64,
                      steps=2, guidance=guidance, seed=1, init_image=photo if options.get("init") else None,
                      mask=mask if options.get("mask") else None, strength=0.9,
                      hires=sdcompose.Hires(scale=2, steps=2) if options.get("hires") else None,
                      ip_adapters=[sdcompose.IpAdapter(options["ip"], photo)] if "ip" in options else [])
    finally:
        for hook in hooks:
            hook.remove()
    return [sorted(s) for s in seen.values()]


@pytest.mark.parametrize("model, case", [("tiny-sd15", case) for case in CASES]
                         + [("tiny-sdxl", "txt2img"), ("tiny-sdxl", "controlnet control_first")])
def test_guidance_one_runs_one_batch_and_above_one_runs_two(pipe, photo, mask, model, case):
    assert all(sizes == [1] for sizes in batches(pipe, model, photo, mask, 1.0, case)), case
    assert all(sizes == [2] for sizes in batches(pipe, model, photo, mask, 7.5, case)), case


def test_guidance_below_one_also_drops_the_batch(pipe, photo, mask):
    assert all(sizes == [1] for sizes in batches(pipe, "tiny-sd15", photo, mask, 0.5, "controlnet control_first"))
