"""One bounded job queue in front of the device: the UI and both HTTP APIs submit here.

A job is a callable run as ``run(progress=, cancel=, preview=)`` by the one worker thread, in order of
submission. A queued job can be withdrawn (it never runs); a running one is asked to stop at its next step
through its cancel flag. Finished jobs are kept for ``keep_seconds`` and at most ``keep_done`` of them.
"""
from __future__ import annotations

import itertools
import math
import secrets
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Callable

from sdcompose.errors import Cancelled, SdcomposeError

STATES = ("queued", "running", "done", "failed", "cancelled")
FINISHED = ("done", "failed", "cancelled")


class QueueFull(SdcomposeError):
    """The queue holds ``max_queue`` waiting jobs; ``retry_after`` is a guess in whole seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(eq=False)
class Job:
    id: str
    run: Callable[..., Any]
    label: str = ""
    state: str = "queued"
    step: int = 0
    total: int = 0
    preview: Any = None  # the latest step preview (a PIL image), while running
    result: Any = None
    error: BaseException | None = None
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    version: int = 0  # bumped on every change; watchers compare it
    _listeners: list[Callable[[], None]] = field(default_factory=list)
    _done: threading.Event = field(default_factory=threading.Event)

    def subscribe(self, listener: Callable[[], None]) -> None:
        """``listener()`` is called (from the worker thread) after every change of this job."""
        self._listeners.append(listener)

    def unsubscribe(self, listener: Callable[[], None]) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job is finished; False if ``timeout`` passed first."""
        return self._done.wait(timeout)

    @property
    def finished_ok(self) -> bool:
        return self.state == "done"

    def _changed(self) -> None:
        self.version += 1
        if self.state in FINISHED:
            self._done.set()
        for listener in list(self._listeners):
            listener()


class JobQueue:
    """``submit`` a job, ``get`` it by id, ``cancel`` it, ask its ``position``; one worker runs them in order."""

    def __init__(self, max_queue: int = 16, keep_done: int = 64, keep_seconds: float = 600.0, workers: int = 1) -> None:
        if max_queue < 1:
            raise ValueError("max_queue must be at least 1")
        self.max_queue, self.keep_done, self.keep_seconds = max_queue, keep_done, keep_seconds
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._waiting: deque[Job] = deque()
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._running: list[Job] = []  # one per worker thread at most
        self._durations: deque[float] = deque(maxlen=20)
        self._closed = False
        self._counter = itertools.count(1)
        self._workers = [threading.Thread(target=self._work, name=f"sdcompose-jobs-{i}", daemon=True)
                         for i in range(workers)]
        for worker in self._workers:
            worker.start()

    # ---- what callers use ---------------------------------------------------------------------
    def submit(self, run: Callable[..., Any], label: str = "") -> Job:
        """Queue ``run``; raise QueueFull when ``max_queue`` jobs already wait."""
        with self._lock:
            if self._closed:
                raise SdcomposeError("the server is shutting down")
            self._prune()
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(f"the queue is full ({self.max_queue} requests waiting); try again later",
                                self._retry_after())
            job = Job(id=f"{next(self._counter)}-{secrets.token_hex(8)}", run=run, label=label)
            self._jobs[job.id] = job
            self._waiting.append(job)
            self._wake.notify()
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            self._prune()
            return self._jobs.get(job_id)

    def cancel(self, job_id: str) -> Job | None:
        """Withdraw a queued job (it never runs) or stop a running one at its next step; None if unknown."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            withdrawn = job.state == "queued"
            if withdrawn:
                self._waiting.remove(job)
                job.state, job.finished = "cancelled", time.time()
                job.error = Cancelled("cancelled before it started")
            job.cancel.set()
        if withdrawn:
            job._changed()
        return job

    def position(self, job: Job) -> int | None:
        """How many jobs run before this one (0: it is next); None once it is no longer queued."""
        with self._lock:
            try:
                return self._waiting.index(job) + len(self._running)
            except ValueError:
                return None

    @property
    def running(self) -> Job | None:
        """The job that started first of those running (the only one with one worker)."""
        running = self._running
        return running[0] if running else None

    def waiting(self) -> int:
        with self._lock:
            return len(self._waiting)

    def close(self, timeout: float = 10.0) -> None:
        """Withdraw every queued job, stop the running ones, and let the workers end."""
        with self._lock:
            self._closed = True
            waiting = list(self._waiting)
        for job in waiting:
            self.cancel(job.id)
        for job in list(self._running):
            job.cancel.set()
        with self._lock:
            self._wake.notify_all()
        for worker in self._workers:
            worker.join(timeout)

    # ---- the worker ---------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._waiting and not self._closed:
                    self._wake.wait()
                if self._closed and not self._waiting:
                    return
                job = self._waiting.popleft()
                skipped = job.cancel.is_set()  # its caller went away while it waited
                if skipped:
                    job.state, job.finished = "cancelled", time.time()
                    job.error = Cancelled("cancelled before it started")
                else:
                    self._running.append(job)
                    job.state, job.started = "running", time.time()
            for other in self._queued_snapshot():  # everyone behind moved up one place
                other._changed()
            job._changed()
            if skipped:
                continue
            self._run(job)
            with self._lock:
                self._running.remove(job)
                self._durations.append(job.finished - job.started)
            job._changed()

    def _run(self, job: Job) -> None:
        def progress(step: int, total: int) -> None:
            job.step, job.total = step, total
            job._changed()

        def preview(step: int, total: int, image: Any) -> None:
            job.step, job.total, job.preview = step, total, image
            job._changed()

        try:
            job.result = job.run(progress=progress, cancel=job.cancel, preview=preview)
            job.state = "done"
        except Cancelled as exc:
            job.error, job.state = exc, "cancelled"
        except BaseException as exc:  # noqa: BLE001 - a job's failure is its own; the worker keeps serving
            job.error, job.state = exc, "failed"
        job.finished, job.preview = time.time(), None

    def _queued_snapshot(self) -> list[Job]:
        with self._lock:
            return list(self._waiting)

    def _retry_after(self) -> int:
        typical = sorted(self._durations)[len(self._durations) // 2] if self._durations else 1.0
        return max(1, math.ceil(typical * (len(self._waiting) + 1)))

    def _prune(self) -> None:
        """Forget finished jobs past their time, and the oldest finished ones past ``keep_done``."""
        now = time.time()
        finished = [job for job in self._jobs.values() if job.state in FINISHED]
        for i, job in enumerate(finished):
            if now - job.finished > self.keep_seconds or i < len(finished) - self.keep_done:
                del self._jobs[job.id]
