"""Which line a worker takes next: lines grouped by base model, so each worker loads as few models as it can."""
from __future__ import annotations

import threading
from collections import OrderedDict, deque

from sdcompose.batch.jobs import Job


class ModelQueue:
    """A worker keeps taking lines of the base it holds; when that runs out it moves to the base with the most
    lines left that no other worker holds (or, when every base is held, the one with the most lines left)."""

    def __init__(self, jobs: list[Job]) -> None:
        self._groups: OrderedDict[str, deque[Job]] = OrderedDict()
        for job in jobs:
            self._groups.setdefault(job.request.model, deque()).append(job)
        self._held: dict[str, str] = {}  # worker -> base model
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return sum(len(group) for group in self._groups.values())

    def next(self, worker: str) -> Job | None:
        with self._lock:
            model = self._held.get(worker)
            if not self._groups.get(model):
                model = self._pick(worker)
                if model is None:
                    self._held.pop(worker, None)
                    return None
                self._held[worker] = model
            return self._groups[model].popleft()

    def _pick(self, worker: str) -> str | None:
        left = [m for m, group in self._groups.items() if group]
        if not left:
            return None
        held = {m for w, m in self._held.items() if w != worker}
        free = [m for m in left if m not in held]
        return max(free or left, key=lambda m: len(self._groups[m]))
