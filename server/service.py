"""What both APIs share: the pipeline, the one job queue, and awaiting a job from async code."""
from __future__ import annotations

import asyncio
from typing import Any, Callable

from sdcompose.request import GenerationRequest

from .jobs import Job, JobQueue

DISCONNECT_CHECK_S = 1.0


class Service:
    """``pipeline`` (an ``sdcompose.Pipeline``) behind ``jobs``; ``model`` is the A1111 API's current checkpoint."""

    def __init__(self, pipeline: Any, jobs: JobQueue, model: str | None = None) -> None:
        self.pipeline, self.jobs = pipeline, jobs
        bases = [m["id"] for m in pipeline.models() if m.get("kind") == "base"]
        self.model = model or (bases[0] if bases else "tiny-sd15")

    def submit(self, request: GenerationRequest, label: str = "") -> Job:
        return self.jobs.submit(lambda **hooks: self.pipeline.run(request, **hooks), label or request.task)

    def submit_call(self, fn: Callable[..., Any], label: str) -> Job:
        """Queue ``fn(**hooks)`` (hooks: progress, cancel, preview), for work that is not one request."""
        return self.jobs.submit(fn, label)


async def finished(job: Job, request: Any = None) -> Job:
    """Wait (without blocking the event loop) until ``job`` is finished. If ``request`` (a Starlette request)
    disconnects first, the job is cancelled: nobody is left to take its images."""
    loop = asyncio.get_running_loop()
    changed = asyncio.Event()

    def listener() -> None:  # on the worker thread: wake the event loop once, when the job is finished, not
        if job.wait(0):      # at every step (each wake-up takes the GIL from the running generation)
            loop.call_soon_threadsafe(changed.set)
    job.subscribe(listener)
    try:
        while not job.wait(0):
            try:
                await asyncio.wait_for(changed.wait(), DISCONNECT_CHECK_S)
            except asyncio.TimeoutError:
                if request is not None and await request.is_disconnected():
                    job.cancel.set()
            changed.clear()
    finally:
        job.unsubscribe(listener)
    return job


def outcome(job: Job) -> Any:
    """The job's result, or its error raised."""
    if job.state == "done":
        return job.result
    raise job.error
