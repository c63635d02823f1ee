"""The AUTOMATIC1111-compatible API (``/sdapi/v1``) and sd-webui-controlnet's (``/controlnet``), so existing
clients (webuiapi, chat front ends, editor plugins) work unchanged. Thin: ``a1111_request`` maps the payload,
the shared ``Service`` queue runs it, and the answer is written the way A1111 writes it."""
from __future__ import annotations

import json
import re
import threading
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from sdcompose import __version__
from sdcompose import samplers as sampler_table
from sdcompose.errors import Cancelled
from sdcompose.metadata import png_text, a1111_parameters
from sdcompose.request import LANCZOS

from . import a1111_names as names
from .a1111_extras import extras_plan, upscaled_png
from .a1111_request import checkpoint, plan, whole
from .answers import b64, error_body, preview_png, result_pngs, status_of, timing
from .inputs import FieldError, image_bytes
from .native import json_body
from .service import Service, finished

# sdcompose's names in validation messages -> A1111's field names
FIELD_NAMES = (("guidance", "cfg_scale"), ("batch", "batch_size"), ("strength", "denoising_strength"),
               ("init_image", "init_images[0]"), ("controls", "alwayson_scripts.controlnet.args"),
               ("hires.scale", "hr_scale"), ("hires.steps", "hr_second_pass_steps"),
               ("hires.denoise", "denoising_strength"), ("hires.upscaler", "hr_upscaler"))


def router(service: Service) -> APIRouter:
    api = APIRouter(tags=["AUTOMATIC1111-compatible"])

    calls: dict[str, Iterations] = {}  # job id -> its n_iter runs, for /skip and /progress

    async def run(request: Request, task: str) -> JSONResponse:
        try:
            payload = await json_body(request)
            todo = plan(payload, task, service.model, service.pipeline.catalog)
            runs = Iterations(service, todo)
            job = service.submit_call(runs, task)
            calls[job.id] = runs
            try:
                job = await finished(job, request)
            finally:
                calls.pop(job.id, None)
        except Exception as exc:  # noqa: BLE001 - every error becomes a JSON answer
            return a1111_error(exc)
        if job.state == "failed":
            return a1111_error(job.error)
        results = job.result if job.state == "done" else []  # interrupted: what was finished, as A1111 does
        images = [b64(png) for result in results for png in result_pngs(result)]
        return JSONResponse({"images": images if todo.send_images else [], "parameters": payload,
                             "info": json.dumps(info(todo, results, job.cancel.is_set()))}, headers=timing(job))

    @api.post("/sdapi/v1/txt2img")
    async def txt2img(request: Request) -> JSONResponse:
        return await run(request, "txt2img")

    @api.post("/sdapi/v1/img2img")
    async def img2img(request: Request) -> JSONResponse:
        return await run(request, "img2img")

    @api.get("/sdapi/v1/progress")
    async def progress(skip_current_image: bool = False) -> dict[str, Any]:
        job = service.jobs.running
        step, total = (job.step, job.total) if job else (0, 0)
        fraction = step / total if total else 0.0
        elapsed = time.time() - job.started if job and job.started else 0.0
        image = None if skip_current_image or job is None else preview_png(job.preview)
        runs = calls.get(job.id) if job else None
        return {"progress": fraction, "eta_relative": elapsed / fraction - elapsed if fraction else 0.0,
                "state": {"skipped": bool(runs and runs.skipping.is_set()),
                          "interrupted": bool(job and job.cancel.is_set()),
                          "stopping_generation": False, "job": job.label if job else "",
                          "job_count": service.jobs.waiting() + (job is not None), "job_timestamp": "0",
                          "job_no": runs.index if runs else 0, "sampling_step": step, "sampling_steps": total},
                "current_image": image.split(",", 1)[1] if image else None, "textinfo": None,
                "current_task": job.id if job else None}

    @api.post("/sdapi/v1/interrupt")
    async def interrupt() -> dict:
        job = service.jobs.running
        if job is not None:
            job.cancel.set()
        return {}

    @api.post("/sdapi/v1/skip")
    async def skip() -> dict:
        """End the running call's current image (one of its n_iter) and go on with the next, as A1111 does."""
        job = service.jobs.running
        runs = calls.get(job.id) if job else None
        if runs is not None:
            runs.skipping.set()
        elif job is not None:  # a native job or a UI run has one image run: skipping it is stopping it
            job.cancel.set()
        return {}

    @api.get("/sdapi/v1/sd-models")
    async def sd_models() -> list[dict[str, Any]]:
        return [{"title": m["id"], "model_name": m["id"], "hash": None, "sha256": None, "filename": m["id"],
                 "config": None} for m in _entries(service, "base")]

    @api.post("/sdapi/v1/refresh-checkpoints")
    async def refresh_checkpoints() -> dict[str, list[str]]:  # the model folders scanned again
        return service.pipeline.refresh()

    @api.get("/sdapi/v1/samplers")
    async def samplers() -> list[dict[str, Any]]:
        return [{"name": name, "aliases": [sampler_id], "options": {}}
                for sampler_id, (name, *_) in sampler_table.SAMPLERS.items()]

    @api.get("/sdapi/v1/schedulers")
    async def schedulers() -> list[dict[str, Any]]:
        return [{"name": name, "label": label, "aliases": None, "default_rho": -1, "need_inner_model": False}
                for name, label in names.schedule_types()]

    @api.get("/sdapi/v1/loras")
    async def loras() -> list[dict[str, Any]]:
        return [{"name": m["id"], "alias": m["id"], "path": m["id"], "metadata": {}} for m in _entries(service, "lora")]

    @api.get("/sdapi/v1/embeddings")
    async def embeddings() -> dict[str, Any]:
        """A1111's answer: the current checkpoint's family's embeddings as loaded, the other families' as skipped."""
        current = service.pipeline.catalog.entries.get(service.model)
        family = current.family if current else None
        found: dict[str, dict[str, Any]] = {"loaded": {}, "skipped": {}}
        for m in _entries(service, "embedding"):
            found["loaded" if m.get("family") == family else "skipped"][m["id"]] = {
                "step": None, "sd_checkpoint": None, "sd_checkpoint_name": None, "shape": None, "vectors": None}
        return found

    @api.get("/sdapi/v1/scripts")
    async def scripts() -> dict[str, list[str]]:
        return {"txt2img": ["controlnet"], "img2img": ["controlnet"]}

    @api.get("/sdapi/v1/options")
    async def options() -> dict[str, Any]:
        return {"sd_model_checkpoint": service.model, "sd_checkpoint_hash": None, "CLIP_stop_at_last_layers": 1,
                "samples_format": "png", "sd_vae": "Automatic"}

    @api.post("/sdapi/v1/options")
    async def set_options(request: Request) -> JSONResponse:
        try:
            data = await json_body(request)
            for key in data:
                if key != "sd_model_checkpoint":
                    raise FieldError(key, f"option {key!r} cannot be set on sdcompose (only sd_model_checkpoint)")
            if "sd_model_checkpoint" in data:
                service.model = checkpoint(data["sd_model_checkpoint"], service.pipeline.catalog,
                                           "sd_model_checkpoint")
        except Exception as exc:  # noqa: BLE001
            return a1111_error(exc)
        return JSONResponse(None)

    @api.post("/sdapi/v1/png-info")
    async def png_info(request: Request) -> JSONResponse:
        try:
            text = png_text(image_bytes((await json_body(request)).get("image"), "image"))
        except Exception as exc:  # noqa: BLE001
            return a1111_error(exc)
        parameters = text.get("parameters", "")
        return JSONResponse({"info": parameters, "items": {k: v for k, v in text.items() if k == "sdcompose"},
                             "parameters": parse_parameters(parameters)})

    @api.get("/sdapi/v1/upscalers")
    async def upscalers() -> list[dict[str, Any]]:
        """A1111's list: its names sdcompose maps (hr_upscaler, upscaler_1), then the models.yaml upscalers by id."""
        own = [{"name": m["id"], "model_name": m["id"], "model_path": m["id"], "model_url": None, "scale": None}
               for m in _entries(service, "upscaler")]
        mapped = [{"name": name, "model_name": None if ours == LANCZOS else ours, "model_path": None,
                   "model_url": None, "scale": None} for name, ours in names.HR_UPSCALERS.items()]
        return mapped + own

    @api.post("/sdapi/v1/extra-single-image")
    async def extra_single_image(request: Request) -> JSONResponse:
        """One image enlarged ``upscaling_resize`` times by ``upscaler_1`` (tile by tile), PNG with its metadata."""
        try:
            payload = await json_body(request)
            source, model, scale = extras_plan(payload, service.pipeline.catalog)
            job = await finished(service.submit_call(
                lambda progress, cancel, preview: upscaled_png(service.pipeline, source, model, scale, cancel),
                "extras"), request)
            if job.state != "done":
                raise job.error
        except Exception as exc:  # noqa: BLE001
            return a1111_error(exc)
        return JSONResponse({"html_info": "", "image": b64(job.result)})

    @api.get("/controlnet/version")
    async def controlnet_version() -> dict[str, int]:
        return {"version": 2}

    @api.get("/controlnet/model_list")
    async def controlnet_models() -> dict[str, list[str]]:
        return {"model_list": [m["id"] for kind in ("controlnet", "t2i_adapter") for m in _entries(service, kind)]}

    @api.get("/controlnet/module_list")
    async def controlnet_modules() -> dict[str, Any]:
        return {"module_list": ["none", *names.MODULES, *names.IP_ADAPTER_MODULES], "module_detail": {}}

    @api.post("/controlnet/detect")
    async def detect(request: Request) -> JSONResponse:
        try:
            data = await json_body(request)
            module = data.get("controlnet_module", "none")
            if module not in names.MODULES:
                raise FieldError("controlnet_module", f"controlnet_module {str(module)[:80]!r} is not one sdcompose "
                                                      "has (GET /controlnet/module_list lists them)")
            plugin, params = names.MODULES[module]
            if plugin == "canny":
                params = {"low_threshold": whole(data.get("controlnet_threshold_a", 100), "controlnet_threshold_a"),
                          "high_threshold": whole(data.get("controlnet_threshold_b", 200), "controlnet_threshold_b")}
            pictures = data.get("controlnet_input_images", data.get("controlnet_images")) or []  # new name, old
            if not isinstance(pictures, list) or not pictures:
                raise FieldError("controlnet_input_images", "controlnet_input_images must list base64 images")
            inputs = [image_bytes(x, f"controlnet_input_images[{i}]") for i, x in enumerate(pictures)]
            job = await finished(service.submit_call(lambda **_: [service.pipeline.preprocess(plugin, x, **params)
                                                                  for x in inputs], "detect"), request)
            if job.state != "done":
                raise job.error
        except Exception as exc:  # noqa: BLE001
            return a1111_error(exc)
        answer = {"images": [preview_png(x).split(",", 1)[1] for x in job.result], "info": "Success"}
        if plugin == "pose":  # as sd-webui-controlnet: each image's people as OpenPose JSON (pose editors read it)
            answer["poses"] = [x.info.get("openpose") for x in job.result]
        return JSONResponse(answer)

    return api


class Iterations:
    """The ``n_iter`` runs of one call, in order, as one job. Interrupted (the job's cancel flag): what was finished
    (or Cancelled when nothing was). Skipped (``skipping``): the current run ends without its images and the next
    one starts."""

    def __init__(self, service: Service, todo: Any) -> None:
        self.service, self.todo = service, todo
        self.index, self.skipping = 0, threading.Event()

    def __call__(self, progress: Any, cancel: threading.Event, preview: Any) -> list[Any]:
        results: list[Any] = []
        for self.index, request in enumerate(self.todo.requests):
            self.skipping = threading.Event()
            try:
                results.append(self.service.pipeline.run(request, progress=progress, preview=preview,
                                                         cancel=EitherSet(cancel, self.skipping)))
            except Cancelled:
                if self.skipping.is_set() and not cancel.is_set():
                    continue  # skipped: on with the next
                if results:
                    return results
                raise
        return results


class EitherSet:
    """A cancel flag set when either of two events is (the pipeline asks only ``is_set()``)."""

    def __init__(self, first: threading.Event, second: threading.Event) -> None:
        self.first, self.second = first, second

    def is_set(self) -> bool:
        return self.first.is_set() or self.second.is_set()


def _entries(service: Service, kind: str) -> list[dict[str, Any]]:
    return [m for m in service.pipeline.models() if m.get("kind") == kind]


def info(todo: Any, results: list[Any], interrupted: bool) -> dict[str, Any]:
    """The ``info`` JSON A1111 answers with: the first image's parameters, every seed, one infotext an image."""
    first = todo.requests[0]
    metas = [meta for result in results for meta in result.per_image]
    seeds = [meta["seed"] for meta in metas] or [first.seed]
    return {"prompt": first.prompt, "all_prompts": [first.prompt] * len(seeds), "negative_prompt": first.negative_prompt,
            "all_negative_prompts": [first.negative_prompt] * len(seeds), "seed": seeds[0], "all_seeds": seeds,
            "subseed": -1, "all_subseeds": [-1] * len(seeds), "subseed_strength": 0, "width": first.width,
            "height": first.height, "sampler_name": todo.sampler_name, "scheduler": todo.schedule,
            "cfg_scale": first.guidance, "steps": first.steps, "batch_size": first.batch, "restore_faces": False,
            "face_restoration_model": None, "sd_model_name": first.model, "sd_model_hash": None, "sd_vae_name": None,
            "sd_vae_hash": None, "seed_resize_from_w": -1, "seed_resize_from_h": -1,
            "denoising_strength": first.strength if first.init_image is not None else
            first.hires.denoise if first.hires else None, "extra_generation_params": {} if first.hires is None else {
                "Hires upscale": first.hires.scale, "Hires steps": first.hires.steps,
                "Hires upscaler": first.hires.upscaler}, "index_of_first_image": 0,
            "infotexts": [a1111_parameters(meta) for meta in metas], "styles": [],
            "job_timestamp": time.strftime("%Y%m%d%H%M%S"), "clip_skip": 1,
            "is_using_inpainting_conditioning": False, "interrupted": interrupted, "version": f"sdcompose {__version__}"}


def parse_parameters(text: str) -> dict[str, Any]:
    """A1111's infotext as a dict: Prompt, Negative prompt, then each ``Key: value`` of the last line."""
    lines = text.split("\n")
    if not text:
        return {}
    out: dict[str, Any] = {"Prompt": lines[0]}
    for line in lines[1:-1]:
        if line.startswith("Negative prompt: "):
            out["Negative prompt"] = line[len("Negative prompt: "):]
    for key, value in re.findall(r"\s*([\w ]+): ([^,]+)(?:,|$)", lines[-1] if len(lines) > 1 else ""):
        out[key.strip()] = value.strip()
    return out


def a1111_error(exc: BaseException) -> JSONResponse:
    body = error_body(exc)
    field = body["error"]["field"]
    for ours, theirs in FIELD_NAMES:
        if field and (field == ours or field.startswith(ours + "[") or field.startswith(ours + ".")):
            field = theirs + field[len(ours):]
            break
    body["error"]["field"] = field
    # A1111's own error keys beside ours, so its clients show the message
    body |= {"detail": body["error"]["message"], "errors": body["error"]["message"]}
    headers = {"Retry-After": str(exc.retry_after)} if hasattr(exc, "retry_after") else None
    return JSONResponse(body, status_code=status_of(exc), headers=headers)

