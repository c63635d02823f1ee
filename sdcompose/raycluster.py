"""Connecting to Ray for ``--ray``: a clear error when it is not installed, the same sdcompose settings on workers.

Only the ``--ray`` paths import this module; nothing else in sdcompose imports Ray.
"""
from __future__ import annotations

import os
from typing import Any

from sdcompose.errors import SdcomposeError

INSTALL = "pip install 'sdcompose[ray]'"
FORWARDED = ("SDCOMPOSE_", "HF_")  # the settings a worker needs to find the same models
# A local Ray on a busy machine can take minutes to register its node and metrics agent; Ray's defaults
# (seconds) then fail the start with "The current node timed out during startup".
PATIENT_START = {"RAY_raylet_start_wait_time_s": "180", "RAY_agent_register_timeout_ms": "180000"}


def require_ray() -> Any:
    """The ``ray`` module, or one sentence saying what to install."""
    try:
        import ray
    except ModuleNotFoundError as exc:
        if exc.name not in ("ray", None) and not str(exc.name).startswith("ray."):
            raise SdcomposeError(f"Ray does not import: {exc}; reinstall it with {INSTALL}") from None
        raise SdcomposeError(f"--ray needs Ray, which is not installed: {INSTALL}") from None
    except ImportError as exc:
        raise SdcomposeError(f"Ray does not import: {exc}; reinstall it with {INSTALL}") from None
    return ray


def connect(address: str | None) -> Any:
    """Join the Ray cluster at ``address`` (``auto``, ``HOST:PORT``, ``ray://HOST:PORT``), or start a local one."""
    ray = require_ray()
    if not ray.is_initialized():
        try:
            local = {} if address else {"include_dashboard": False}  # a new local Ray: no dashboard to serve
            if not address:
                patient_start()
            ray.init(address=address, runtime_env=runtime_env(), log_to_driver=False, **local)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise SdcomposeError(f"cannot reach Ray at {address or 'a new local instance'}: "
                                 f"{str(exc).splitlines()[0][:200]}") from None
    return ray


def runtime_env() -> dict[str, Any]:
    """The workers' environment: this process's sdcompose and hub settings (models home, catalogue, offline)."""
    return {"env_vars": {k: v for k, v in os.environ.items() if k.startswith(FORWARDED)}}


def patient_start() -> None:
    """Give a local Ray started from this process the time a loaded machine needs (unless already set)."""
    for key, value in PATIENT_START.items():
        os.environ.setdefault(key, value)
