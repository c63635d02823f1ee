"""Batch file lines: the request schema's JSON with an optional id; each bad line named by number and reason."""
from __future__ import annotations

import json

import pytest

from batch_files import request, write_jobs
from sdcompose.batch.jobs import BadLine, Job, read_jobs
from sdcompose.batch.queue import ModelQueue


@pytest.mark.parametrize("line,reason", [
    ("not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object (a request), got list"),
    (json.dumps(request(1, promt="x")), "request has an unknown field 'promt' (did you mean 'prompt'?)"),
    (json.dumps(request(1, width=100)), "width must be a multiple of 8, got 100"),
    (json.dumps(request(1, steps=10**6)), "steps must be between 1 and 500"),
    (json.dumps(request(1, id="../escape")), "id '../escape' must be 1-100 letters, digits"),
    (json.dumps(request(1, id=7)), "id '7' must be"),
    (json.dumps(request(1, controls=[{"id": "canny", "imag": "x.png"}])),
     "controls[0] has an unknown field 'imag' (did you mean 'image'?)"),
    (json.dumps(request(1, loras="papercut")), "loras must be a list, got str"),
    (json.dumps(request(1, loras=[{"weight": 1}])), "loras[0] needs an id"),
    ("{" + " " * (1 << 20) + "}", "the line is 1048578 bytes; the limit is 1048576"),
])
def test_a_bad_line_is_reported_with_its_number_and_reason(tmp_path, line, reason):
    jobs = read_jobs(write_jobs(tmp_path / "jobs.jsonl", [request(1), "", line]))
    assert isinstance(jobs[0], Job) and len(jobs) == 2
    bad = jobs[1]
    assert isinstance(bad, BadLine) and bad.line == 3 and reason in bad.reason, bad.reason
    assert "\n" not in bad.reason


def test_ids_given_or_named_by_the_request_and_never_twice(tmp_path):
    plain = {k: v for k, v in request(2).items() if k != "id"}
    jobs = read_jobs(write_jobs(tmp_path / "jobs.jsonl", [request(1), plain, request(1, prompt="other"), plain]))
    assert jobs[0].id == "img-01" and jobs[1].id.startswith("job-")
    moved = read_jobs(write_jobs(tmp_path / "moved.jsonl", [request(5), plain]))
    assert moved[1].id == jobs[1].id  # the same request keeps its name wherever it moves
    assert isinstance(jobs[2], BadLine) and "id 'img-01' is already used by line 1" in jobs[2].reason
    assert isinstance(jobs[3], BadLine) and "already used by line 2" in jobs[3].reason


def test_relative_image_paths_are_read_from_the_batch_files_folder(tmp_path):
    line = request(1, init_image="in/photo.png", controls=[{"id": "canny", "image": "edges.png", "weight": 0.5}])
    job = read_jobs(write_jobs(tmp_path / "jobs.jsonl", [line]))[0]
    assert job.request.init_image == str(tmp_path / "in" / "photo.png")
    assert job.request.controls[0].image == str(tmp_path / "edges.png") and job.request.controls[0].weight == 0.5


def test_the_queue_keeps_each_worker_on_one_base_while_it_lasts(tmp_path):
    lines = [request(i, model="tiny-sd15" if i % 3 else "tiny-sdxl") for i in range(9)]
    queue = ModelQueue(read_jobs(write_jobs(tmp_path / "jobs.jsonl", lines)))
    first = {w: queue.next(w).request.model for w in ("a", "b")}
    assert first == {"a": "tiny-sd15", "b": "tiny-sdxl"}  # the bigger group first, the other to the free worker
    taken = {"a": [], "b": []}
    while len(queue):
        for worker in ("b", "a"):
            job = queue.next(worker)
            if job is not None:
                taken[worker].append(job.request.model)
    assert taken["b"][:2] == ["tiny-sdxl"] * 2 and set(taken["a"]) == {"tiny-sd15"}
    assert queue.next("a") is None
