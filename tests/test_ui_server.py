"""`sdcompose ui` as a real server on loopback, driven through its web API with gradio_client and raw HTTP.

One server (tiny models, a password) serves the whole module: features through the API, what its
file routes refuse to serve, the upload cap, and a bounded load test. ``running_ui`` is shared with
the browser tests.
"""
from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import httpx
import numpy as np
import pytest
from PIL import Image

import sdcompose
from sdcompose.cli import main
from sdcompose.images import MAX_BYTES
from sdcompose.ui.serve import check_bind, is_loopback, parse_auth

USER, PASSWORD = "tester", "a-long-test-password"
SMALL = dict(model="tiny-sd15", width=64, height=64, steps=2)
CLIENT_TIMEOUT = 300  # seconds a gradio_client request may wait for the server (bounded, generous under load)


GATED = "hold at step 2 until Stop"  # a prompt the server's gate (below) holds, so Stop always lands mid-run
GATE = f"""
# Loaded by a test server at start-up (sitecustomize): a run whose prompt is {GATED!r} waits in its step-2
# preview until its cancel flag is set (at most 120 s). Without it, whether Stop lands before the run's last
# step is a race that a loaded machine loses: the page shows progress later than the run makes it.
import sdcompose.pipelines.pipeline as module

generate = module.Pipeline.generate


def gated(self, *args, cancel=None, preview=None, **kwargs):
    if kwargs.get("prompt") == {GATED!r} and cancel is not None and preview is not None:
        shown = preview

        def preview(step, total, image):
            shown(step, total, image)
            if step == 2:
                cancel.wait(120)
    return generate(self, *args, cancel=cancel, preview=preview, **kwargs)


module.Pipeline.generate = gated
"""


def gated_env(folder: Path) -> dict[str, str]:
    """The environment of a test server that loads the gate above."""
    (folder / "gate").mkdir(exist_ok=True)
    (folder / "gate" / "sitecustomize.py").write_text(GATE)
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(folder / "gate"), os.environ.get("PYTHONPATH")]))}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running_ui(log: Path, *args: str, command: str = "ui", env: dict[str, str] | None = None):
    """``sdcompose ui`` (or ``command``: serve) on CPU in a subprocess on a free loopback port; yields (url, process);
    always shut down."""
    port = free_port()
    env = os.environ | {"GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"} | (env or {})
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "sdcompose.cli", command, "--port", str(port), "--device",
                                 "cpu", *args],
                                stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the UI did not start (exit code {proc.poll()}):\n{log.read_text(errors='replace')}")
            try:
                if httpx.get(f"{url}/config", timeout=2).status_code in (200, 401, 404):  # 404: serve --no-ui
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        yield url, proc
    finally:
        proc.send_signal(signal.SIGTERM)  # as a service manager would; the server deletes its folder and exits
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Server:
    def __init__(self, url: str, proc: subprocess.Popen, downloads: Path) -> None:
        self.url, self.proc, self.downloads = url, proc, downloads
        self.workdir: Path | None = None
        self.outputs: Path | None = None
        self.port = int(url.rsplit(":", 1)[1])
        login = httpx.post(f"{url}/login", data={"username": USER, "password": PASSWORD})
        assert login.status_code == 200, login.text
        self.cookie = "; ".join(f"{k}={v}" for k, v in login.cookies.items())

    def client(self, **kw):
        """A gradio_client on this server. Its requests wait up to CLIENT_TIMEOUT s: gradio_client's httpx default
        (5 s) to join the queue was seen to run out with 8 clients at once on a machine at load 10 and more."""
        from gradio_client import Client
        return Client(self.url, auth=(USER, PASSWORD), verbose=False, analytics_enabled=False,
                      download_files=kw.pop("download_files", str(self.downloads)),
                      httpx_kwargs={"timeout": CLIENT_TIMEOUT}, **kw)

    def raw_get(self, path: str, cookie: bool = True) -> tuple[int, bytes]:
        """GET ``path`` exactly as written: no normalisation of ``..`` or percent-escapes by an HTTP library."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.putrequest("GET", path, skip_accept_encoding=True)
            if cookie:
                conn.putheader("Cookie", self.cookie)
            conn.endheaders()
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def rss_mb(self) -> float:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))) / 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory, home):
    folder = tmp_path_factory.mktemp("ui-server")
    before = set(Path(tempfile.gettempdir()).glob("sdcompose-ui-*"))
    with running_ui(folder / "server.log", "--auth", f"{USER}:{PASSWORD}", "--outputs", str(folder / "outputs"),
                    env=gated_env(folder)) as (url, proc):
        server = Server(url, proc, folder / "downloads")
        server.outputs = folder / "outputs"
        (server.workdir,) = set(Path(tempfile.gettempdir()).glob("sdcompose-ui-*")) - before
        yield server
    if server.workdir is not None:
        assert not server.workdir.exists(), "the server must delete its own folder when it stops"


@pytest.fixture(scope="module")
def client(server):
    client = server.client()
    yield client
    client.close()


def pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def png_meta(path) -> dict:
    with Image.open(path) as image:
        return json.loads(image.text["sdcompose"])


# ---- serving rules, no server needed ----------------------------------------------------------------
def test_refuses_a_non_loopback_bind_without_auth(capsys):
    assert main(["ui", "--listen"]) == 2
    assert main(["ui", "--host", "192.168.1.20", "--port", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("refusing to serve on") == 2 and "add --auth user:password" in err
    assert main(["ui", "--listen", "--auth", "nopassword"]) == 2
    assert "--auth must be user:password" in capsys.readouterr().err


def test_insecure_no_auth_warns_and_loopback_needs_nothing(capsys, tmp_path):
    check_bind("0.0.0.0", None, insecure_no_auth=True)
    assert "warning: serving on 0.0.0.0 with no password" in capsys.readouterr().err
    check_bind("127.0.0.1", None, insecure_no_auth=False)
    check_bind("0.0.0.0", [("a", "b")], insecure_no_auth=False)
    assert capsys.readouterr().err == ""
    assert [is_loopback(h) for h in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost", "LOCALHOST")] == [True] * 6
    assert [is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.1", "example.com", "localhost.evil.com")] == [False] * 5
    (tmp_path / "users").write_text("ann:pw1\n\nbob:pw:with:colons\n")
    assert parse_auth(f"@{tmp_path / 'users'}") == [("ann", "pw1"), ("bob", "pw:with:colons")]


# ---- the running server ----------------------------------------------------------------------------
def test_nothing_without_the_password(server):
    assert httpx.get(f"{server.url}/config").status_code == 401
    assert server.raw_get("/gradio_api/info", cookie=False)[0] == 401
    with pytest.raises(Exception):
        from gradio_client import Client
        Client(server.url, verbose=False, analytics_enabled=False, download_files=False)


def test_txt2img_with_a_canny_unit_and_a_lora_matches_the_python_api(client, pipe, photo):
    from gradio_client import handle_file
    gallery, info, status = client.predict(
        prompt="a red fox", seed=7, cn0_enable=True, cn0_image=handle_file(str(photo)),
        cn0_canny_low_threshold=50, cn0_weight=0.8, loras=["tiny-lora-sd15"], lora_tiny_lora_sd15=0.7,
        api_name="/generate", **SMALL)
    [item] = gallery
    meta = png_meta(item["image"])
    assert meta["request"]["controls"][0]["params"] == {"low_threshold": 50, "high_threshold": 200}
    assert meta["request"]["loras"] == [{"id": "tiny-lora-sd15", "weight": 0.7}] and meta["seed"] == 7
    assert json.loads(info)["seeds"] == [7]
    assert "noise from a random-weight test model" in status and "noise" in item["caption"]
    direct = pipe.generate(prompt="a red fox", seed=7, controls=[sdcompose.Control(
        "canny", photo, weight=0.8, params={"low_threshold": 50})], loras=[sdcompose.Lora("tiny-lora-sd15", 0.7)],
        **SMALL)
    assert np.array_equal(pixels(item["image"]), np.asarray(direct.images[0]))
    plain = client.predict(prompt="a red fox", seed=7, api_name="/generate", **SMALL)[0][0]["image"]
    assert not np.array_equal(pixels(plain), pixels(item["image"])), "the unit and the LoRA must change the image"


def test_image_info_round_trip_restores_every_field_and_the_same_image(client, photo):
    from gradio_client import handle_file
    made = client.predict(prompt="a <b>castle</b>", negative_prompt="fog", seed=3, guidance=4.5, scheduler="euler",
                          task="img2img", init_image=handle_file(str(photo)), strength=0.6,
                          cn0_enable=True, cn0_image=handle_file(str(photo)), cn0_end=0.7, loras=["tiny-lora-sd15"],
                          lora_tiny_lora_sd15=0.4, api_name="/generate", **SMALL)[0][0]["image"]
    parameters, metadata, fields = client.predict(image=handle_file(made), api_name="/image_info")
    assert parameters.startswith("a <b>castle</b> <lora:tiny-lora-sd15:0.4>\nNegative prompt: fog\n"
                                 "Steps: 2, Sampler: Euler, Schedule type: Uniform")  # A1111's infotext
    assert json.loads(metadata)["request"]["prompt"] == "a <b>castle</b>"
    assert {k: fields[k] for k in ("task", "seed", "guidance", "strength", "cn0_enable", "cn0_preprocessed",
                                   "cn0_end", "loras", "lora_tiny_lora_sd15", "init_image", "cn0_image")} == {
        "task": "img2img", "seed": 3, "guidance": 4.5, "strength": 0.6, "cn0_enable": True, "cn0_preprocessed": True,
        "cn0_end": 0.7, "loras": ["tiny-lora-sd15"], "lora_tiny_lora_sd15": 0.4, "init_image": "<image>",
        "cn0_image": "<image>"}
    outputs = client.predict(image=handle_file(made), api_name="/restore")
    restored = dict(zip(fields, outputs))  # /restore returns the fields in the order /image_info lists them
    assert restored["prompt"] == "a <b>castle</b>" and restored["seed"] == 3
    again = {k: handle_file(v) if k in ("init_image", "cn0_image") else v for k, v in restored.items()
             if v is not None}
    remade = client.predict(api_name="/generate", **again)[0][0]["image"]
    assert np.array_equal(pixels(remade), pixels(made))


def test_the_pickers_follow_the_model_through_the_web_api(server):
    own = server.client()  # its own session: the narrowed choices stay with it
    try:
        loras, *units, status = own.predict("tiny-sdxl", ["tiny-lora-sd15"], "tiny-controlnet-canny-sd15", "auto",
                                            "auto", api_name="/follow_model")
    finally:
        own.close()
    offered = [value for _, value in loras["choices"]]
    assert "tiny-lora-sdxl" in offered and "tiny-lora-sd15" not in offered and loras["value"] == []
    assert [unit["value"] for unit in units] == ["auto"] * 3
    assert "tiny-controlnet-canny-sdxl" in [value for _, value in units[0]["choices"]]
    assert status.startswith("LoRA tiny-lora-sd15 is for sd15; cleared. ControlNet unit 1: model")


def test_inpaint_with_an_uploaded_mask_round_trips(client, photo, mask):
    from gradio_client import handle_file
    editor = {"background": handle_file(str(photo)), "layers": [], "composite": None}
    made = client.predict(prompt="a door", seed=5, task="inpaint", inpaint=editor, mask=handle_file(str(mask)),
                          strength=0.9, api_name="/generate", **SMALL)[0][0]["image"]
    assert png_meta(made)["task"] == "inpaint"
    _, _, fields = client.predict(image=handle_file(made), api_name="/image_info")
    restored = dict(zip(fields, client.predict(image=handle_file(made), api_name="/restore")))
    assert restored["task"] == "inpaint" and restored["strength"] == 0.9
    editor = {"background": handle_file(restored["inpaint"]["background"]), "layers": [], "composite": None}
    again = {k: v for k, v in restored.items() if v is not None} | {"inpaint": editor,
                                                                     "mask": handle_file(restored["mask"])}
    assert np.array_equal(pixels(client.predict(api_name="/generate", **again)[0][0]["image"]), pixels(made))


def test_errors_reach_the_client_and_the_session_carries_on(client):
    from gradio_client.exceptions import AppError
    with pytest.raises(AppError, match="width must be a multiple of 8, got 100"):
        client.predict(prompt="x", model="tiny-sd15", width=100, height=64, steps=2, api_name="/generate")
    with pytest.raises(AppError, match="ControlNet unit 2 has no image"):
        client.predict(cn1_enable=True, api_name="/generate", **SMALL)
    with pytest.raises(AppError, match=r"model 'sd15': could not get"):  # offline: weights missing
        client.predict(model="sd15", width=64, height=64, steps=2, api_name="/generate")
    with pytest.raises(AppError, match="is not in the list of choices"):  # Gradio checks the picker's choices
        client.predict(model="no-such-model", api_name="/generate")
    assert client.predict(prompt="still fine", api_name="/generate", **SMALL)[0]


def test_file_routes_serve_only_the_apps_own_files(server, home):
    secret = home / "ui-secret.txt"
    secret.write_text("TOP-SECRET-TOKEN")
    raw = server.client(download_files=False)
    served = raw.predict(prompt="x", api_name="/generate", **SMALL)[0][0]["image"]
    raw.close()
    weights = next((home / "models" / "tiny").rglob("*.safetensors"))  # built by that first generation
    own = served["path"]
    assert Path(own).parent.parent == server.outputs, "served where it is kept: outputs/YYYY-MM-DD/NNNNN-SEED.png"
    status, body = server.raw_get(f"/gradio_api/file={own}")
    assert status == 200 and body.startswith(b"\x89PNG"), "the app's own output must be served"

    up, here = "../" * len(Path(own).parent.parts), Path(own).parent
    target, loopback = str(secret).lstrip("/"), f"http://127.0.0.1:{server.port}/config"
    attempts = [
        f"/gradio_api/file={secret}", f"/gradio_api/file={weights}", "/gradio_api/file=/etc/passwd",
        "/gradio_api/file=pyproject.toml", f"/gradio_api/file={here}/{up}{target}",
        f"/gradio_api/file={quote(str(secret), safe='')}", f"/gradio_api/file={here}/{up.replace('/', '%2F')}{target}",
        f"/gradio_api/file={here}/{up.replace('..', '%2e%2e')}{target}",
        f"/gradio_api/file={here}/{up.replace('../', '%252e%252e%252f')}{target}",
        f"/gradio_api/file={here}\\{up.replace('/', chr(92))}{target}",
        f"/GRADIO_API/FILE={secret}", f"/Gradio_Api/File={secret}", f"/gradio_api/FILE={secret}",
        f"/file={secret}", f"/gradio_api/file/{target}", f"/gradio_api/file={secret}%00.png",
        f"/static/{up}{target}", f"/static/{up.replace('..', '%2e%2e')}{target}",
        f"/assets/{up.replace('/', '%2F')}{target}", f"/svelte/{up.replace('/', '%2f')}{target}",
        f"/gradio_api/file=file://{secret}", f"/gradio_api/file={loopback}", f"/gradio_api/proxy={loopback}",
        "/monitoring", "/gradio_api/monitoring",
    ]
    for path in attempts:
        status, body = server.raw_get(path)
        assert b"TOP-SECRET-TOKEN" not in body and b"root:" not in body and b'"components"' not in body, path
        assert status >= 400, (path, status)


def test_image_inputs_cannot_name_files_on_the_server(server, client, home):
    """A raw API call that puts a server path where an upload belongs is refused before anything reads it."""
    Image.new("RGB", (64, 64), "red").save(home / "not-uploaded.png")
    parameters = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/generate"]["parameters"]
    values = {p["parameter_name"]: p["parameter_default"] for p in parameters} | dict(SMALL, task="img2img")
    values["init_image"] = {"path": str(home / "not-uploaded.png"), "meta": {"_type": "gradio.FileData"}}
    call = httpx.post(f"{server.url}/gradio_api/call/generate", headers={"Cookie": server.cookie},
                      json={"data": [values[p["parameter_name"]] for p in parameters]})
    events = httpx.get(f"{server.url}/gradio_api/call/generate/{call.json()['event_id']}",
                       headers={"Cookie": server.cookie}, timeout=60).text
    assert "event: error" in events and "not uploaded by a user" in events, events[:300]


def test_uploads_are_capped(server):
    headers = {"Cookie": server.cookie}
    small = httpx.post(f"{server.url}/gradio_api/upload", headers=headers, files={"files": ("a.png", b"x" * 1000)})
    assert small.status_code == 200
    big = httpx.post(f"{server.url}/gradio_api/upload", headers=headers, timeout=60,
                     files={"files": ("big.png", b"\0" * (MAX_BYTES + 1))})
    assert big.status_code == 413, (big.status_code, big.text[:200])


def test_load_every_request_answered_none_mixed_memory_flat(server, client):
    """8 clients x 3 requests at once: each image equals the one the same request makes alone."""
    requests = [dict(prompt=f"client {c} request {j}", seed=1000 + 10 * c + j,
                     loras=["tiny-lora-sd15"] if c % 2 else [], lora_tiny_lora_sd15=0.3 + 0.1 * c, **SMALL)
                for c in range(8) for j in range(3)]
    alone = [pixels(client.predict(api_name="/generate", **r)[0][0]["image"]) for r in requests]
    before = server.rss_mb()

    def one_client(c: int) -> list:
        own = server.client()
        try:
            return [own.predict(api_name="/generate", **r)[0][0]["image"] for r in requests[3 * c:3 * c + 3]]
        finally:
            own.close()

    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        together = [path for paths in pool.map(one_client, range(8)) for path in paths]
    took = time.monotonic() - started
    assert len(together) == len(requests)
    for request, path, reference in zip(requests, together, alone):
        meta = png_meta(path)
        assert (meta["request"]["prompt"], meta["seed"]) == (request["prompt"], request["seed"])
        assert np.array_equal(pixels(path), reference), request["prompt"]
    after = server.rss_mb()
    assert after - before < 150, f"server memory grew from {before:.0f} MB to {after:.0f} MB under load"
    print(f"load: {len(requests)} requests from 8 clients in {took:.1f} s; server RSS {before:.0f} -> {after:.0f} MB")


def test_one_generation_at_a_time_others_wait_with_their_place_and_stop_withdraws_or_interrupts(server):
    """Runs wait in the server's one job queue: a waiting run's status says its place, and its client's Stop
    withdraws it (it never runs); the running one's Stop ends it at its next step."""
    first, second = server.client(), server.client()
    try:
        long = first.submit(prompt=GATED, model="tiny-sd15", width=64, height=64, steps=20, seed=1,
                            api_name="/generate")  # held at step 2 until its Stop
        wait_for(lambda: any(out[2].startswith("Step ") for out in long.outputs()), "the long run's first step",
                 timeout=120)
        short = second.submit(prompt="withdrawn", seed=424242, api_name="/generate", **SMALL)
        wait_for(lambda: any(out[2] == "Queued: 1 request ahead of this one." for out in short.outputs()),
                 "the second request's place in the queue", timeout=120)
        assert second.predict(api_name="/stop") == "Stopped: cancelled before it started."
        assert short.result(timeout=120)[2] == "Stopped: cancelled before it started."
        assert first.predict(api_name="/stop") == "Stopping at the end of this step."
        stopped = long.result(timeout=120)[2]
        assert stopped.startswith("Stopped: cancelled at step") and stopped.endswith("of 20."), stopped
        after = second.predict(prompt="after", seed=424243, api_name="/generate", **SMALL)[0][0]["image"]
        assert png_meta(after)["request"]["prompt"] == "after"  # the queue is in order: the withdrawn run came before
        assert not list(server.outputs.glob("*/*-424242.png")), "the withdrawn run never ran"
        assert second.predict(api_name="/stop") == "Nothing is running."
    finally:
        first.close()
        second.close()


def wait_for(check, what, timeout: float = 60):
    """``check()``'s first true result, polled; ``what`` (a string, or a callable that describes the state seen)
    names it when the wait fails."""
    deadline = time.monotonic() + timeout
    while not (result := check()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what() if callable(what) else what}")
        time.sleep(0.05)
    return result
