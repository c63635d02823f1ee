"""``sdcompose serve --ray``: deploy the app on Ray Serve and wait, or write the ``serve.yaml`` of that deployment."""
from __future__ import annotations

import argparse
import dataclasses
import signal
import threading
from pathlib import Path
from typing import Any

from sdcompose.errors import ValidationError


def options(args: argparse.Namespace) -> Any:
    from .rayserve import Options
    autoscale = _autoscale(args.autoscale) if args.autoscale else None
    if autoscale and args.replicas is not None:
        raise ValidationError("give --replicas N or --autoscale MIN:MAX, not both")
    replicas = 1 if args.replicas is None else args.replicas
    if not 1 <= replicas <= 1000:
        raise ValidationError(f"--replicas must be between 1 and 1000, got {replicas}")
    if args.models_per_replica < 1:
        raise ValidationError(f"--models-per-replica must be at least 1, got {args.models_per_replica}")
    if not 1 <= args.max_queue <= 10_000:
        raise ValidationError(f"--max-queue must be between 1 and 10000, got {args.max_queue}")
    if args.write_config and args.auth and not args.auth.startswith("@"):
        raise ValidationError("--write-config keeps passwords out of serve.yaml: give --auth @FILE")
    return Options(models=str(Path(args.models).resolve()) if args.models else None, device=args.device,
                   dtype=args.dtype, models_per_replica=args.models_per_replica, replicas=replicas,
                   autoscale=autoscale, gpus_per_replica=args.gpus_per_replica, cpus_per_replica=args.cpus_per_replica,
                   max_queue=args.max_queue, auth_token_file=_absolute(args.auth_token_file),
                   auth="@" + _absolute(args.auth[1:]) if args.auth and args.auth.startswith("@") else args.auth,
                   cors_origins=list(args.cors_allow_origin or []), model=args.model)


def _absolute(path: str | None) -> str | None:
    """A file argument as an absolute path (the ingress replica may run on another node, in another folder)."""
    return str(Path(path).expanduser().resolve()) if path else None


def _autoscale(text: str) -> tuple[int, int]:
    low, sep, high = text.partition(":")
    try:
        bounds = int(low), int(high)
    except ValueError:
        bounds = (0, 0)
    if not sep or not 0 <= bounds[0] <= bounds[1] or bounds[1] < 1:
        raise ValidationError(f"--autoscale {text!r}: expected MIN:MAX replicas, e.g. 1:4")
    return bounds


def config(opts: Any, host: str, port: int) -> dict[str, Any]:
    """The Ray Serve config file (``serve deploy serve.yaml``) of this deployment."""
    from .rayserve import APP, GENERATOR, INGRESS, actor_options, scaling
    args = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(opts).items()}
    return {"proxy_location": "EveryNode", "http_options": {"host": host, "port": port},
            "applications": [{"name": APP, "route_prefix": "/", "import_path": "sdcompose.server.rayserve:build",
                              "args": args, "deployments": [
                                  {"name": INGRESS, "num_replicas": 1},
                                  {"name": GENERATOR, **scaling(opts), "ray_actor_options": actor_options(opts)}]}]}


def serve_ray(args: argparse.Namespace) -> int:
    from sdcompose.raycluster import connect, require_ray
    from sdcompose.ui.serve import check_bind, parse_auth

    from .security import read_tokens
    require_ray()
    host = "0.0.0.0" if args.listen else args.host
    opts = options(args)
    if args.write_config:  # the credential files are read where the ingress runs: here they are only named
        check_bind(host, [opts.auth or opts.auth_token_file] if opts.auth or opts.auth_token_file else None,
                   args.insecure_no_auth)
        import yaml
        try:
            Path(args.write_config).write_text(yaml.safe_dump(config(opts, host, args.port), sort_keys=False))
        except OSError as exc:
            raise ValidationError(f"--write-config {args.write_config}: cannot write it ({exc.strerror})") from None
        print(args.write_config)
        return 0
    check_bind(host, (parse_auth(args.auth) or []) + read_tokens(args.auth_token_file) or None, args.insecure_no_auth)
    connect(args.address)
    from ray import serve

    from .rayserve import APP, application
    serve.start(http_options={"host": host, "port": args.port})
    serve.run(application(opts), name=APP, route_prefix="/")
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    print(f"sdcompose: serving on http://{shown}:{args.port} on Ray Serve (the API at /v1 and /sdapi/v1)", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    print("sdcompose: stopping (the replicas finish what they run)", flush=True)
    serve.delete(APP)  # drains: replicas finish what they run (graceful_shutdown_timeout_s)
    if not args.address:  # Serve on a cluster this command joined stays up for its other applications
        serve.shutdown()
    return 0
