"""``sdcompose serve`` and ``sdcompose ui``: one process, one app, one security layer, loopback by default.

Gradio keeps uploads and served files in this server's own temporary folder (not the shared ``/tmp/gradio``),
removed when the server stops (SIGTERM or Ctrl-C).
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import tempfile
import threading
from pathlib import Path

from sdcompose.errors import ValidationError
from sdcompose.ui.serve import check_bind, parse_auth

from .security import Security, read_tokens


def serve(args: argparse.Namespace, api: bool = True, ui: bool = True) -> int:
    host = "0.0.0.0" if args.listen else args.host
    users, tokens = parse_auth(args.auth) or [], read_tokens(args.auth_token_file)
    check_bind(host, users + tokens or None, args.insecure_no_auth)
    if args.max_queue < 1 or args.max_queue > 10_000:
        raise ValidationError(f"--max-queue must be between 1 and 10000, got {args.max_queue}")
    sock = _bind(host, args.port)
    workdir = Path(tempfile.mkdtemp(prefix="sdcompose-ui-"))
    os.environ["GRADIO_TEMP_DIR"] = str(workdir / "gradio")  # read when the components are built
    jobs = None
    try:
        import uvicorn

        from sdcompose.pipelines.pipeline import Pipeline

        from .app import build_app
        from .jobs import JobQueue
        from .service import Service
        pipeline = Pipeline(models=args.models, device=args.device, dtype=args.dtype)
        jobs = JobQueue(max_queue=args.max_queue)
        blocks = None
        if ui:
            from sdcompose.ui.app import build_app as build_page
            blocks = build_page(pipeline, workdir, save=not args.no_save, outputs=args.outputs, model=args.model,
                                jobs=jobs)
        security = Security(users=users, tokens=tokens, cors_origins=list(args.cors_allow_origin or []))
        app = build_app(Service(pipeline, jobs, getattr(args, "model", None)), security, api=api, ui=blocks)
        shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        parts = ["the web UI at /"] if ui else []
        parts += ["the API at /v1 and /sdapi/v1, its docs at /docs"] if api else []
        print(f"sdcompose: serving on http://{shown}:{args.port} ({'; '.join(parts)})", flush=True)
        config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=3, ws="none",
                                lifespan="on")
        if threading.current_thread() is threading.main_thread():
            # uvicorn shuts down on SIGTERM, then raises the signal again with the handler it found: this one, so
            # the process ends through the clean-up below instead of dying before it
            signal.signal(signal.SIGTERM, _interrupt)
        uvicorn.Server(config).run(sockets=[sock])
        return 0
    finally:
        if jobs is not None:
            jobs.close()
        sock.close()
        shutil.rmtree(workdir, ignore_errors=True)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise ValidationError(f"cannot serve on {host}:{port} ({exc.strerror}); pick another --port") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock



def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
