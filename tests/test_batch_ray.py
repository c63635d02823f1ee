"""``sdcompose batch --ray``: lines spread over Ray actors grouped by base, pixels equal to the in-process run."""
from __future__ import annotations

import os

import numpy as np
import pytest

from batch_files import batch, pixels, request, write_jobs
from ray_cluster import ray_address  # noqa: F401 (a fixture)
from sdcompose.metadata import read_png

pytestmark = pytest.mark.ray


def test_ray_batch_equals_in_process_pixel_for_pixel(tmp_path, ray_address):  # noqa: F811
    lines = [request(i, model="tiny-sdxl" if i % 2 else "tiny-sd15") for i in range(1, 7)]
    lines[2] = request(3, model="tiny-sdxl", width=100)
    jobs = write_jobs(tmp_path / "jobs.jsonl", lines)
    ray_run = batch(jobs, "--out", tmp_path / "ray", "--ray", "--address", ray_address, "--workers", "2", "-q")
    stdout, stderr = ray_run.communicate(timeout=900)
    assert "6 lines: 5 made, 0 already done, 1 failed" in stdout, stderr[-3000:]
    assert "line 3: width must be a multiple of 8, got 100" in stderr
    # torch's CPU kernels split their sums over threads: the in-process run gets the actors' one thread each
    local = batch(jobs, "--out", tmp_path / "local", "-q", env=os.environ | {"OMP_NUM_THREADS": "1"})
    assert "5 made" in local.communicate(timeout=900)[0]
    workers = {}
    for i in (1, 2, 4, 5, 6):
        name = f"img-{i:02d}.png"
        assert np.array_equal(pixels(tmp_path / "ray" / name), pixels(tmp_path / "local" / name)), name
        meta = read_png(tmp_path / "ray" / name)[0]
        workers[i] = meta["batch"]["worker"]
    # grouped by base: each actor starts on its own base (the first line of each went to a different one); an
    # actor whose base runs out helps with the other's lines
    assert workers[1] != workers[2] and workers[1].startswith("ray-") and workers[2].startswith("ray-")
    assert len(set(workers.values())) == 2

    again = batch(jobs, "--out", tmp_path / "ray", "--ray", "--address", ray_address, "-q")
    assert "6 lines: 0 made, 5 already done, 1 failed" in again.communicate(timeout=300)[0]
