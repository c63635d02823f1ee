"""Per-browser-session state the page needs beside Gradio's: output folders and Stop flags."""
from __future__ import annotations

import re
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class Sessions:
    """Output folders under ``root/<session>`` and the cancel events of each session's running generations."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._lock = threading.Lock()
        self._running: dict[str, set[threading.Event]] = {}

    def folder(self, session: str | None, *parts: str) -> Path:
        name = re.sub(r"[^A-Za-z0-9_-]", "", session or "") or "anonymous"
        path = self.root.joinpath(name, *parts)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def output(self, session: str | None) -> Path:
        """A fresh ``.png`` path in the session's folder (``Result.save`` numbers a batch from it)."""
        return self.folder(session) / f"{time.strftime('%Y%m%d-%H%M%S')}-{time.monotonic_ns() % 10**9:09d}.png"

    @contextmanager
    def cancel_flag(self, session: str | None) -> Iterator[threading.Event]:
        """An event that ``stop(session)`` sets while the block runs."""
        event = threading.Event()
        with self._lock:
            self._running.setdefault(session or "", set()).add(event)
        try:
            yield event
        finally:
            with self._lock:
                self._running.get(session or "", set()).discard(event)

    def stop(self, session: str | None) -> int:
        """Set the cancel flag of every generation this session is running; return how many."""
        with self._lock:
            events = list(self._running.get(session or "", ()))
        for event in events:
            event.set()
        return len(events)

    def forget(self, session: str | None) -> None:
        """The tab closed: stop its work and delete its files."""
        self.stop(session)
        with self._lock:
            self._running.pop(session or "", None)
        shutil.rmtree(self.folder(session), ignore_errors=True)
