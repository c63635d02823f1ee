"""The one security layer of the served app, in process: every route it registers (the APIs, the docs and each
of Gradio's own routes, read from the app) refuses a caller without credentials; logins, cookies, origins,
body sizes and headers are hardened."""
from __future__ import annotations

import base64
import re
from contextlib import contextmanager

import pytest
from starlette.routing import Mount
from starlette.testclient import TestClient

from sdcompose.server.app import build_app
from sdcompose.server.jobs import JobQueue
from sdcompose.server.security import COOKIE, Security
from sdcompose.server.service import Service

USER, PASSWORD, TOKEN = "tester", "a-long-test-password", "token-0123456789abcdef"
BASIC = {"Authorization": "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}


@pytest.fixture(scope="module")
def pipeline():
    from sdcompose.pipelines.pipeline import Pipeline
    return Pipeline(device="cpu")


@pytest.fixture(scope="module")
def jobs():
    queue = JobQueue(max_queue=4)
    yield queue
    queue.close()


def make_app(pipeline, jobs, tmp_path, **security):
    from sdcompose.ui.app import build_app as build_page
    settings = Security(users=[(USER, PASSWORD)], tokens=[TOKEN], **security)
    return build_app(Service(pipeline, jobs), settings, api=True, ui=build_page(pipeline, tmp_path))


@contextmanager
def served():
    """A test client, logged in, of the API app (no page) over a fresh CPU pipeline: for a bounded child process."""
    from sdcompose.pipelines.pipeline import Pipeline
    queue = JobQueue(max_queue=4)
    try:
        app = build_app(Service(Pipeline(device="cpu"), queue), Security(users=[(USER, PASSWORD)]), api=True)
        with TestClient(app, headers=BASIC) as client:
            yield client
    finally:
        queue.close()


@pytest.fixture(scope="module")
def app(pipeline, jobs, tmp_path_factory):
    return make_app(pipeline, jobs, tmp_path_factory.mktemp("security"))


def routes(app, prefix=""):
    """(path, methods, is_websocket) of every route the app registers, mounted apps' routes included."""
    for route in app.routes:
        if isinstance(route, Mount):
            yield from routes(route.app, prefix + route.path)
        elif hasattr(route, "original_router"):  # FastAPI's include_router keeps the router it was given
            yield from routes(route.original_router, prefix + route.include_context.prefix)
        else:
            methods = sorted(getattr(route, "methods", None) or {"GET"})
            yield prefix + route.path, methods, type(route).__name__ == "WebSocketRoute"


def concrete(path: str) -> str:
    path = re.sub(r"\{[^}:]+:path\}", "some/file.png", path)
    return re.sub(r"\{[^}]+\}", "x1", path) or "/"


def test_every_route_the_app_registers_answers_401_without_credentials(app):
    client = TestClient(app)
    seen = list(routes(app))
    paths = {path for path, _, _ in seen}
    # the routes a hostile probe found open, among those walked
    for needed in ("/gradio_api/cancel", "/gradio_api/heartbeat/{session_hash}", "/openapi.json", "/docs",
                   "/v1/generate", "/sdapi/v1/txt2img", "/controlnet/detect", "/config", "/gradio_api/upload"):
        assert needed in paths, needed
    assert len(seen) > 40
    for path, methods, websocket in seen:
        url = concrete(path)
        if websocket:
            with pytest.raises(Exception):
                with client.websocket_connect(url):
                    pass
            continue
        for method in methods:
            if method == "HEAD":
                continue
            answer = client.request(method, url, headers={"Accept": "application/json"})
            assert answer.status_code == 401, (method, path, answer.status_code, answer.text[:200])
            assert answer.json()["error"]["type"] == "Unauthorized"
            assert b"gradio_api_info" not in answer.content and b"components" not in answer.content
    page = client.get("/", headers={"Accept": "text/html"})  # a browser gets a login form, not the app
    assert page.status_code == 401 and b'action="/login"' in page.content and b"gradio" not in page.content


def test_basic_bearer_and_the_login_cookie_let_a_caller_in(app):
    client = TestClient(app)
    assert client.get("/v1/health", headers=BASIC).json()["status"] == "ok"
    assert client.get("/v1/health", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert client.get("/v1/health", headers={"Authorization": "Bearer wrong-token-0123456789"}).status_code == 401
    assert client.get("/openapi.json", headers=BASIC).json()["info"]["title"] == "sdcompose"
    login = client.post("/login", data={"username": USER, "password": PASSWORD})
    assert login.status_code == 200
    cookie = login.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert client.get("/v1/health").status_code == 200  # the client keeps the cookie
    assert client.get("/config").status_code == 200
    client.post("/logout")
    client.cookies.clear()
    assert client.get("/v1/health").status_code == 401
    client.cookies.set(COOKIE, "made-up")
    assert client.get("/v1/health").status_code == 401


def test_failed_logins_are_rate_limited_per_address(pipeline, jobs, tmp_path):
    client = TestClient(make_app(pipeline, jobs, tmp_path, login_failures=3))
    for _ in range(3):
        assert client.post("/login", data={"username": USER, "password": "guess"}).status_code == 401
    limited = client.post("/login", data={"username": USER, "password": PASSWORD})
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) > 0
    assert client.get("/v1/health", headers=BASIC).status_code == 429, "basic auth shares the same limit"


def test_every_answer_is_hardened_against_sniffing_and_framing(app):
    client = TestClient(app)
    for answer in (client.get("/v1/health", headers=BASIC), client.get("/config", headers=BASIC),
                   client.get("/nowhere")):
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]


def test_cross_origin_requests_are_refused_unless_allowed(pipeline, jobs, tmp_path, app):
    client = TestClient(app)
    files = {"files": ("a.png", b"x" * 100)}
    for origin in ("http://evil.example", "http://localhost:9999", "null"):
        answer = client.post("/gradio_api/upload", headers=BASIC | {"Origin": origin}, files=files)
        assert answer.status_code == 403 and "cross-origin" in answer.json()["error"]["message"], origin
        assert client.get("/config", headers=BASIC | {"Origin": origin}).status_code == 403
    same = client.post("/gradio_api/upload", headers=BASIC | {"Origin": "http://testserver"}, files=files)
    assert same.status_code == 200
    allowed = TestClient(make_app(pipeline, jobs, tmp_path, cors_origins=["https://app.example"]))
    answer = allowed.get("/v1/health", headers=BASIC | {"Origin": "https://app.example"})
    assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == "https://app.example"
    preflight = allowed.options("/v1/generate", headers={"Origin": "https://app.example",
                                                         "Access-Control-Request-Method": "POST"})
    assert preflight.status_code == 200
    assert allowed.get("/v1/health", headers=BASIC | {"Origin": "http://evil.example"}).status_code == 403


def test_the_whole_body_of_a_request_is_capped(pipeline, jobs, tmp_path):
    client = TestClient(make_app(pipeline, jobs, tmp_path, max_body=10_000))
    several = [("files", (f"{i}.png", b"x" * 4000)) for i in range(3)]  # each under the cap, together over
    answer = client.post("/gradio_api/upload", headers=BASIC, files=several)
    assert answer.status_code == 413 and "larger than" in answer.json()["error"]["message"]

    def chunks():  # no Content-Length: counted as it streams
        for _ in range(4):
            yield b"x" * 4000
    streamed = client.post("/v1/generate", headers=BASIC | {"Content-Type": "application/json"}, content=chunks())
    assert streamed.status_code == 413
    assert client.post("/gradio_api/upload", headers=BASIC, files=several[:1]).status_code == 200
