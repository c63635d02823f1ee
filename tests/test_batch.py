"""``sdcompose batch`` as a user runs it: resumable after kill -9, nothing lost or made twice, bad lines listed."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import sdcompose
from batch_files import batch, pixels, pngs, request, write_jobs
from sdcompose.metadata import read_png

BAD_LINE = 7


def wait_for(predicate, what, timeout=300.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.02)


@pytest.fixture
def twenty(tmp_path):
    """20 lines over two bases, line 7 invalid, one line a batch of two."""
    lines = [request(i, model="tiny-sdxl" if i % 4 == 0 else "tiny-sd15", steps=6) for i in range(1, 21)]
    lines[BAD_LINE - 1] = request(BAD_LINE, width=100)
    lines[1] = request(2, batch=2, steps=6)
    return write_jobs(tmp_path / "jobs.jsonl", lines)


def test_kill_9_then_rerun_makes_exactly_the_rest(tmp_path, twenty, home):
    out = tmp_path / "out"
    first = batch(twenty, "--out", out, "-q")
    try:
        wait_for(lambda: len(pngs(out)) >= 5 or first.poll() is not None, "5 finished images")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    assert first.returncode == -signal.SIGKILL, first.stderr.read()
    before = {name: (p.stat().st_ino, p.stat().st_mtime_ns) for name, p in pngs(out).items()}
    assert 5 <= len(before) < 20
    for path in pngs(out).values():  # whole files only: each one decodes and carries its metadata
        assert pixels(path).shape == (64, 64, 3) and read_png(path)[0]["batch"]["line"] >= 1

    again = batch(twenty, "--out", out)
    stdout, stderr = again.communicate(timeout=600)
    assert again.returncode == 1, stderr  # one line failed
    done_before = len({name.rsplit("-", 1)[0] if name.startswith("img-02-") else name for name in before})
    assert f"20 lines: {19 - done_before} made, {done_before} already done, 1 failed" in stdout
    assert f"line {BAD_LINE}: width must be a multiple of 8, got 100" in stderr and "Traceback" not in stderr
    assert "ETA" in stderr or "<" in stderr  # tqdm's bar with its time left
    after = pngs(out)
    expected = {f"img-{i:02d}.png" for i in range(1, 21) if i not in (2, BAD_LINE)} | {"img-02-1.png", "img-02-2.png"}
    assert set(after) == expected
    for name, stamp in before.items():  # what the killed run finished was not made again
        assert (after[name].stat().st_ino, after[name].stat().st_mtime_ns) == stamp
    assert not list(out.glob(".*.partial"))  # what the killed run had half-written was cleaned up
    failures = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert failures == [{"line": BAD_LINE, "id": f"img-{BAD_LINE:02d}",
                         "error": "width must be a multiple of 8, got 100 (try 96)"}]

    third = batch(twenty, "--out", out, "-q")
    assert "20 lines: 0 made, 19 already done, 1 failed" in third.communicate(timeout=300)[0]


def test_batch_image_equals_the_same_request_in_process(tmp_path, home):
    jobs = write_jobs(tmp_path / "jobs.jsonl", [request(3, model="tiny-sdxl"), request(4, guidance=3.0)])
    run = batch(jobs, "--out", tmp_path / "out", "--workers", "2", "-q")
    assert run.communicate(timeout=600)[0].strip() == "2 lines: 2 made, 0 already done, 0 failed"
    pipe = sdcompose.Pipeline(device="cpu")
    for i, extra in ((3, {"model": "tiny-sdxl"}), (4, {"guidance": 3.0})):
        kw = {k: v for k, v in request(i, **extra).items() if k != "id"}
        image = pipe.generate(**kw).images[0]
        path = tmp_path / "out" / f"img-{i:02d}.png"
        assert np.array_equal(pixels(path), np.asarray(image))
        meta = read_png(path)[0]
        assert meta["batch"]["id"] == f"img-{i:02d}" and meta["batch"]["worker"].startswith("local-")


def test_a_second_run_on_the_same_folder_is_refused_while_one_runs(tmp_path, home):
    from sdcompose.batch.outdir import OutDir
    from sdcompose.errors import ValidationError
    with OutDir(tmp_path / "out"):
        with pytest.raises(ValidationError, match="in use by another sdcompose batch run"):
            OutDir(tmp_path / "out")
    OutDir(tmp_path / "out").close()  # free again once the first is done


def test_ray_asked_for_without_ray_is_one_line_naming_the_extra(tmp_path, home):
    blocker = tmp_path / "no_ray"
    blocker.mkdir()
    (blocker / "ray.py").write_text("raise ModuleNotFoundError(\"No module named 'ray'\", name='ray')\n")
    jobs = write_jobs(tmp_path / "jobs.jsonl", [request(1)])
    run = subprocess.run([sys.executable, "-m", "sdcompose.cli", "batch", jobs, "--out", tmp_path / "out", "--ray"],
                         capture_output=True, text=True, timeout=120,
                         env=os.environ | {"PYTHONPATH": str(blocker), "SDCOMPOSE_DEBUG": ""})
    assert run.returncode == 2
    assert run.stderr.strip() == "sdcompose: error: --ray needs Ray, which is not installed: pip install 'sdcompose[ray]'"
