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
    if args.replicas < 1:
        raise ValidationError(f"--replicas must be at least 1, got {args.replicas}")
    if args.models_per_replica < 1:
        raise ValidationError(f"--models-per-replica must be at least 1, got {args.models_per_replica}")
    return Options(models=str(Path(args.models).resolve()) if args.models else None, device=args.device,
                   dtype=args.dtype, models_per_replica=args.models_per_replica, replicas=args.replicas,
                   autoscale=autoscale, gpus_per_replica=args.gpus_per_replica, cpus_per_replica=args.cpus_per_replica,
                   max_queue=args.max_queue, auth=args.auth, auth_token_file=args.auth_token_file,
                   cors_origins=list(args.cors_allow_origin or []), model=args.model)


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
    from .rayserve import APP, GENERATOR, INGRESS
    args = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(opts).items()}
    scaling = ({"autoscaling_config": {"min_replicas": opts.autoscale[0], "max_replicas": opts.autoscale[1],
                                       "target_ongoing_requests": 1}}
               if opts.autoscale else {"num_replicas": opts.replicas})
    return {"proxy_location": "EveryNode", "http_options": {"host": host, "port": port},
            "applications": [{"name": APP, "route_prefix": "/", "import_path": "sdcompose.server.rayserve:build",
                              "args": args, "deployments": [
                                  {"name": INGRESS, "num_replicas": 1},
                                  {"name": GENERATOR, **scaling, "ray_actor_options": {
                                      "num_gpus": opts.gpus_per_replica, "num_cpus": opts.cpus_per_replica}}]}]}


def serve_ray(args: argparse.Namespace) -> int:
    from sdcompose.raycluster import connect, require_ray
    from sdcompose.ui.serve import check_bind, parse_auth

    from .security import read_tokens
    require_ray()
    host = "0.0.0.0" if args.listen else args.host
    check_bind(host, (parse_auth(args.auth) or []) + read_tokens(args.auth_token_file) or None, args.insecure_no_auth)
    opts = options(args)
    if args.write_config:
        import yaml
        Path(args.write_config).write_text(yaml.safe_dump(config(opts, host, args.port), sort_keys=False))
        print(args.write_config)
        return 0
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
    serve.delete(APP)  # drains: replicas finish what they run (graceful_shutdown_timeout_s)
    serve.shutdown()
    return 0
