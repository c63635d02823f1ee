"""``sdcompose ui``: serve the page, on loopback unless told otherwise, and never without a password off it.

Gradio keeps uploads and served files in this server's own temporary folder (not the shared
``/tmp/gradio``), its file routes serve nothing else, uploads are capped at the size the core
accepts, and one generation runs at a time while the others wait in the queue with their position shown.
"""
from __future__ import annotations

import argparse
import ipaddress
import os
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path

from sdcompose.errors import ValidationError
from sdcompose.images import MAX_BYTES

LOOPBACK_NAMES = ("localhost",)


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve anywhere
        return False


def parse_auth(value: str | None) -> list[tuple[str, str]] | None:
    """``user:password``, or ``@FILE`` with one ``user:password`` per line (keeps the password out of ``ps``)."""
    if value is None:
        return None
    lines = [value]
    if value.startswith("@"):
        try:
            lines = Path(value[1:]).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ValidationError(f"--auth {value}: cannot read the file ({exc.strerror})") from None
    pairs = []
    for line in filter(None, (line.strip() for line in lines)):
        user, sep, password = line.partition(":")
        if not sep or not user or not password:
            raise ValidationError("--auth must be user:password (or @FILE with one user:password per line)")
        pairs.append((user, password))
    if not pairs:
        raise ValidationError(f"--auth {value}: no user:password in it")
    return pairs


def check_bind(host: str, auth: list | None, insecure_no_auth: bool) -> None:
    """Refuse an address other machines can reach without a password, unless explicitly told to (with a warning)."""
    if auth is not None or is_loopback(host):
        return
    if not insecure_no_auth:
        raise ValidationError(f"refusing to serve on {host} without a password: anyone who can reach this machine "
                              "could use it; add --auth user:password (or --insecure-no-auth if you mean it)")
    print(f"sdcompose: warning: serving on {host} with no password (--insecure-no-auth): anyone who can reach "
          "this machine can use it and its GPU", file=sys.stderr)


def serve(args: argparse.Namespace) -> int:
    host = "0.0.0.0" if args.listen else args.host
    auth = parse_auth(args.auth)
    check_bind(host, auth, args.insecure_no_auth)
    workdir = Path(tempfile.mkdtemp(prefix="sdcompose-ui-"))
    os.environ["GRADIO_TEMP_DIR"] = str(workdir / "gradio")  # read when the components are built
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)
    try:
        from sdcompose.pipelines.pipeline import Pipeline
        from sdcompose.ui.app import build_app
        pipeline = Pipeline(models=args.models, device=args.device, dtype=args.dtype)
        demo = build_app(pipeline, workdir, model=getattr(args, "model", None))
        demo.queue(default_concurrency_limit=1, max_size=256)
        try:
            demo.launch(server_name=host, server_port=args.port, auth=auth, max_file_size=MAX_BYTES,
                        enable_monitoring=False, show_error=True, quiet=False, favicon_path=None,
                        footer_links=["api", "settings"])
        except OSError as exc:
            raise ValidationError(f"cannot serve on {host}:{args.port} ({exc}); pick another --port") from None
        return 0
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
