"""The native API under ``/v1``: the request schema as the body, jobs with progress, previews and cancel.

Every route is thin: parse (``inputs``), queue (``Service``), answer (``answers``).
"""
from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from sdcompose import __version__

from .answers import b64, error_body, error_response, preview_png, result_pngs, timing
from .inputs import FieldError, check_depth, image_bytes, request_from_json, request_schema
from .jobs import FINISHED, Job
from .service import Service, finished, outcome

PREVIEW_EVERY_S = 0.25
MAX_PARTS = 16


def router(service: Service) -> APIRouter:
    api = APIRouter(prefix="/v1", tags=["sdcompose"])
    body = {"requestBody": {"required": True, "content": {
        "application/json": {"schema": request_schema()},
        "multipart/form-data": {"schema": {"type": "object", "properties": {
            "request": {"type": "string", "description": "the request as JSON"},
            "init_image": {"type": "string", "format": "binary"}, "mask": {"type": "string", "format": "binary"}},
            "description": "images as parts named init_image, mask, controls[N].image"}}}}}

    @api.post("/generate", openapi_extra=body, summary="Generate and wait; JSON, or the PNG with Accept: image/png")
    async def generate(request: Request) -> Response:
        try:
            req = await parse_request(request)
            as_png = "image/png" in request.headers.get("accept", "")
            if as_png and req.batch != 1:
                raise FieldError("batch", "Accept: image/png answers one image: send batch 1, or ask for JSON")
            job = await finished(service.submit(req, "generate"), request)
            result = outcome(job)
        except Exception as exc:  # noqa: BLE001 - every error becomes a JSON answer
            return error_response(exc)
        if as_png:
            return Response(result_pngs(result)[0], media_type="image/png", headers=timing(job))
        return JSONResponse(answer(job), headers=timing(job))

    @api.post("/jobs", openapi_extra=body, status_code=202, summary="Queue a request; answers its id at once")
    async def submit(request: Request) -> JSONResponse:
        try:
            job = service.submit(await parse_request(request), "generate")
        except Exception as exc:  # noqa: BLE001
            return error_response(exc)
        return JSONResponse(snapshot(service, job), status_code=202)

    @api.get("/jobs/{job_id}", summary="A job's state, progress, queue position, latest preview, result")
    async def status(job_id: str) -> JSONResponse:
        job = service.jobs.get(job_id)
        return JSONResponse(snapshot(service, job, with_result=True)) if job else _unknown(job_id)

    @api.delete("/jobs/{job_id}", summary="Cancel: a queued job never runs; a running one stops at its next step")
    async def cancel(job_id: str) -> JSONResponse:
        job = service.jobs.cancel(job_id)
        return JSONResponse(snapshot(service, job)) if job else _unknown(job_id)

    @api.get("/jobs/{job_id}/events", summary="Server-sent events: progress, preview, then result or error")
    async def events(job_id: str, request: Request) -> Response:
        job = service.jobs.get(job_id)
        if job is None:
            return _unknown(job_id)
        return StreamingResponse(stream(service, job, request), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    @api.get("/models", summary="The models.yaml catalogue")
    async def models() -> list[dict[str, Any]]:
        return service.pipeline.models()

    @api.get("/plugins", summary="Discovered plugins, with their params and status")
    async def plugins() -> Any:
        return json.loads(json.dumps(service.pipeline.plugins(), default=str))

    @api.get("/health", summary="Liveness and the queue's state")
    async def health() -> dict[str, Any]:
        running = service.jobs.running
        return {"status": "ok", "version": __version__, "queue": {
            "waiting": service.jobs.waiting(), "max": service.jobs.max_queue, "running": running.id if running else None}}

    @api.post("/preprocess", summary="A conditioner's control map: {plugin, image, width, height, resize_mode, params}")
    async def preprocess(request: Request) -> Response:
        try:
            data = await json_body(request)
            unknown = set(data) - {"plugin", "image", "width", "height", "resize_mode", "params"}
            if unknown:
                raise FieldError(min(unknown), f"unknown field {min(unknown)!r}")
            if not isinstance(data.get("plugin"), str):
                raise FieldError("plugin", "plugin must be a conditioner id such as canny")
            params = data.get("params") or {}
            if not isinstance(params, dict):
                raise FieldError("params", "params must be an object of the plugin's params")
            image = image_bytes(data.get("image"), "image")
            job = await finished(service.submit_call(lambda **_: service.pipeline.preprocess(
                data["plugin"], image, width=data.get("width"), height=data.get("height"),
                resize_mode=data.get("resize_mode", "crop_and_resize"), **params), "preprocess"), request)
            picture = outcome(job)
        except Exception as exc:  # noqa: BLE001
            return error_response(exc)
        png = preview_png(picture)
        if "image/png" in request.headers.get("accept", ""):
            return Response(image_bytes(png, "image"), media_type="image/png")
        return JSONResponse({"image": png.split(",", 1)[1]})

    @api.post("/reproduce", summary="Make an sdcompose PNG again: {image: base64 PNG, strict: true}")
    async def reproduce(request: Request) -> Response:
        try:
            data = await json_body(request)
            png = image_bytes(data.get("image"), "image")
            strict = data.get("strict", True)
            if not isinstance(strict, bool):
                raise FieldError("strict", "strict must be true or false")
            job = await finished(service.submit_call(lambda **_: service.pipeline.reproduce(png, strict=strict),
                                                     "reproduce"), request)
            outcome(job)
        except Exception as exc:  # noqa: BLE001
            return error_response(exc)
        return JSONResponse(answer(job))

    return api


async def json_body(request: Request) -> Any:
    raw = await request.body()
    try:
        data = json.loads(raw or b"null")
    except (ValueError, RecursionError):
        raise FieldError("body", "the body is not valid JSON") from None
    check_depth(data)
    if not isinstance(data, dict):
        raise FieldError("body", f"the body must be a JSON object, got {type(data).__name__}")
    return data


async def parse_request(request: Request):
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        form = await request.form(max_files=MAX_PARTS, max_fields=MAX_PARTS)
        files, text = {}, form.get("request", "{}")
        for name, value in form.multi_items():
            if hasattr(value, "read") and name != "request":  # the request part may come as a file (curl -F request=@f)
                files[name] = await value.read()
        if not isinstance(text, str):
            text = (await text.read()).decode("utf-8", "replace")
        try:
            data = json.loads(text)
        except (ValueError, RecursionError):
            raise FieldError("request", "the request part is not valid JSON") from None
        return request_from_json(data, files)
    return request_from_json(await json_body(request))


def answer(job: Job) -> dict[str, Any]:
    """The result of a finished job as JSON: base64 PNGs (metadata embedded) and the metadata (encoded once)."""
    if not hasattr(job, "answer"):
        result = job.result
        images = [b64(png) for png in result_pngs(result)] if hasattr(result, "per_image") else []
        job.answer = {"images": images, "metadata": json.loads(json.dumps(result.metadata, default=str))}
    return job.answer


def snapshot(service: Service, job: Job, with_result: bool = False) -> dict[str, Any]:
    data = {"id": job.id, "state": job.state, "kind": job.label, "step": job.step, "total": job.total,
            "position": service.jobs.position(job), "created": job.created, "started": job.started,
            "finished": job.finished}
    if with_result:
        data["preview"] = preview_png(job.preview) if job.state == "running" else None
        data["result"] = answer(job) if job.state == "done" else None
        data["error"] = error_body(job.error)["error"] if job.error is not None else None
    return data


async def stream(service: Service, job: Job, request: Request):
    """SSE: ``progress`` on every change, ``preview`` at most four a second, then ``result`` or ``error``."""
    loop = asyncio.get_running_loop()
    changed = asyncio.Event()
    listener = lambda: loop.call_soon_threadsafe(changed.set)  # noqa: E731
    job.subscribe(listener)
    last, shown = None, 0.0
    try:
        while True:
            state = snapshot(service, job)
            key = (state["state"], state["step"], state["position"])
            if key != last:
                last = key
                yield _event("progress", state)
            if job.state == "running" and job.preview is not None and time.monotonic() - shown >= PREVIEW_EVERY_S:
                shown = time.monotonic()
                yield _event("preview", {"step": job.step, "total": job.total, "image": preview_png(job.preview)})
            if job.state in FINISHED:
                if job.state == "done":
                    yield _event("result", answer(job))
                else:
                    yield _event("error", error_body(job.error)["error"])
                return
            try:
                await asyncio.wait_for(changed.wait(), 1.0)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    return
            changed.clear()
    finally:
        job.unsubscribe(listener)


def _event(name: str, data: Any) -> str:
    return f"event: {name}\ndata: {json.dumps(data, default=str)}\n\n"


def _unknown(job_id: str) -> JSONResponse:
    return JSONResponse({"error": {"type": "NotFound", "field": "job_id", "message":
                                   f"no job {job_id[:80]!r}: it never existed or finished too long ago"}},
                        status_code=404)

