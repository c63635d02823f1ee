"""Per-browser-session state the page needs beside Gradio's: output folders and what Stop stops."""
from __future__ import annotations

import re
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Callable


class Sessions:
    """Output folders under ``root/<session>`` and how to stop each session's queued or running generations."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._lock = threading.Lock()
        self._running: dict[str, set[Callable[[], str]]] = {}

    def folder(self, session: str | None, *parts: str) -> Path:
        name = re.sub(r"[^A-Za-z0-9_-]", "", session or "") or "anonymous"
        path = self.root.joinpath(name, *parts)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def output(self, session: str | None) -> Path:
        """A fresh ``.png`` path in the session's folder (``Result.save`` numbers a batch from it)."""
        return self.folder(session) / f"{time.strftime('%Y%m%d-%H%M%S')}-{time.monotonic_ns() % 10**9:09d}.png"

    @contextmanager
    def running(self, session: str | None, stop: Callable[[], str]) -> Iterator[None]:
        """While the block runs, ``stop(session)`` calls ``stop()``: it withdraws a queued generation or stops a
        running one, and says which ("withdrawn" or "stopping")."""
        with self._lock:
            self._running.setdefault(session or "", set()).add(stop)
        try:
            yield
        finally:
            with self._lock:
                self._running.get(session or "", set()).discard(stop)

    def stop(self, session: str | None) -> list[str]:
        """Stop every generation this session has queued or running; what each stop said."""
        with self._lock:
            stops = list(self._running.get(session or "", ()))
        return [stop() for stop in stops]

    def forget(self, session: str | None) -> None:
        """The tab closed: stop its work and delete its files."""
        self.stop(session)
        with self._lock:
            self._running.pop(session or "", None)
        shutil.rmtree(self.folder(session), ignore_errors=True)
