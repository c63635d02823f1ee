"""The one security layer in front of every route of the served app (the APIs and every Gradio route).

- Authentication: HTTP basic (``--auth user:password``, as AUTOMATIC1111's ``--api-auth``), bearer tokens
  (``--auth-token-file``), or the session cookie ``POST /login`` sets (what the page and gradio_client use).
  Without credentials every route answers 401; a browser asking for a page gets a small login form with it.
- Failed logins are rate limited per client address (429 with Retry-After).
- Cross-origin requests are refused (403) unless their origin was allowed with ``--cors-allow-origin``,
  so no other web page can upload to, or call, this server through a visitor's browser.
- The whole body of one request is capped (413), uploads included, whatever the number of files.
- Every answer says ``X-Content-Type-Options: nosniff`` and may not be framed by another site.
"""
from __future__ import annotations

import base64
import hmac
import html
import json
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from sdcompose.errors import ValidationError

COOKIE = "sdcompose-session"
HEADERS = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
           (b"content-security-policy", b"frame-ancestors 'none'"), (b"referrer-policy", b"same-origin")]
LOGIN_BODY_LIMIT = 16 * 1024


def read_tokens(path: str | None) -> list[str]:
    """Bearer tokens, one a line, from ``path`` (blank lines and ``#`` comments skipped)."""
    if path is None:
        return []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValidationError(f"--auth-token-file {path}: cannot read the file ({exc})") from None
    tokens = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not tokens:
        raise ValidationError(f"--auth-token-file {path}: no token in it")
    if any(len(token) < 16 for token in tokens):
        raise ValidationError(f"--auth-token-file {path}: every token must be at least 16 characters")
    return tokens


@dataclass
class Security:
    """What the layer enforces. ``users`` empty and ``tokens`` empty: no authentication (loopback only)."""

    users: list[tuple[str, str]] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)
    cors_origins: list[str] = field(default_factory=list)
    max_body: int = 96 * 2**20  # one largest image as base64, plus the rest of the request
    login_failures: int = 10  # per client address ...
    login_window_s: float = 60.0  # ... in this many seconds, then 429
    session_s: float = 7 * 24 * 3600.0

    @property
    def enabled(self) -> bool:
        return bool(self.users or self.tokens)


class SecurityLayer:
    """ASGI middleware: ``SecurityLayer(app, Security(...))``."""

    def __init__(self, app, security: Security) -> None:
        self.app, self.security = app, security
        self._sessions: dict[str, float] = {}
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        send = _with_headers(send)
        origin = headers.get("origin")
        if origin is not None and not self._origin_ok(origin, headers.get("host", "")):
            return await _refuse(scope, send, 403, "cross-origin request refused: this server answers only its own "
                                                   "pages and the origins given with --cors-allow-origin")
        if scope["type"] == "http" and scope["method"] == "OPTIONS" and origin is not None \
                and "access-control-request-method" in headers:
            return await self.app(scope, receive, send)  # a CORS preflight from an allowed origin carries no login
        client = (scope.get("client") or ("?",))[0]
        path = scope.get("path", "")
        if scope["type"] == "http" and path in ("/login", "/logout") and scope["method"] == "POST":
            return await (self._login(scope, receive, send, client, headers) if path == "/login"
                          else self._logout(send))
        if self.security.enabled:
            verdict = self._authenticate(headers, client)
            if verdict == "limited":
                return await _refuse(scope, send, 429, "too many failed logins from this address; wait a minute",
                                     [(b"retry-after", str(int(self.security.login_window_s)).encode())])
            if verdict != "ok":
                return await self._challenge(scope, send, headers, verdict)
        if scope["type"] == "http" and scope["method"] in ("POST", "PUT", "PATCH"):
            length = headers.get("content-length")
            if length is not None and (not length.isdigit() or int(length) > self.security.max_body):
                return await _refuse(scope, send, 413, f"the request body is larger than "
                                                       f"{self.security.max_body // 2**20} MB")
            receive = self._capped(receive)
        try:
            await self.app(scope, receive, send)
        except _TooLarge:
            if not send.started:
                await _refuse(scope, send, 413, f"the request body is larger than {self.security.max_body // 2**20} MB")

    # ---- origins -----------------------------------------------------------------------------
    def _origin_ok(self, origin: str, host: str) -> bool:
        if origin in self.security.cors_origins or "*" in self.security.cors_origins:
            return True
        parts = urlsplit(origin)
        return parts.scheme in ("http", "https") and bool(host) and parts.netloc.lower() == host.lower()

    # ---- authentication ----------------------------------------------------------------------
    def _authenticate(self, headers: dict[str, str], client: str) -> str:
        """"ok", "missing", "wrong" or "limited"."""
        if self._limited(client):
            return "limited"
        scheme, _, value = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "basic" and value:
            try:
                user, _, password = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
            except (ValueError, UnicodeDecodeError):
                user, password = "", ""
            return "ok" if self._user_ok(user, password) else self._failed(client)
        if scheme.lower() == "bearer" and value:
            ok = any(hmac.compare_digest(value.strip().encode(), token.encode()) for token in self.security.tokens)
            return "ok" if ok else self._failed(client)
        session = _cookie(headers.get("cookie", ""), COOKIE)
        if session is not None:
            with self._lock:
                expires = self._sessions.get(session)
            if expires is not None and expires > time.time():
                return "ok"
        return "missing"

    def _user_ok(self, user: str, password: str) -> bool:
        ok = False
        for known_user, known_password in self.security.users:  # no early exit: every pair is compared
            ok |= hmac.compare_digest(user.encode(), known_user.encode()) & \
                hmac.compare_digest(password.encode(), known_password.encode())
        return ok

    def _limited(self, client: str) -> bool:
        with self._lock:
            failures = self._failures.get(client)
            if not failures:
                return False
            while failures and failures[0] < time.monotonic() - self.security.login_window_s:
                failures.popleft()
            return len(failures) >= self.security.login_failures

    def _failed(self, client: str) -> str:
        with self._lock:
            self._failures.setdefault(client, deque()).append(time.monotonic())
            if len(self._failures) > 10_000:  # bounded: forget the addresses seen longest ago
                self._failures.pop(next(iter(self._failures)))
        return "wrong"

    async def _login(self, scope, receive, send, client: str, headers: dict[str, str]) -> None:
        if not self.security.enabled:
            return await _json(send, 200, {"success": True})
        if self._limited(client):
            return await _refuse(scope, send, 429, "too many failed logins from this address; wait a minute",
                                 [(b"retry-after", str(int(self.security.login_window_s)).encode())])
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if len(body) > LOGIN_BODY_LIMIT:
                return await _refuse(scope, send, 413, "the login form is too large")
            if not message.get("more_body"):
                break
        form = parse_qs(body.decode("utf-8", "replace"))
        user, password = (form.get(name, [""])[0] for name in ("username", "password"))
        if not self._user_ok(user, password):
            self._failed(client)
            return await _json(send, 401, {"error": {"type": "Unauthorized", "field": None,
                                                     "message": "wrong user name or password"}})
        token = secrets.token_urlsafe(32)
        with self._lock:
            now = time.time()
            self._sessions = {k: v for k, v in self._sessions.items() if v > now}
            self._sessions[token] = now + self.security.session_s
        cookie = f"{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={int(self.security.session_s)}"
        if "text/html" in headers.get("accept", ""):  # the login form: back to the page
            return await _send(send, 303, b"", [(b"location", b"/"), (b"set-cookie", cookie.encode())])
        await _json(send, 200, {"success": True}, [(b"set-cookie", cookie.encode())])

    async def _logout(self, send) -> None:
        await _json(send, 200, {"success": True}, [(b"set-cookie", f"{COOKIE}=; Path=/; Max-Age=0".encode())])

    async def _challenge(self, scope, send, headers: dict[str, str], verdict: str) -> None:
        if scope["type"] == "websocket":
            return await send({"type": "websocket.close", "code": 4401})
        message = "wrong credentials" if verdict == "wrong" else "this server needs a login"
        if scope["method"] == "GET" and "text/html" in headers.get("accept", ""):
            return await _send(send, 401, LOGIN_PAGE.format(message=html.escape(message)).encode(),
                               [(b"content-type", b"text/html; charset=utf-8")])
        await _json(send, 401, {"error": {"type": "Unauthorized", "field": None,
                                          "message": f"{message}: HTTP basic (user:password), a bearer token, "
                                                     "or the cookie POST /login sets"}},
                    [(b"www-authenticate", b'Basic realm="sdcompose", charset="UTF-8"')])

    def _capped(self, receive):
        seen = 0
        limit = self.security.max_body

        async def capped():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _TooLarge(f"the request body is larger than {limit // 2**20} MB")
            return message
        return capped


class _TooLarge(ValidationError):
    """Raised inside the app when the body passes the cap; the APIs answer it as 413, and so does the layer."""


def _with_headers(send):
    async def wrapped(message):
        if message["type"] == "http.response.start":
            wrapped.started = True
            names = {name for name, _ in HEADERS}
            message = dict(message, headers=[(k, v) for k, v in message.get("headers", []) if k.lower() not in names]
                           + HEADERS)
        await send(message)
    wrapped.started = False
    return wrapped


def _cookie(header: str, name: str) -> str | None:
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name and value:
            return value
    return None


async def _send(send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] = ()) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})


async def _json(send, status: int, data: dict, headers: list[tuple[bytes, bytes]] = ()) -> None:
    await _send(send, status, json.dumps(data).encode(), [(b"content-type", b"application/json"), *headers])


async def _refuse(scope, send, status: int, message: str, headers: list[tuple[bytes, bytes]] = ()) -> None:
    if scope["type"] == "websocket":
        return await send({"type": "websocket.close", "code": 4000 + status})
    kind = {401: "Unauthorized", 403: "Forbidden", 413: "TooLarge", 429: "TooManyRequests"}[status]
    await _json(send, status, {"error": {"type": kind, "message": message, "field": None}}, headers)


LOGIN_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>sdcompose: log in</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body style="font-family: sans-serif; max-width: 22em; margin: 4em auto">
<h1>sdcompose</h1><p>{message}.</p>
<form method="post" action="/login">
<p><label>User <input name="username" autocomplete="username" required></label></p>
<p><label>Password <input name="password" type="password" autocomplete="current-password" required></label></p>
<p><button type="submit">Log in</button></p></form></body></html>"""
