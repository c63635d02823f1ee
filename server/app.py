"""``build_app(service, ...)``: the one FastAPI app both ``sdcompose serve`` and ``sdcompose ui`` run.

The native and A1111 routers sit over ``service`` (the pipeline and its one job queue); the Gradio page, when
given, is mounted at ``/``. The security layer is the outermost middleware, in front of every route, so a
deployment that reuses this app (Ray Serve's ``@serve.ingress``) keeps it.
"""
from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from sdcompose import __version__
from sdcompose.images import MAX_BYTES

from . import a1111, native
from .security import Security, SecurityLayer
from .service import Service

DESCRIPTION = ("sdcompose's HTTP API: the native API under /v1 (its body is sdcompose's request schema), the "
               "AUTOMATIC1111-compatible API under /sdapi/v1 and /controlnet, and the web UI at /.")


def build_app(service: Service, security: Security | None = None, api: bool = True, ui: Any = None) -> FastAPI:
    """The app over ``service``; ``api``: the HTTP APIs and their docs; ``ui``: a ``gr.Blocks`` to mount at ``/``."""
    security = security or Security()
    app = FastAPI(title="sdcompose", version=__version__, description=DESCRIPTION,
                  docs_url="/docs" if api else None, redoc_url=None, openapi_url="/openapi.json" if api else None)
    app.state.service = service
    if api:
        app.include_router(native.router(service))
        app.include_router(a1111.router(service))
    # Always present, so Gradio adds no CORS headers of its own (it would allow any localhost origin).
    app.add_middleware(CORSMiddleware, allow_origins=[o for o in security.cors_origins if o != "*"],
                       allow_origin_regex=".*" if "*" in security.cors_origins else None,
                       allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
                       allow_headers=["Authorization", "Content-Type", "Accept"])
    if ui is not None:
        import gradio as gr
        ui.queue(default_concurrency_limit=1, max_size=256)
        gr.mount_gradio_app(app, ui, path="/", max_file_size=MAX_BYTES, ssr_mode=False, show_error=True,
                            enable_monitoring=False, favicon_path=None, footer_links=["api", "settings"])
        # Gradio checks that file inputs were uploaded (not server paths) only once it thinks it launched, and
        # a mounted app never does: without this, an API call could name any file on the server as an input.
        ui.has_launched = True
    app.add_middleware(SecurityLayer, security=security)  # added last: the outermost layer
    return app
