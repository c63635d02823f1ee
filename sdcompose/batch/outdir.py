"""The output folder of a batch: which lines are finished, atomic writes, the failures file, one run at a time."""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

from sdcompose.batch.jobs import BadLine, Job
from sdcompose.errors import ValidationError
from sdcompose.metadata import PARTIAL, write_atomic

LOCK = ".sdcompose-batch.lock"
FAILURES = "failures.jsonl"


class OutDir:
    """``DIR/<id>.png`` per finished line (``<id>-1.png``... for a batch of several): a line is finished when
    all its files exist. Files appear whole (temp file + rename), so a killed run never leaves a truncated one;
    a lock keeps a second run out of the folder meanwhile, and a new run removes what a killed one left half-written.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._lock_file = open(self.path / LOCK, "a+")
        except OSError as exc:
            raise ValidationError(f"cannot use {self.path} as the output folder ({exc.strerror or exc})") from None
        _lock(self._lock_file, self.path)
        for stale in self.path.glob(f".*{PARTIAL}"):
            stale.unlink(missing_ok=True)
        self._failures: list[dict[str, Any]] = []
        self._mutex = threading.Lock()

    def targets(self, job: Job) -> list[Path]:
        if job.request.batch == 1:
            return [self.path / f"{job.id}.png"]
        return [self.path / f"{job.id}-{i + 1}.png" for i in range(job.request.batch)]

    def finished(self, job: Job) -> bool:
        return all(target.is_file() for target in self.targets(job))

    def save(self, job: Job, files: list[bytes]) -> list[Path]:
        targets = self.targets(job)
        if len(files) != len(targets):
            raise RuntimeError(f"line {job.line} made {len(files)} images, expected {len(targets)}")
        return [write_atomic(target, data) for target, data in zip(targets, files)]

    def fail(self, item: Job | BadLine, reason: str) -> None:
        """Record a failed line; ``failures.jsonl`` is rewritten whole each time, so it is never half a line."""
        with self._mutex:
            self._failures.append({"line": item.line, "id": item.id, "error": reason})
            data = "".join(json.dumps(f) + "\n" for f in sorted(self._failures, key=lambda f: f["line"]))
            write_atomic(self.path / FAILURES, data.encode())

    @property
    def failures(self) -> list[dict[str, Any]]:
        return sorted(self._failures, key=lambda f: f["line"])

    def clear_failures(self) -> None:
        (self.path / FAILURES).unlink(missing_ok=True)

    def close(self) -> None:
        self._lock_file.close()  # releases the lock

    def __enter__(self) -> "OutDir":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _lock(file: Any, path: Path) -> None:
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, one run at a time is up to the user
        return
    try:
        fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        file.close()
        raise ValidationError(f"{path} is in use by another sdcompose batch run; wait for it or pick another --out") \
            from None
    file.seek(0)
    file.truncate()
    file.write(f"{os.getpid()}\n")
    file.flush()
