"""``sdcompose serve --ray``: the same app on Ray Serve, routed by base model.

Two deployments: ``ingress`` runs the FastAPI app of ``sdcompose serve`` (its routes, security layer and the one
job queue, so job ids, progress, previews and cancel live in one place whichever replica runs a job), and
``generator``, whose replicas each own one ``sdcompose.Pipeline``. A job's base model id is its multiplexed model
id (``serve.multiplexed``): Serve sends it to a replica that already holds that base, and a replica keeps at most
K bases. Each image's metadata names the replica that made it (``replica``).
"""
from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

from ray import serve

from sdcompose.errors import Cancelled, SdcomposeError, Unavailable
from sdcompose.pipelines.pipeline import Pipeline
from sdcompose.request import GenerationRequest, validate

from .native import PREVIEW_EVERY_S

GENERATOR, INGRESS, APP = "generator", "ingress", "sdcompose"
# Requests a generator replica takes at once: one runs, the next waits on the replica, so it starts as soon as the
# one before ends. Serve sends a request to the replicas holding its base while one of them has room, else to the
# replica with the fewest bases, which loads it: one base's load spreads over the replicas once it needs them.
ONGOING_PER_REPLICA = 2
# Jobs the ingress sends at once, per generator replica (the rest wait in its queue, with their place and ETA).
IN_FLIGHT_PER_REPLICA = 2


class ReplicaLost(Unavailable):
    """The generator replica running a request stopped; the request did not finish (HTTP 503)."""


@dataclass
class Options:
    """What ``sdcompose serve --ray`` and ``serve.yaml`` configure (the ``args`` of the Serve application)."""

    models: str | None = None
    device: str | None = None
    dtype: str | None = None
    models_per_replica: int = 2
    replicas: int = 1
    autoscale: tuple[int, int] | None = None
    gpus_per_replica: float = 0.0
    cpus_per_replica: float = 1.0
    max_queue: int = 64
    auth: str | None = None  # as --auth: user:password or @FILE (read on the ingress replica)
    auth_token_file: str | None = None
    cors_origins: list[str] | None = None
    model: str | None = None


class Generator:
    """One generator replica: a Pipeline running one request at a time, streaming progress and previews back."""

    def __init__(self, models: Any, device: str | None, dtype: str | None, keep: int) -> None:
        self.pipe = Pipeline(models=models, device=device, dtype=dtype, keep_models=keep)
        self.replica = serve.get_replica_context().replica_id.unique_id
        self.runner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sdcompose-generator")  # one Pipeline

    async def generate(self, request: GenerationRequest):
        """Yields ``("started", replica)`` once the pipeline takes the request, ``("progress", step, total)``,
        ``("preview", step, total, image)``, last ``("result", result)`` or ``("error", exc)``. A caller that goes
        away (or cancels the stream) stops the run at its next step."""
        await self.base(serve.get_multiplexed_model_id() or request.model)
        loop, events, cancel = asyncio.get_running_loop(), asyncio.Queue(), threading.Event()
        put = lambda *event: loop.call_soon_threadsafe(events.put_nowait, event)  # noqa: E731
        work = loop.run_in_executor(self.runner, self._run, request, put, cancel)
        try:
            while True:
                event = await events.get()
                yield event
                if event[0] in ("result", "error"):
                    return
        finally:
            cancel.set()  # the caller cancelled or disconnected: the pipeline stops at its next step
            await asyncio.shield(work)

    def _run(self, request: GenerationRequest, put: Callable[..., None], cancel: threading.Event) -> None:
        if cancel.is_set():  # given up while it waited for the one before it
            return put("error", Cancelled("cancelled before it started"))
        put("started", self.replica)
        shown = [0.0]

        def preview(step: int, total: int, image: Any) -> None:  # no more cross the network than the API shows
            if time.monotonic() - shown[0] >= PREVIEW_EVERY_S:
                shown[0] = time.monotonic()
                put("preview", step, total, image)
        try:
            result = self.pipe.run(request, progress=lambda s, t: put("progress", s, t), cancel=cancel,
                                   preview=preview)
            for meta in (result.metadata, *result.per_image):
                meta["replica"] = self.replica
            put("result", result)
        except BaseException as exc:  # noqa: BLE001 - the caller raises it
            put("error", exc)

    def check_health(self) -> None:
        """Serve's health check: the replica answers, and its GPU (if it has one) still does."""
        if str(self.pipe.device).startswith("cuda"):
            import torch
            torch.cuda.mem_get_info(self.pipe.device)  # raises once the device is lost: Serve replaces the replica


def generator_deployment(options: Options) -> Any:
    """The generator deployment class with ``serve.multiplexed`` keeping ``models_per_replica`` bases."""

    class SdcomposeGenerator(Generator):
        @serve.multiplexed(max_num_models_per_replica=options.models_per_replica)
        async def base(self, model_id: str) -> str:
            return model_id  # the Pipeline loads the base on first use and keeps the same number (keep_models)

    return serve.deployment(SdcomposeGenerator, name=GENERATOR, max_ongoing_requests=ONGOING_PER_REPLICA,
                            health_check_period_s=10, health_check_timeout_s=60, graceful_shutdown_timeout_s=60,
                            ray_actor_options=actor_options(options), **scaling(options))


def scaling(options: Options) -> dict[str, Any]:
    """The generator's replica count, fixed or autoscaled (also written into ``serve.yaml``)."""
    if options.autoscale:
        low, high = options.autoscale
        return {"autoscaling_config": {"min_replicas": low, "max_replicas": high,
                                       "target_ongoing_requests": IN_FLIGHT_PER_REPLICA}}
    return {"num_replicas": options.replicas}


def actor_options(options: Options) -> dict[str, float]:
    return {"num_gpus": options.gpus_per_replica, "num_cpus": options.cpus_per_replica}


class RemotePipeline(Pipeline):
    """The ingress's Pipeline: catalogue, plugins and preprocessing here; generation on a generator replica."""

    def __init__(self, handle: Any, options: Options) -> None:
        super().__init__(models=options.models, device="cpu")
        self.handle = handle

    def run(self, request: GenerationRequest, progress: Callable[[int, int], None] | None = None,
            cancel: threading.Event | None = None, preview: Callable[..., None] | None = None) -> Any:
        req = validate(request)  # a bad request is refused here, before any replica is asked
        for attempt in (1, 2):
            started, answer = False, None
            try:
                stream = self.handle.options(multiplexed_model_id=req.model, stream=True).generate.remote(req)
                for kind, *data in stream:
                    if cancel is not None and cancel.is_set():
                        stream.cancel()  # the replica's pipeline stops at its next step
                        raise Cancelled("cancelled")
                    if kind == "started":
                        started = True
                    elif kind == "progress" and progress:
                        progress(*data)
                    elif kind == "preview" and preview:
                        preview(*data)
                    elif kind in ("result", "error"):
                        answer = (kind, data[0])
                        break
            except Cancelled:
                raise
            except Exception as exc:  # the replica died under the request, or Serve could not reach one
                if started or attempt == 2:
                    raise ReplicaLost(f"the generator replica running this request stopped ({type(exc).__name__}); "
                                      "try again") from None
                continue  # it never started: once more, on whichever replica Serve picks now
            if answer is None:
                raise ReplicaLost("the generator replica ended this request without an answer; try again")
            if answer[0] == "error":
                raise answer[1]  # the pipeline's own error (a bad model, out of memory...), as in-process
            return answer[1]
        raise AssertionError("unreachable")


@serve.ingress()
class Ingress:
    """The FastAPI app of ``sdcompose serve`` over a job queue whose jobs run on generator replicas."""

    def __init__(self, generator: Any, options: Options) -> None:
        self.generator, self.options = generator, options

    def __serve_build_asgi_app__(self):
        from .app import build_app
        from .jobs import JobQueue
        from sdcompose.ui.serve import parse_auth

        from .security import Security, read_tokens
        from .service import Service
        o = self.options
        self.pipeline = RemotePipeline(self.generator, o)
        replicas = o.autoscale[1] if o.autoscale else o.replicas
        self.jobs = JobQueue(max_queue=o.max_queue, workers=IN_FLIGHT_PER_REPLICA * replicas)
        security = Security(users=parse_auth(o.auth) or [], tokens=read_tokens(o.auth_token_file),
                            cors_origins=list(o.cors_origins or []))
        return build_app(Service(self.pipeline, self.jobs, o.model), security, api=True, ui=None)

    def __del__(self) -> None:
        jobs = getattr(self, "jobs", None)
        if jobs is not None:
            jobs.close()


def application(options: Options) -> Any:
    generator = generator_deployment(options).bind(options.models, options.device, options.dtype,
                                                   options.models_per_replica)
    return serve.deployment(Ingress, name=INGRESS, num_replicas=1, ray_actor_options={"num_cpus": 0},
                            graceful_shutdown_timeout_s=60).bind(generator, options)


def build(args: dict[str, Any]) -> Any:
    """The application builder ``serve deploy serve.yaml`` calls (``import_path: sdcompose.server.rayserve:build``)."""
    args = dict(args)
    if args.get("autoscale"):
        args["autoscale"] = tuple(args["autoscale"])
    return application(Options(**args))
