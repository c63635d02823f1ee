"""Samplers by sdcompose id and by AUTOMATIC1111's names, each mapped to a diffusers scheduler that runs."""
from __future__ import annotations

import diffusers
import numpy as np
import pytest

from conftest import max_diff
from sdcompose import samplers
from sdcompose.errors import ValidationError
from sdcompose.pipelines import schedulers

RUN = dict(model="tiny-sd15", width=64, height=64, steps=2, seed=5, guidance=6.0)
A1111 = {  # A1111's sampler (and schedule type) names -> ids
    ("DPM++ 2M SDE", None): "dpmpp_2m_sde", ("DPM++ SDE", "Karras"): "dpmpp_sde_karras", ("Heun", None): "heun",
    ("LMS", "Exponential"): "lms_exponential", ("DPM2", None): "dpm2", ("LCM", None): "lcm", ("Euler a", None): "euler_a",
    ("DPM++ 2M Karras", None): "dpmpp_2m_karras", ("DPM++ 2M", "Automatic"): "dpmpp_2m_karras",
    ("Euler", "SGM Uniform"): "euler_sgm_uniform", ("tcd", None): "tcd", ("DDIM", "Automatic"): "ddim",
}


@pytest.mark.parametrize("names,expected", A1111.items())
def test_a1111_names(names, expected):
    assert samplers.canonical(*names) == expected
    sampler, schedule = samplers.to_a1111(expected)
    assert samplers.canonical(sampler, schedule) == expected  # what sdcompose writes reads back


@pytest.mark.parametrize("sampler_id", list(samplers.SAMPLERS) + ["euler_karras", "dpmpp_2m_sde_exponential",
                                                                  "unipc_sgm_uniform"])
def test_every_sampler_runs(pipe, sampler_id):
    result = pipe.generate("a lighthouse", scheduler=sampler_id, **RUN)
    assert np.isfinite(result.arrays[0]).all() and result.metadata["request"]["scheduler"] == sampler_id


def test_a1111_name_is_the_same_sampler(pipe):
    by_name = pipe.generate("a lighthouse", scheduler="DPM++ 2M SDE Karras", **RUN)
    assert by_name.metadata["request"]["scheduler"] == "dpmpp_2m_sde_karras"
    assert max_diff(by_name.arrays[0], pipe.generate("a lighthouse", scheduler="dpmpp_2m_sde_karras", **RUN).arrays[0]) == 0


def test_sde_samplers_follow_the_seed(pipe):
    for sampler_id in ("dpmpp_sde", "dpmpp_2m_sde"):
        first, again = (pipe.generate("a lighthouse", scheduler=sampler_id, **RUN).arrays[0] for _ in range(2))
        other = pipe.generate("a lighthouse", scheduler=sampler_id, **(RUN | {"seed": 6})).arrays[0]
        assert max_diff(first, again) == 0 and max_diff(first, other) > 1e-3


def test_todays_ids_keep_their_schedulers():
    config = diffusers.DPMSolverMultistepScheduler().config
    made = schedulers.make("dpmpp_2m_karras", config)
    assert type(made).__name__ == "DPMSolverMultistepScheduler" and made.config.use_karras_sigmas
    assert made.config.algorithm_type == "dpmsolver++" and made.config.solver_order == 2
    for old in ("ddim", "euler", "euler_a", "dpmpp_2m", "dpmpp_2m_karras", "unipc"):
        assert samplers.canonical(old) == old


@pytest.mark.parametrize("name,schedule,message", [
    ("DPM 3M", None, "did you mean"), ("Euler a", "Karras", "has its own schedule"),
    ("Euler", "Karas", "did you mean 'Karras'"), (7, None, "must be a sampler name"),
])
def test_bad_sampler_names(name, schedule, message):
    with pytest.raises(ValidationError, match=message):
        samplers.canonical(name, schedule)
