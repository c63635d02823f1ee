"""The one job queue the UI and both HTTP APIs share: order, positions, cancel, bounds, retention."""
from __future__ import annotations

import threading

import pytest

from sdcompose.errors import Cancelled
from sdcompose.server.jobs import JobQueue, QueueFull

WAIT = 30  # generous bound on every wait; nothing here depends on timing


def blocker():
    """A job that runs until released (or cancelled), and the events to watch and release it."""
    started, release = threading.Event(), threading.Event()

    def run(progress, cancel, preview):
        started.set()
        step = 0
        while not release.wait(0.01):
            if cancel.is_set():
                raise Cancelled(f"cancelled at step {step}")
            step += 1
            progress(min(step, 99), 100)
        return "released"
    return run, started, release


@pytest.fixture
def jobs():
    queue = JobQueue(max_queue=3, keep_done=2)
    yield queue
    queue.close()


def test_jobs_run_in_order_and_report_their_position(jobs):
    run, started, release = blocker()
    order = []
    first = jobs.submit(run)
    assert started.wait(WAIT)
    second = jobs.submit(lambda **_: order.append("second") or 2)
    third = jobs.submit(lambda **_: order.append("third") or 3)
    assert (jobs.position(first), jobs.position(second), jobs.position(third)) == (None, 1, 2)
    assert first.state == "running" and second.state == "queued"
    release.set()
    assert third.wait(WAIT)
    assert order == ["second", "third"] and (first.result, second.result, third.result) == ("released", 2, 3)
    assert [j.state for j in (first, second, third)] == ["done"] * 3


def test_a_cancelled_queued_job_never_runs_and_a_running_one_stops(jobs):
    run, started, release = blocker()
    ran = threading.Event()
    running = jobs.submit(run)
    assert started.wait(WAIT)
    queued = jobs.submit(lambda **_: ran.set())
    assert jobs.cancel(queued.id).state == "cancelled" and jobs.position(queued) is None
    jobs.cancel(running.id)
    assert running.wait(WAIT) and running.state == "cancelled" and isinstance(running.error, Cancelled)
    after = jobs.submit(lambda **_: "next")
    assert after.wait(WAIT) and after.result == "next"
    assert not ran.is_set() and queued.started is None, "a withdrawn job must never start"
    assert jobs.cancel("no-such-job") is None


def test_a_full_queue_refuses_with_a_retry_time(jobs):
    run, started, release = blocker()
    jobs.submit(run)
    assert started.wait(WAIT)
    waiting = [jobs.submit(lambda **_: None) for _ in range(3)]
    with pytest.raises(QueueFull, match=r"the queue is full \(3 requests waiting\)") as caught:
        jobs.submit(lambda **_: None)
    assert caught.value.retry_after >= 1
    jobs.cancel(waiting[0].id)
    jobs.submit(lambda **_: None)  # a place came free
    release.set()


def test_a_failing_job_is_its_own_and_the_worker_keeps_serving(jobs):
    def boom(**_):
        raise SystemExit(3)  # even this: contained in the job
    failed = jobs.submit(boom)
    assert failed.wait(WAIT) and failed.state == "failed" and isinstance(failed.error, SystemExit)
    assert (ok := jobs.submit(lambda **_: "fine")).wait(WAIT) and ok.result == "fine"


def test_progress_is_recorded_and_finished_jobs_are_bounded(jobs):
    job = jobs.submit(lambda progress, **_: [progress(i, 3) for i in (1, 2, 3)] and "done")
    assert job.wait(WAIT) and (job.step, job.total, job.result) == (3, 3, "done")
    done = [jobs.submit(lambda **_: None) for _ in range(3)]
    assert done[-1].wait(WAIT)
    jobs.submit(lambda **_: None).wait(WAIT)
    assert jobs.get(job.id) is None, "only the last keep_done finished jobs are kept"
    assert jobs.get(done[-1].id) is not None


def test_a_queue_with_two_workers_runs_two_jobs_at_once_and_counts_both_in_positions():
    queue = JobQueue(max_queue=4, workers=2)  # serve --ray: jobs for several generator replicas at once
    try:
        (run_a, started_a, release_a), (run_b, started_b, release_b) = blocker(), blocker()
        a, b = queue.submit(run_a), queue.submit(run_b)
        assert started_a.wait(WAIT) and started_b.wait(WAIT)  # both run, neither waits for the other
        third = queue.submit(lambda progress, cancel, preview: "third")
        assert queue.position(third) == 2 and queue.running is a
        release_b.set()
        assert b.wait(WAIT) and b.result == "released" and a.state == "running"
        assert third.wait(WAIT) and third.result == "third"
        queue.close()  # a running job is cancelled at close
        assert a.wait(WAIT) and a.state == "cancelled"
    finally:
        release_a.set()
        queue.close()
