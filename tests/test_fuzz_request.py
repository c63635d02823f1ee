"""Any request -> either a valid, normalised GenerationRequest or a ValidationError; never another exception."""
from __future__ import annotations

import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sdcompose
from sdcompose.request import CONTROL_MODES, LIMITS, RESIZE_MODES, SCHEDULERS, GenerationRequest, validate

anything = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(min_value=-(10**500), max_value=10**500)
    | st.sampled_from([1, -1]).map(lambda sign: sign * 10**5000)  # past Python's int-to-text digit limit
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=30) | st.binary(max_size=8)
    | st.sampled_from(["64", "512", "1e3", " 8 ", "nan", "inf", "-1", "0x40", "٣"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6)
valid = {
    "width": st.sampled_from([64, 512, 4096, 1024.0, "768"]), "height": st.integers(8, 512).map(lambda v: v * 8),
    "steps": st.integers(1, 500), "guidance": st.floats(0, 50), "strength": st.floats(0.01, 1),
    "seed": st.none() | st.integers(0, 2**63 - 17), "batch": st.integers(1, 16),
    "scheduler": st.sampled_from(SCHEDULERS),
    "prompt": st.text(max_size=50), "negative_prompt": st.text(max_size=20), "model": st.sampled_from(["tiny-sd15"]),
    "add_trigger_words": st.booleans(), "init_image": st.none() | st.just("x.png"), "mask": st.none(),
}
near = {
    "width": st.integers(-100, 5000), "height": st.integers(-100, 5000), "steps": st.integers(-5, 600),
    "guidance": st.floats(), "strength": st.floats(-1, 2), "seed": st.integers(), "batch": st.integers(-2, 20),
    "prompt": st.integers(19_990, 20_010).map(lambda n: "a" * n), "model": st.text(max_size=3),
}
def field(good, bad=None):
    """A good value most of the time, else an out-of-bounds one or anything at all."""
    return st.one_of(*([good] * 8), bad if bad is not None else anything, anything)


controls = st.builds(
    sdcompose.Control, id=field(st.sampled_from(["canny", "pose"]), st.just("")),
    image=field(st.just("x.png"), st.none()), weight=field(st.floats(0, 4), st.floats()),
    start=field(st.floats(0, 0.4), st.floats(-1, 2)), end=field(st.floats(0.5, 1), st.floats(-1, 2)),
    params=field(st.dictionaries(st.text(max_size=4), anything, max_size=2)),
    model=field(st.none() | st.just("tiny-controlnet-canny-sd15")),
    resize_mode=field(st.sampled_from(RESIZE_MODES)), control_mode=field(st.sampled_from(CONTROL_MODES)),
    preprocessed=field(st.booleans()))
loras = st.builds(sdcompose.Lora, id=field(st.text(min_size=1, max_size=10)),
                  weight=field(st.floats(-4, 4), st.floats()))


@st.composite
def requests(draw):
    """A request's fields: mostly valid, each one sometimes out of bounds or of any type at all."""
    fields = {}
    for name, strategy in valid.items():
        pick = draw(st.integers(0, 19))
        fields[name] = draw(anything) if pick == 0 else draw(near.get(name, anything)) if pick == 1 else draw(strategy)
    fields["controls"] = draw(st.lists(controls, max_size=3) | st.lists(controls | anything, max_size=10) | anything)
    fields["loras"] = draw(st.lists(loras, max_size=3) | st.lists(loras | anything, max_size=20) | anything)
    return fields


def check_normalised(req: GenerationRequest) -> None:
    low, high = LIMITS["size"]
    for value in (req.width, req.height):
        assert type(value) is int and low <= value <= high and value % 8 == 0
    assert type(req.steps) is int and LIMITS["steps"][0] <= req.steps <= LIMITS["steps"][1]
    assert type(req.batch) is int and LIMITS["batch"][0] <= req.batch <= LIMITS["batch"][1]
    assert type(req.guidance) is float and math.isfinite(req.guidance)
    assert req.seed is None or (type(req.seed) is int and 0 <= req.seed and req.seed + req.batch < 2**63)
    assert isinstance(req.prompt, str) and len(req.prompt) <= LIMITS["prompt_chars"]
    assert req.scheduler in SCHEDULERS and isinstance(req.add_trigger_words, bool)
    assert isinstance(req.controls, list) and isinstance(req.loras, list)
    for control in req.controls:
        assert isinstance(control.id, str) and control.id and control.image is not None
        assert 0 <= control.start < control.end <= 1 and isinstance(control.params, dict)
    assert len({lora.id for lora in req.loras}) == len(req.loras)
    assert all(isinstance(lora.id, str) and math.isfinite(lora.weight) for lora in req.loras)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests())
def test_any_request_is_valid_or_a_validation_error(fields):
    try:
        normalised = GenerationRequest(**fields)
    except sdcompose.ValidationError as exc:
        assert str(exc) and "\n" not in str(exc) and len(str(exc)) < 400
        return
    check_normalised(normalised)
    assert validate(normalised) == normalised and GenerationRequest(**fields) == normalised  # normalising is idempotent


@settings(max_examples=100, deadline=None)
@given(anything)
def test_validate_of_a_non_request(value):
    try:
        validate(value)
    except sdcompose.ValidationError:
        return
    raise AssertionError("validate accepted something that is not a GenerationRequest")
