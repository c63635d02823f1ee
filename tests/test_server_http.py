"""`sdcompose serve` on 127.0.0.1 driven by real clients: httpx for the native API, webuiapi (from PyPI) for the
AUTOMATIC1111-compatible one. One server (tiny models, a password and a token, --max-queue 8) serves the module."""
from __future__ import annotations

import base64
import http.client
import io
import json
import struct
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image

import sdcompose
from test_ui_server import running_ui, wait_for

USER, PASSWORD, TOKEN = "tester", "a-long-test-password", "token-0123456789abcdef"
SMALL = dict(model="tiny-sd15", width=64, height=64, steps=2)
LONG = dict(model="tiny-sd15", width=512, height=512, steps=150)
A1111_SMALL = dict(width=64, height=64, steps=2, override_settings={"sd_model_checkpoint": "tiny-sd15"})


class Live:
    def __init__(self, url: str, proc) -> None:
        self.url, self.proc = url, proc
        self.port = int(url.rsplit(":", 1)[1])
        self.http = httpx.Client(base_url=url, auth=(USER, PASSWORD), timeout=300)

    def webui(self):
        import webuiapi
        return webuiapi.WebUIApi(host="127.0.0.1", port=self.port, username=USER, password=PASSWORD, steps=2)

    def rss_mb(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as status:
            return int(next(line.split()[1] for line in status if line.startswith("VmRSS:"))) / 1024


@pytest.fixture(scope="module")
def live(tmp_path_factory, home):
    folder = tmp_path_factory.mktemp("serve")
    (folder / "tokens").write_text(f"# tokens\n{TOKEN}\n")
    with running_ui(folder / "server.log", "--auth", f"{USER}:{PASSWORD}", "--auth-token-file",
                    str(folder / "tokens"), "--max-queue", "8", command="serve") as (url, proc):
        server = Live(url, proc)
        yield server
        server.http.close()


def data_url(path) -> str:
    return "data:image/png;base64," + base64.b64encode(open(path, "rb").read()).decode()


def decoded(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def error_of(answer: httpx.Response, status: int) -> dict:
    assert answer.status_code == status, (answer.status_code, answer.text[:300])
    return answer.json()["error"]


# ---- the native API ---------------------------------------------------------------------------------------
def test_generate_answers_the_python_apis_image_with_its_metadata(live, pipe, photo):
    body = dict(prompt="a red fox", seed=7, controls=[{"id": "canny", "image": data_url(photo), "weight": 0.8,
                                                       "params": {"low_threshold": 50}}],
                loras=[{"id": "tiny-lora-sd15", "weight": 0.7}], **SMALL)
    answer = live.http.post("/v1/generate", json=body)
    assert answer.status_code == 200, answer.text[:300]
    data = answer.json()
    [image] = [decoded(x) for x in data["images"]]
    meta = json.loads(image.text["sdcompose"])
    assert meta["seed"] == 7 and meta["request"]["loras"] == [{"id": "tiny-lora-sd15", "weight": 0.7}]
    assert data["metadata"]["seeds"] == [7]
    direct = pipe.generate(prompt="a red fox", seed=7, controls=[sdcompose.Control(
        "canny", photo, weight=0.8, params={"low_threshold": 50})], loras=[sdcompose.Lora("tiny-lora-sd15", 0.7)],
        **SMALL)
    assert np.array_equal(pixels(image), np.asarray(direct.images[0]))
    png = live.http.post("/v1/generate", json=body, headers={"Accept": "image/png"})
    assert png.headers["content-type"] == "image/png" and png.content.startswith(b"\x89PNG")
    assert np.array_equal(pixels(Image.open(io.BytesIO(png.content))), pixels(image))
    token = httpx.post(f"{live.url}/v1/generate", json=dict(seed=1, **SMALL), timeout=300,
                       headers={"Authorization": f"Bearer {TOKEN}", "Accept": "image/png"})
    assert token.status_code == 200 and token.content.startswith(b"\x89PNG")


def test_an_ip_adapter_request_is_the_python_apis_image_as_json_and_multipart(live, pipe, photo):
    unit = {"id": "tiny-ip-adapter-sd15", "weight": 0.6, "end": 0.8}
    body = dict(prompt="a fox", seed=3, ip_adapters=[unit | {"image": [data_url(photo)]}], **SMALL)
    answer = live.http.post("/v1/generate", json=body)
    assert answer.status_code == 200, answer.text[:300]
    [image] = [decoded(x) for x in answer.json()["images"]]
    direct = pipe.generate(prompt="a fox", seed=3, ip_adapters=[sdcompose.IpAdapter(
        "tiny-ip-adapter-sd15", [photo], weight=0.6, end=0.8)], **SMALL)
    assert np.array_equal(pixels(image), np.asarray(direct.images[0]))
    assert answer.json()["metadata"]["request"]["ip_adapters"][0]["weight"] == 0.6
    multipart = live.http.post("/v1/generate", data={"request": json.dumps(body | {"ip_adapters": [unit]})},
                               files={"ip_adapters[0].image[0]": ("ref.png", open(photo, "rb"), "image/png")})
    assert multipart.status_code == 200, multipart.text[:300]
    assert np.array_equal(pixels(decoded(multipart.json()["images"][0])), pixels(image))


def test_a_multipart_upload_is_the_same_request(live, photo):
    request = dict(prompt="a door", seed=4, task=None, strength=0.6, **SMALL)
    request.pop("task")
    as_json = live.http.post("/v1/generate", json=request | {"init_image": data_url(photo)}).json()
    multipart = live.http.post("/v1/generate", data={"request": json.dumps(request)},
                               files={"init_image": ("photo.png", open(photo, "rb"), "image/png")}).json()
    assert np.array_equal(pixels(decoded(as_json["images"][0])), pixels(decoded(multipart["images"][0])))
    assert as_json["metadata"]["task"] == "img2img"


def test_a_job_streams_its_progress_and_result_to_the_end(live):
    job = live.http.post("/v1/jobs", json=dict(prompt="streamed", seed=11, **SMALL | {"steps": 3}))
    assert job.status_code == 202
    job_id = job.json()["id"]
    events = []
    with live.http.stream("GET", f"/v1/jobs/{job_id}/events") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in stream.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[6:])))
    names = [name for name, _ in events]
    assert names[-1] == "result" and names.count("result") == 1, names
    steps = [data["step"] for name, data in events if name == "progress"]
    assert steps == sorted(steps) and 3 in steps
    final = live.http.get(f"/v1/jobs/{job_id}").json()
    assert final["state"] == "done" and final["result"]["images"] == events[-1][1]["images"]
    assert json.loads(decoded(final["result"]["images"][0]).text["sdcompose"])["seed"] == 11


def test_a_full_queue_answers_429_and_a_cancelled_queued_job_never_runs(live):
    long = live.http.post("/v1/jobs", json=dict(prompt="long", seed=1, **LONG)).json()["id"]
    wait_for(lambda: live.http.get(f"/v1/jobs/{long}").json()["state"] == "running", "the long job to start")
    queued = [live.http.post("/v1/jobs", json=dict(prompt=f"q{i}", seed=i, **SMALL)).json() for i in range(8)]
    assert [job["position"] for job in queued] == list(range(1, 9))
    full = live.http.post("/v1/jobs", json=dict(prompt="one too many", **SMALL))
    assert error_of(full, 429)["message"].startswith("the queue is full") and int(full.headers["retry-after"]) >= 1
    assert live.http.post("/sdapi/v1/txt2img", json=dict(prompt="a1111 too", **A1111_SMALL)).status_code == 429
    for job in queued:
        assert live.http.delete(f"/v1/jobs/{job['id']}").json()["state"] == "cancelled"
    stopped = live.http.delete(f"/v1/jobs/{long}").json()
    wait_for(lambda: live.http.get(f"/v1/jobs/{long}").json()["state"] == "cancelled", "the long job to stop")
    for job in queued:
        state = live.http.get(f"/v1/jobs/{job['id']}").json()
        assert state["state"] == "cancelled" and state["started"] is None and state["step"] == 0
    assert stopped["id"] == long
    error = live.http.get(f"/v1/jobs/{long}").json()["error"]
    assert error["type"] == "Cancelled" and "cancelled at step" in error["message"]
    assert error_of(live.http.get("/v1/jobs/no-such-job"), 404)["field"] == "job_id"


PNG_BOMB = base64.b64encode(b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + struct.pack(
    ">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0) + struct.pack(">I", zlib.crc32(b"IHDR" + struct.pack(
        ">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)))).decode()
NOT_AN_IMAGE = base64.b64encode(b"hello, not an image").decode()
NESTED = {"prompt": "x", "controls": [{"id": "pose", "image": json.loads("[" * 100 + "]" * 100)}]}


@pytest.mark.parametrize("path, body, status, field", [
    ("/v1/generate", {"steps": "many"}, 422, "steps"),
    ("/v1/generate", {"width": 100}, 422, "width"),
    ("/v1/generate", {"stepz": 2}, 422, "stepz"),
    ("/v1/generate", {"guidance": None}, 422, "guidance"),
    ("/v1/generate", {"controls": [{"id": "canny"}]}, 422, "controls[0].image"),
    ("/v1/generate", {"controls": [{"id": "canny", "image": "x", "wieght": 1}]}, 422, "controls[0].wieght"),
    ("/v1/generate", {"init_image": NOT_AN_IMAGE}, 422, "init_image"),
    ("/v1/generate", {"init_image": PNG_BOMB}, 422, "init_image"),
    ("/v1/generate", {"init_image": "/etc/passwd"}, 422, "init_image"),
    ("/v1/generate", {"controls": [{"id": "canny", "image": "/home/user/photo.png"}]}, 422, "controls[0].image"),
    ("/v1/generate", {"loras": [{"id": "tiny-lora-sd15", "weight": 99}]}, 422, "loras[0].weight"),
    ("/v1/generate", {"ip_adapters": [{"id": "tiny-ip-adapter-sd15", "image": "/etc/passwd"}]}, 422,
     "ip_adapters[0].image"),
    ("/v1/generate", {"ip_adapters": [{"id": "tiny-ip-adapter-sd15", "image": ["/etc/passwd"]}]}, 422,
     "ip_adapters[0].image[0]"),
    ("/v1/generate", {"ip_adapters": [{"id": "tiny-ip-adapter-sd15"}]}, 422, "ip_adapters[0].image"),
    ("/v1/generate", NESTED, 422, "body"),
    ("/v1/generate", [1, 2], 422, "body"),
    ("/sdapi/v1/txt2img", {"enable_hr": True}, 422, "enable_hr"),
    ("/sdapi/v1/txt2img", {"restore_faces": True}, 422, "restore_faces"),
    ("/sdapi/v1/txt2img", {"styles": ["cinematic"]}, 422, "styles"),
    ("/sdapi/v1/txt2img", {"sampler_name": "Restart"}, 422, "sampler_name"),
    ("/sdapi/v1/txt2img", {"sampler_name": "Euler", "scheduler": "Polyexponential"}, 422, "scheduler"),
    ("/sdapi/v1/txt2img", {"cfg_scale": "high"}, 422, "cfg_scale"),
    ("/sdapi/v1/txt2img", {"prompt": "<lora:nowhere:1>"}, 422, "prompt"),
    ("/sdapi/v1/txt2img", {"promt": "x"}, 422, "promt"),
    ("/sdapi/v1/img2img", {"init_images": ["/etc/passwd"]}, 422, "init_images[0]"),
    ("/sdapi/v1/img2img", {"init_images": []}, 422, "init_images"),
    ("/sdapi/v1/img2img", {"prompt": "no image"}, 422, "init_images"),
    ("/sdapi/v1/txt2img", {"alwayson_scripts": {"controlnet": {"args": [{"module": "canny", "model": "x"}]}}}, 422,
     "alwayson_scripts.controlnet.args[0].model"),
    ("/sdapi/v1/txt2img", {"alwayson_scripts": {"ADetailer": {"args": [True, {}]}}}, 422, "alwayson_scripts.ADetailer"),
    ("/sdapi/v1/txt2img", {"alwayson_scripts": {"controlnet": {"args": [{"module": "ip-adapter_clip_sd15",
                                                                         "model": "ip-adapter_nope [1234abcd]"}]}}},
     422, "alwayson_scripts.controlnet.args[0].model"),
])
def test_bad_input_is_a_json_error_naming_the_field(live, path, body, status, field):
    base = dict(SMALL) if path.startswith("/v1") else dict(A1111_SMALL)
    payload = base | body if isinstance(body, dict) else body
    error = error_of(live.http.post(path, json=payload), status)
    assert error["field"] == field, error
    assert error["message"] and "Traceback" not in error["message"] and len(error["message"]) < 400


def test_broken_and_oversized_bodies_are_refused_and_the_server_keeps_serving(live):
    assert error_of(live.http.post("/v1/generate", content=b"{not json"), 422)["field"] == "body"
    not_an_image = live.http.post("/v1/generate", data={"request": json.dumps(dict(prompt="x", **SMALL))},
                                  files={"init_image": ("photo.png", b"hello, not an image", "image/png")})
    assert error_of(not_an_image, 422)["field"] == "init_image"
    conn = http.client.HTTPConnection("127.0.0.1", live.port, timeout=30)
    try:  # a body announced at 2 GB is refused before any of it is read
        conn.putrequest("POST", "/v1/generate")
        conn.putheader("Authorization", "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode())
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(2 * 2**30))
        conn.endheaders()
        answer = conn.getresponse()
        assert answer.status == 413 and b"larger than" in answer.read()
    finally:
        conn.close()
    assert live.http.get("/v1/health").json()["status"] == "ok"
    assert live.http.post("/v1/generate", json=dict(seed=2, **SMALL)).status_code == 200


def test_the_catalogue_plugins_and_docs_are_served(live):
    assert "tiny-sd15" in [m["id"] for m in live.http.get("/v1/models").json()]
    assert "canny" in [p["id"] for p in live.http.get("/v1/plugins").json()]
    schema = live.http.get("/openapi.json").json()
    body = schema["paths"]["/v1/generate"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"prompt", "controls", "loras", "seed"} <= set(body["properties"])
    assert "/sdapi/v1/txt2img" in schema["paths"]
    assert live.http.get("/docs").status_code == 200
    assert httpx.get(f"{live.url}/docs").status_code == 401 and httpx.get(f"{live.url}/openapi.json").status_code == 401


# ---- the AUTOMATIC1111-compatible API through webuiapi ------------------------------------------------------
# Calls with ControlNet units pass their own alwayson_scripts: webuiapi's default dict is shared between calls and
# would carry the unit into every later txt2img of the module.
def test_webuiapi_txt2img_with_a_controlnet_unit_matches_the_python_api(live, pipe, photo):
    import webuiapi
    api = live.webui()
    unit = webuiapi.ControlNetUnit(image=Image.open(photo), module="canny", model="control_v11p_sd15_canny [d14c016b]",
                                   weight=0.9, threshold_a=50, threshold_b=150)
    result = api.txt2img(prompt="a red fox <lora:tiny-lora-sd15:0.6>", seed=5, sampler_name="DPM++ 2M",
                         scheduler="Karras", cfg_scale=6, controlnet_units=[unit], alwayson_scripts={}, **A1111_SMALL)
    meta = json.loads(result.image.text["sdcompose"])
    assert meta["request"]["scheduler"] == "dpmpp_2m_karras" and meta["request"]["prompt"] == "a red fox"
    assert meta["request"]["loras"] == [{"id": "tiny-lora-sd15", "weight": 0.6}]
    assert result.info["all_seeds"] == [5] and result.info["infotexts"][0].startswith("a red fox")
    direct = pipe.generate(prompt="a red fox", seed=5, scheduler="dpmpp_2m_karras", guidance=6,
                           loras=[sdcompose.Lora("tiny-lora-sd15", 0.6)], controls=[sdcompose.Control(
                               "canny", photo, weight=0.9, params={"low_threshold": 50, "high_threshold": 150},
                               resize_mode="resize_and_fill")], **SMALL)
    assert np.array_equal(pixels(result.image), np.asarray(direct.images[0]))


def test_an_sd_webui_controlnet_ip_adapter_unit_is_an_image_prompt(live, pipe, photo):
    import webuiapi
    api = live.webui()
    unit = webuiapi.ControlNetUnit(image=Image.open(photo), module="ip-adapter_clip_sd15",
                                   model="tiny-ip-adapter-sd15 [6a3f6166]", weight=0.6, guidance_end=0.8)
    result = api.txt2img(prompt="a fox", seed=3, sampler_name="DPM++ 2M", controlnet_units=[unit],
                         alwayson_scripts={}, **A1111_SMALL)
    meta = json.loads(result.image.text["sdcompose"])
    assert meta["request"]["controls"] == [] and meta["request"]["ip_adapters"] == [
        {"id": "tiny-ip-adapter-sd15", "image": ["<image>"], "weight": 0.6, "start": 0.0, "end": 0.8}]
    assert meta["request"]["scheduler"] == "dpmpp_2m_karras"  # A1111's Automatic schedule for DPM++ 2M is Karras
    direct = pipe.generate(prompt="a fox", seed=3, scheduler="dpmpp_2m_karras", guidance=7.0, ip_adapters=[
        sdcompose.IpAdapter("tiny-ip-adapter-sd15", photo, weight=0.6, end=0.8)], **SMALL)
    assert np.array_equal(pixels(result.image), np.asarray(direct.images[0]))
    assert "ip-adapter_clip_sd15" in live.http.get("/controlnet/module_list").json()["module_list"]


def test_webuiapi_img2img_inpaint_png_info_models_and_options(live, pipe, photo, mask):
    api = live.webui()
    source = Image.open(photo).convert("RGB")
    made = api.img2img(images=[source], prompt="a door", seed=9, denoising_strength=0.6, **A1111_SMALL)
    direct = pipe.generate(prompt="a door", seed=9, init_image=photo, strength=0.6, scheduler="euler_a",
                           guidance=7.0, **SMALL)
    assert np.array_equal(pixels(made.image), np.asarray(direct.images[0]))
    inpainted = api.img2img(images=[source], mask_image=Image.open(mask), prompt="a door", seed=9,
                            inpainting_fill=1, inpaint_full_res=False, mask_blur=0, **A1111_SMALL)
    assert json.loads(inpainted.image.text["sdcompose"])["task"] == "inpaint"
    refused = live.http.post("/sdapi/v1/img2img", json=dict(init_images=[data_url(photo)], mask=data_url(mask),
                                                            **A1111_SMALL))
    assert error_of(refused, 422)["field"] == "inpainting_fill"  # A1111's default (0: fill) is not available
    info = api.png_info(made.image)
    assert info.info.startswith("a door") and info.parameters["Seed"] == "9"
    titles = [m["title"] for m in api.get_sd_models()]
    assert "tiny-sd15" in titles and "tiny-sdxl" in titles
    api.util_set_model("tiny-sdxl")
    assert api.util_get_current_model() == "tiny-sdxl"
    sdxl = api.txt2img(prompt="x", seed=1, width=64, height=64, steps=2)
    assert json.loads(sdxl.image.text["sdcompose"])["request"]["model"] == "tiny-sdxl"
    api.util_set_model("tiny-sd15")
    assert {s["name"] for s in api.get_samplers()} >= {"Euler a", "DPM++ 2M"}
    assert "canny" in api.controlnet_module_list() and "tiny-controlnet-canny-sd15" in api.controlnet_model_list()


def test_webuiapi_interrupts_a_long_run_and_reports_its_progress(live):
    api = live.webui()
    outcome = {}
    worker = threading.Thread(target=lambda: outcome.update(result=api.txt2img(
        prompt="long", seed=3, width=512, height=512, steps=150, override_settings={"sd_model_checkpoint": "tiny-sd15"})))
    worker.start()
    try:
        progress = wait_for(lambda: (p := api.get_progress())["state"]["sampling_step"] > 0 and p["current_image"]
                            and p, "the long run to report progress and a preview", timeout=120)
        assert progress["state"]["sampling_steps"] == 150 and 0 < progress["progress"] < 1
        preview = decoded(progress["current_image"])  # bare base64, as A1111 sends it: the step's preview
        assert preview.format == "PNG" and preview.width == preview.height > 0
    finally:
        api.interrupt()
        worker.join(120)
    assert not worker.is_alive()
    result = outcome["result"]
    assert result.images == [] and result.info["interrupted"] is True
    assert api.txt2img(prompt="after", seed=1, **A1111_SMALL).image.size == (64, 64)


def test_skip_ends_the_current_image_and_the_call_goes_on_with_the_next(live):
    api = live.webui()
    outcome = {}
    call = dict(prompt="skipped", seed=20, n_iter=2, width=64, height=64, steps=80,
                override_settings={"sd_model_checkpoint": "tiny-sd15"})
    worker = threading.Thread(target=lambda: outcome.update(answer=live.http.post("/sdapi/v1/txt2img", json=call,
                                                                                  timeout=900)))
    worker.start()
    try:
        wait_for(lambda: (state := api.get_progress()["state"])["sampling_step"] > 0 and state["job_no"] == 0,
                 "the first image to be under way", timeout=300)
        api.skip()
    finally:
        worker.join(900)
    assert not worker.is_alive()
    answer = outcome["answer"]
    assert answer.status_code == 200, answer.text[:300]
    info = json.loads(answer.json()["info"])
    # the first image was skipped mid-run (or, had it just finished, the second): the other one was made
    assert len(answer.json()["images"]) == 1 and info["interrupted"] is False
    assert len(info["all_seeds"]) == 1 and info["all_seeds"][0] in (20, 21)


def test_detect_returns_the_control_map(live, pipe, photo):
    answer = live.webui().controlnet_detect(images=[Image.open(photo)], module="canny", threshold_a=60,
                                            threshold_b=180)
    direct = pipe.preprocess("canny", photo, low_threshold=60, high_threshold=180)
    assert np.array_equal(pixels(answer.image), pixels(direct))


# ---- load --------------------------------------------------------------------------------------------------
def mixed_requests(photo):
    """Forty requests, eight clients' worth of five: native and A1111, two base families, LoRAs and ControlNets."""
    image = data_url(photo)
    out = []
    for c in range(8):
        for j in range(5):
            seed, kind = 100 + 10 * c + j, (5 * c + j) % 8  # kinds 0 and 5-7: plain; 1-4: one of each mix
            if kind in (0, 6):
                out.append(("/sdapi/v1/txt2img", dict(prompt=f"{c}-{j}", seed=seed, **A1111_SMALL)))
            elif kind in (5, 7):
                out.append(("/v1/generate", dict(prompt=f"{c}-{j}", seed=seed, **SMALL)))
            elif kind == 1:
                out.append(("/v1/generate", dict(prompt=f"{c}-{j}", seed=seed, loras=[{"id": "tiny-lora-sd15",
                                                                                     "weight": 0.5}], **SMALL)))
            elif kind == 2:
                out.append(("/v1/generate", dict(prompt=f"{c}-{j}", seed=seed, controls=[{"id": "canny", "image": image}],
                                                 **SMALL | {"model": "tiny-sdxl"})))
            elif kind == 3:
                out.append(("/sdapi/v1/txt2img", dict(prompt=f"{c}-{j} <lora:tiny-lora-sd15:0.8>", seed=seed,
                                                      **A1111_SMALL)))
            else:
                out.append(("/sdapi/v1/txt2img", dict(prompt=f"{c}-{j}", seed=seed, alwayson_scripts={"controlnet": {
                    "args": [{"module": "canny", "model": "tiny-controlnet-canny-sd15", "image": image}]}},
                    **A1111_SMALL)))
    return out


@pytest.mark.slow
def test_load_eight_clients_five_mixed_requests_each_equal_the_same_request_alone(live, photo):
    requests = mixed_requests(photo)

    def ask(client, path, body):
        answer = client.post(path, json=body)
        assert answer.status_code == 200, answer.text[:300]
        return pixels(decoded(answer.json()["images"][0]))

    alone = [ask(live.http, path, body) for path, body in requests]
    before = live.rss_mb()

    def one_client(c: int) -> list:
        with httpx.Client(base_url=live.url, auth=(USER, PASSWORD), timeout=600) as own:
            return [ask(own, path, body) for path, body in requests[5 * c:5 * c + 5]]

    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        together = [image for images in pool.map(one_client, range(8)) for image in images]
    took = time.monotonic() - started
    for (path, body), image, reference in zip(requests, together, alone):
        assert np.array_equal(image, reference), (path, body["prompt"])
    after = live.rss_mb()
    assert after - before < 200, f"server memory grew from {before:.0f} MB to {after:.0f} MB under load"
    print(f"load: {len(requests)} requests from 8 clients in {took:.1f} s; server RSS {before:.0f} -> {after:.0f} MB")
