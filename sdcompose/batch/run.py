"""Running a batch file: skip finished lines, report bad ones, spread the rest over workers, show progress."""
from __future__ import annotations

import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from sdcompose.batch.jobs import BadLine, Job, read_jobs
from sdcompose.batch.outdir import FAILURES, OutDir
from sdcompose.batch.queue import ModelQueue


@dataclass
class Summary:
    lines: int = 0
    made: int = 0  # lines finished by this run
    skipped: int = 0  # lines a previous run had finished
    failures: list[dict[str, Any]] = field(default_factory=list)

    def text(self, out: Path) -> str:
        text = f"{self.lines} lines: {self.made} made, {self.skipped} already done, {len(self.failures)} failed"
        return text + (f" (listed in {out / FAILURES})" if self.failures else "")


def run_batch(jobs_file: str | Path, out: str | Path, start_workers: Callable[[int], list[Any]], workers: int = 1,
              quiet: bool = False, stop_workers: Callable[[list[Any]], None] = lambda w: None) -> Summary:
    """``start_workers(n)`` gives n objects with ``name`` and ``render(job) -> (files, reason)``."""
    items = read_jobs(jobs_file)
    summary = Summary(lines=len(items))
    with OutDir(out) as outdir:
        outdir.clear_failures()
        for bad in (i for i in items if isinstance(i, BadLine)):
            outdir.fail(bad, bad.reason)
            print(f"line {bad.line}: {bad.reason}", file=sys.stderr)
        jobs = [i for i in items if isinstance(i, Job)]
        todo = [job for job in jobs if not outdir.finished(job)]
        summary.skipped = len(jobs) - len(todo)
        if todo:
            pool = start_workers(min(workers, len(todo)))
            try:
                summary.made = _drive(pool, ModelQueue(todo), outdir, quiet)
            finally:
                stop_workers(pool)
        summary.failures = outdir.failures
    return summary


def _drive(pool: list[Any], queue: ModelQueue, outdir: OutDir, quiet: bool) -> int:
    from tqdm import tqdm
    bar = tqdm(total=len(queue), unit="line", desc="batch", file=sys.stderr, disable=quiet, dynamic_ncols=True)
    made, errors, lock = [0], [], threading.Lock()

    def loop(worker: Any) -> None:
        try:
            while not errors and (job := queue.next(worker.name)) is not None:
                files, reason = worker.render(job)
                if reason is None:
                    outdir.save(job, files)
                else:
                    outdir.fail(job, reason)
                with lock:
                    made[0] += reason is None
                    if reason is not None:
                        bar.write(f"line {job.line}: {reason}", file=sys.stderr)
                    bar.update(1)
        except BaseException as exc:  # writing a result failed (a full disk): stop taking lines, raise it below
            errors.append(exc)

    threads = [threading.Thread(target=loop, args=(w,), name=f"batch-{w.name}", daemon=True) for w in pool]
    for thread in threads:
        thread.start()
    for thread in threads:
        while thread.is_alive():
            thread.join(timeout=0.5)  # a short join keeps Ctrl-C responsive
    bar.close()
    if errors:
        raise errors[0]
    return made[0]
