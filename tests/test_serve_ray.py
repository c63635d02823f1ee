"""``sdcompose serve --ray``: the app on Ray Serve with 2 generator replicas routed by base model (a real local Ray)."""
from __future__ import annotations

import asyncio
import base64
import io
import os
import socket
import time

import numpy as np
import pytest
from PIL import Image

from batch_files import batch, pixels, request, write_jobs
from ray_cluster import ray_address  # noqa: F401 (a fixture)

pytestmark = pytest.mark.ray
httpx = pytest.importorskip("httpx")


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


def image_of(answer: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["images"][0]))).convert("RGB"))


def test_twelve_concurrent_requests_routed_by_base_and_equal_in_process(served, tmp_path):
    lines = [request(i, model="tiny-sd15" if i % 2 else "tiny-sdxl") for i in range(12)]
    bodies = [{k: v for k, v in line.items() if k != "id"} for line in lines]

    async def post_all(client, items):
        return await asyncio.gather(*[client.post("/v1/generate", json=body) for body in items])

    async def main():
        async with httpx.AsyncClient(base_url=served, timeout=600) as client:
            await post_all(client, [bodies[0]])  # warm-up: each base lands on a replica and stays there
            await post_all(client, [bodies[1]])
            return await post_all(client, bodies)

    answers = asyncio.run(main())
    assert [a.status_code for a in answers] == [200] * 12, [a.text[:300] for a in answers]
    replicas = {}
    for line, answer in zip(lines, answers):
        replicas.setdefault(line["model"], set()).add(answer.json()["metadata"]["replica"])
    assert all(len(names) == 1 for names in replicas.values()), replicas  # each base on the replica holding it
    assert replicas["tiny-sd15"] != replicas["tiny-sdxl"]
    # the same requests in-process, at the replicas' one thread each
    reference = batch(write_jobs(tmp_path / "jobs.jsonl", lines), "--out", tmp_path / "ref", "-q",
                      env=os.environ | {"OMP_NUM_THREADS": "1"})
    assert "12 made" in reference.communicate(timeout=900)[0]
    for line, answer in zip(lines, answers):
        assert np.array_equal(image_of(answer.json()), pixels(tmp_path / "ref" / f"{line['id']}.png")), line["id"]


def test_a1111_txt2img_and_a_cancelled_job(served):
    with httpx.Client(base_url=served, timeout=600) as client:
        answer = client.post("/sdapi/v1/txt2img", json={"prompt": "a lighthouse", "width": 64, "height": 64, "steps": 2,
                                                         "seed": 5, "override_settings": {"sd_model_checkpoint": "tiny-sd15"}})
        assert answer.status_code == 200, answer.text[:300]
        assert len(answer.json()["images"]) == 1
        job = client.post("/v1/jobs", json={"prompt": "x", "model": "tiny-sd15", "width": 64, "height": 64,
                                            "steps": 400, "seed": 1}).json()
        deadline = time.monotonic() + 300
        while client.get(f"/v1/jobs/{job['id']}").json()["step"] < 2:  # running on a replica, progress flowing back
            assert time.monotonic() < deadline, "the job never reported progress"
            time.sleep(0.05)
        assert client.delete(f"/v1/jobs/{job['id']}").status_code in (200, 202)
        while (state := client.get(f"/v1/jobs/{job['id']}").json())["state"] not in ("cancelled", "failed", "done"):
            assert time.monotonic() < deadline, "the cancel never reached the replica"
            time.sleep(0.05)
        assert state["state"] == "cancelled" and state["step"] < 400


def test_a_replica_killed_mid_request_fails_it_with_503_while_others_finish(served):
    import ray

    from sdcompose.server.answers import status_of
    from sdcompose.server.rayserve import ReplicaLost
    assert status_of(ReplicaLost("gone")) == 503
    small = {"prompt": "x", "width": 64, "height": 64, "steps": 2, "seed": 1}
    with httpx.Client(base_url=served, timeout=600) as client:
        victim = client.post("/v1/generate", json=small | {"model": "tiny-sdxl"}).json()["metadata"]["replica"]
        job = client.post("/v1/jobs", json=small | {"model": "tiny-sdxl", "steps": 400}).json()
        deadline = time.monotonic() + 300
        while client.get(f"/v1/jobs/{job['id']}").json()["step"] < 2:
            assert time.monotonic() < deadline, "the long job never started"
            time.sleep(0.05)
        actors = [a for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].endswith(victim)]
        assert len(actors) == 1, actors
        ray.kill(ray.get_actor(actors[0]["name"], namespace=actors[0]["namespace"]), no_restart=True)
        other = client.post("/v1/generate", json=small | {"model": "tiny-sd15"})
        assert other.status_code == 200  # the other replica goes on
        while (state := client.get(f"/v1/jobs/{job['id']}").json())["state"] == "running":
            assert time.monotonic() < deadline, "the killed replica's job never ended"
            time.sleep(0.05)
        assert state["state"] == "failed" and state["error"]["type"] == "ReplicaLost", state
        assert "stopped" in state["error"]["message"]
        while True:  # Serve replaces the replica; sdxl is served again
            again = client.post("/v1/generate", json=small | {"model": "tiny-sdxl"})
            if again.status_code == 200:
                break
            assert again.status_code == 503 and time.monotonic() < deadline + 300, again.text[:300]
            time.sleep(1)
        assert again.json()["metadata"]["replica"] != victim
