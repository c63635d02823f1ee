"""Batch workers as Ray actors: one Pipeline per actor, on a GPU each where the cluster has them."""
from __future__ import annotations

from typing import Any

from sdcompose.batch.jobs import Job
from sdcompose.batch.worker import Outcome, Worker
from sdcompose.errors import SdcomposeError

START_TIMEOUT = 300  # seconds for the actors to be placed and start


class RayWorker:
    """The driver's side of one actor: ``render`` runs the line in the actor and waits for its files."""

    def __init__(self, handle: Any, name: str) -> None:
        self.handle, self.name = handle, name

    def render(self, job: Job) -> Outcome:
        import ray
        try:
            return ray.get(self.handle.render.remote(job))
        except ray.exceptions.RayActorError as exc:
            return None, f"the Ray worker {self.name} died while making it ({type(exc).__name__}); rerun to retry"


def start_workers(count: int, address: str | None, models: Any, device: str | None, dtype: str | None,
                  gpus: float, cpus: float) -> list[RayWorker]:
    from sdcompose.raycluster import connect
    ray = connect(address)
    actor = ray.remote(num_gpus=gpus, num_cpus=cpus, max_restarts=1, max_task_retries=0)(Worker)
    handles = [actor.remote(None, models, device, dtype) for _ in range(count)]
    try:
        names = ray.get([h.describe.remote() for h in handles], timeout=START_TIMEOUT)
    except ray.exceptions.GetTimeoutError:
        stop_workers([RayWorker(h, "") for h in handles])
        raise SdcomposeError(f"Ray did not start {count} workers with {gpus:g} GPU(s) and {cpus:g} CPU(s) each "
                             f"within {START_TIMEOUT} s: the cluster lacks room; ask for fewer --workers") from None
    return [RayWorker(h, n) for h, n in zip(handles, names)]


def stop_workers(workers: list[RayWorker]) -> None:
    import ray
    for worker in workers:
        ray.kill(worker.handle)
    ray.shutdown()  # leaves a cluster given by --address running; stops the local one this run started
