"""The one containment rule for plugin code, called by the pipeline wherever plugin code runs.

Whatever a plugin raises (an ``Exception``, but also ``SystemExit``, ``KeyboardInterrupt`` or
``GeneratorExit`` raised by its own code) fails that request with a ``PluginError`` naming the plugin.
Passed through unchanged: a ``PluginError`` or another sdcompose error (already one sentence), running
out of memory when the caller turns that into ``OutOfMemory`` itself (``oom=True``), and a real
interrupt: a signal the main process received while the plugin ran (Ctrl-C).
"""
from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import TracebackType

from sdcompose.errors import PluginError, SdcomposeError, describe, is_out_of_memory


@contextmanager
def plugin_code(what: str, module: str | None = None, oom: bool = False) -> Iterator[None]:
    """Run the block as plugin code: what it raises becomes ``PluginError(f"{what}: {Type}: {message}")``
    (``what`` empty: ``{Type}: {message}``).

    ``module``: only exceptions raised in that module's code (by their traceback) are the plugin's; others,
    from the code the plugin was called through, pass as they are. ``oom``: out of memory passes too."""
    with _interrupts() as interrupted:
        try:
            yield
        except SdcomposeError:  # a PluginError included: already one sentence
            raise
        except BaseException as exc:
            if interrupted() or (oom and is_out_of_memory(exc)):
                raise
            if module is not None and not raised_in(exc.__traceback__, module):
                raise
            raise PluginError(f"{what}: {describe(exc)}" if what else describe(exc)) from None


def raised_in(tb: TracebackType | None, module: str) -> bool:
    """Whether a traceback passes through code of ``module`` (a plugin's package or module)."""
    while tb is not None:
        name = tb.tb_frame.f_globals.get("__name__", "")
        if name == module or name.startswith(module + "."):
            return True
        tb = tb.tb_next
    return False


@contextmanager
def _interrupts() -> Iterator[Callable[[], bool]]:
    """Yields ``interrupted()``: whether a SIGINT reached this process during the block. Only the main thread
    receives signals, so in any other thread a KeyboardInterrupt is always the plugin's own."""
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    hit: list[bool] = []
    previous = signal.getsignal(signal.SIGINT)

    def note(signum: int, frame: object) -> None:
        if previous == signal.SIG_IGN:  # this process ignores Ctrl-C (started in the background): no interrupt
            return
        hit.append(True)
        if callable(previous):
            previous(signum, frame)
        else:  # the default action: the interrupt Python would raise
            raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGINT, note)
    except ValueError:  # not the main interpreter: no signal reaches this code
        yield lambda: False
        return
    try:
        yield lambda: bool(hit)
    finally:
        signal.signal(signal.SIGINT, previous)
