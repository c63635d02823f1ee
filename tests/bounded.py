"""Run hostile cases in a subprocess under resource limits, so a regression fails a test instead of
exhausting the machine.

``run_bounded(code)`` runs ``code`` in a fresh Python with RLIMIT_DATA (heap and private mappings:
what decoding an image allocates) and RLIMIT_CPU (CPU seconds, not wall time: a loaded machine does
not make it fail). The child prints one JSON line as its last output; the parent gets it back.
"""
from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parent
WALL_S = 600  # only a last resort against a hang: the CPU limit is what a slow regression hits


def _limits(memory_mb: int, cpu_s: int):
    def apply() -> None:
        size = memory_mb * 2**20
        resource.setrlimit(resource.RLIMIT_DATA, (size, size))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 5))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    return apply


def run_bounded(code: str, memory_mb: int = 1500, cpu_s: int = 60, env: dict[str, str] | None = None,
                wall_s: int = WALL_S) -> Any:
    """The JSON value ``code`` printed last (via ``emit(value)``); AssertionError saying which limit it hit."""
    prelude = ("import json, sys\nsys.path.insert(0, %r)\n"
               "def emit(value):\n    print('\\n' + json.dumps(value), flush=True)\n" % str(TESTS))
    child_env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=wall_s, env=child_env, preexec_fn=_limits(memory_mb, cpu_s))
    if proc.returncode == -signal.SIGXCPU or proc.returncode == -signal.SIGKILL:
        raise AssertionError(f"the case used more than {cpu_s} s of CPU time\n{proc.stderr[-2000:]}")
    if proc.returncode != 0:
        hint = f" (over the {memory_mb} MB memory limit?)" if "MemoryError" in proc.stderr else ""
        raise AssertionError(f"the case failed{hint}, exit {proc.returncode}:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
