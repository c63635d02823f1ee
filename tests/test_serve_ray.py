"""``sdcompose serve --ray``: the app on Ray Serve with 2 generator replicas routed by base model (a real local Ray).

All HTTP traffic goes to Serve's proxy on 127.0.0.1; Ray's own processes talk over whatever address Ray picks.
"""
from __future__ import annotations

import asyncio
import base64
import io
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from batch_files import batch, pixels, request, write_jobs
from ray_cluster import ray_address  # noqa: F401 (a fixture)
from sdcompose.metadata import read_png

pytestmark = pytest.mark.ray
httpx = pytest.importorskip("httpx")

WAIT_S = 600  # every wait below is bounded by this; on a loaded 2-core machine a tiny step can take a second
SMALL = {"prompt": "x", "width": 64, "height": 64, "steps": 2, "seed": 1}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def served(ray_address):  # noqa: F811
    from ray import serve

    from sdcompose.server.rayserve import APP, Options, application
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(application(Options(replicas=2, models_per_replica=1, cpus_per_replica=1, max_queue=32)),
                  name=APP, route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()


def image_of(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


def replica_of(client, model: str) -> str:
    answer = client.post("/v1/generate", json=SMALL | {"model": model})
    assert answer.status_code == 200, answer.text[:300]
    return answer.json()["metadata"]["replica"]


def warm_up(client) -> dict[str, str]:
    """Each base on its own replica, the same two rounds running (Serve learns a replica's bases a moment after it
    loads them, so the very first requests may meet before it knows)."""
    last = None
    for _ in range(6):
        now = {model: replica_of(client, model) for model in ("tiny-sd15", "tiny-sdxl")}
        if now == last and len(set(now.values())) == 2:
            return now
        last = now
    raise AssertionError(f"the two bases never settled on two replicas: {last}")


def wait_for(client, job_id: str, done) -> dict:
    deadline = time.monotonic() + WAIT_S
    while not done(state := client.get(f"/v1/jobs/{job_id}").json()):
        assert time.monotonic() < deadline, f"job {job_id} stuck: {state}"
        time.sleep(0.1)
    return state


def test_twelve_concurrent_requests_answered_equal_in_process_then_routed_by_base(served, tmp_path):
    lines = [request(i, model="tiny-sd15" if i % 2 else "tiny-sdxl") for i in range(12)]
    bodies = [{k: v for k, v in line.items() if k != "id"} for line in lines]
    with httpx.Client(base_url=served, timeout=WAIT_S) as client:
        replicas = set(warm_up(client).values())

    async def post_all():
        async with httpx.AsyncClient(base_url=served, timeout=WAIT_S) as client:
            return await asyncio.gather(*[client.post("/v1/generate", json=body) for body in bodies])

    answers = asyncio.run(post_all())
    assert [a.status_code for a in answers] == [200] * 12, [a.text[:300] for a in answers]
    for answer in answers:  # the answer's metadata and the PNG's own name the replica that made it
        named = answer.json()["metadata"]["replica"]
        assert named in replicas
        assert read_png(base64.b64decode(answer.json()["images"][0]))[0]["replica"] == named
    # the same requests in-process, at the replicas' one thread each
    reference = batch(write_jobs(tmp_path / "jobs.jsonl", lines), "--out", tmp_path / "ref", "-q",
                      env=os.environ | {"OMP_NUM_THREADS": "1"})
    assert "12 made" in reference.communicate(timeout=900)[0]
    for line, answer in zip(lines, answers):
        assert np.array_equal(image_of(answer.json()["images"][0]), pixels(tmp_path / "ref" / f"{line['id']}.png")), \
            line["id"]
    # routing: once each base is on its replica (a burst may have moved them: K=1 here), every request for a base
    # goes to the replica holding it
    with httpx.Client(base_url=served, timeout=WAIT_S) as client:
        holders = warm_up(client)
        for _ in range(3):
            for model in ("tiny-sd15", "tiny-sdxl", "tiny-sd15"):
                assert replica_of(client, model) == holders[model], (model, holders)


def test_a1111_txt2img_names_the_replica_and_a_job_is_cancelled_on_its_replica(served):
    with httpx.Client(base_url=served, timeout=WAIT_S) as client:
        answer = client.post("/sdapi/v1/txt2img", json={"prompt": "a lighthouse", "width": 64, "height": 64,
                                                         "steps": 2, "seed": 5,
                                                         "override_settings": {"sd_model_checkpoint": "tiny-sd15"}})
        assert answer.status_code == 200, answer.text[:300]
        images = answer.json()["images"]
        assert len(images) == 1
        meta = read_png(base64.b64decode(images[0]))[0]
        assert meta["replica"]  # the replica that made it
        job = client.post("/v1/jobs", json=SMALL | {"model": "tiny-sd15", "steps": 400}).json()
        wait_for(client, job["id"], lambda s: s["step"] >= 2)  # running on a replica, progress flowing back
        deadline = time.monotonic() + WAIT_S
        while (progress := client.get("/sdapi/v1/progress").json())["current_task"] != job["id"]:
            assert time.monotonic() < deadline, progress  # the txt2img job before it is gone from the queue
            time.sleep(0.1)
        assert progress["state"]["sampling_step"] >= 2 and progress["state"]["sampling_steps"] == 400
        assert client.post("/sdapi/v1/interrupt").status_code == 200  # A1111's interrupt reaches the replica
        state = wait_for(client, job["id"], lambda s: s["state"] in ("cancelled", "failed", "done"))
        assert state["state"] == "cancelled" and state["step"] < 400, state


def test_a_replica_killed_mid_request_answers_it_503_while_others_finish(served):
    import ray
    with httpx.Client(base_url=served, timeout=WAIT_S) as client:
        victim = warm_up(client)["tiny-sdxl"]
        with ThreadPoolExecutor(1) as pool:  # the doomed request waits for its answer, as a client does
            doomed = pool.submit(httpx.post, f"{served}/v1/generate", timeout=WAIT_S,
                                 json=SMALL | {"model": "tiny-sdxl", "steps": 400})
            deadline = time.monotonic() + WAIT_S
            while True:  # the long request running on the victim, its progress flowing back to the ingress
                running = client.get("/v1/health").json()["queue"]["running"]
                state = client.get(f"/v1/jobs/{running}").json() if running else {}
                if state.get("state") == "running" and state["total"] == 400 and state["step"] >= 2:
                    break
                assert time.monotonic() < deadline and not doomed.done(), "the long request never started"
                time.sleep(0.1)
            bystander = client.post("/v1/jobs", json=SMALL | {"model": "tiny-sd15", "steps": 8}).json()
            actors = [a for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].endswith(victim)]
            assert len(actors) == 1, actors
            ray.kill(ray.get_actor(actors[0]["name"], namespace=actors[0]["namespace"]), no_restart=True)
            answer = doomed.result(timeout=WAIT_S)
        assert answer.status_code == 503, answer.text[:300]
        error = answer.json()["error"]
        assert error["type"] == "ReplicaLost" and "generator replica running this request stopped" in error["message"]
        finished = wait_for(client, bystander["id"], lambda s: s["state"] not in ("queued", "running"))
        assert finished["state"] == "done", finished  # the other replica's request finished
        while True:  # Serve replaces the replica: both bases answered again by two replicas, neither the killed one
            answers = {m: client.post("/v1/generate", json=SMALL | {"model": m}) for m in ("tiny-sd15", "tiny-sdxl")}
            assert all(a.status_code in (200, 503) for a in answers.values()), [a.text[:300] for a in answers.values()]
            names = {a.json()["metadata"]["replica"] for a in answers.values() if a.status_code == 200}
            if len(names) == 2 and victim not in names:
                break
            assert time.monotonic() < deadline + WAIT_S, names
            time.sleep(1)
