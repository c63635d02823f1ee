"""A local Ray for the ``ray``-marked tests: started by the test process with few CPUs, stopped after."""
from __future__ import annotations

import os

import pytest

CPUS = 2  # the CI machine has 2 cores; each worker or replica reserves 1


@pytest.fixture(scope="module")
def ray_address(home):
    ray = pytest.importorskip("ray", reason="the ray extra is not installed")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from sdcompose.raycluster import patient_start, runtime_env
    patient_start()
    ray.init(num_cpus=CPUS, include_dashboard=False, log_to_driver=False, runtime_env=runtime_env())
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()  # stops the processes this ray.init started, and only those
