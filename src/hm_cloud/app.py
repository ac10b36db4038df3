"""The ASGI application: the JSON API and the pages, served by one Starlette app."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from sqlalchemy import Engine
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hm_proto.server import ApiError

from . import api, budgets, metrics, pages, request_bodies, retention, store, team_pages
from .bodies import BodyLimitRouter
from .security import SessionCodec
from .state import CloudState

log = logging.getLogger("hm_cloud")

_HTTP_ERRORS = {404: "not_found", 405: "method_not_allowed", 400: "invalid_request"}


def _is_api(request: Request) -> bool:
    return request.url.path.startswith("/v1/")


def api_error_response(exc: ApiError) -> Response:
    headers: dict[str, str] = {}
    if exc.status == 401 and exc.error == "invalid_token":
        headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
    return api.json_response(exc.to_body(), exc.status, headers)


async def on_api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    if not _is_api(request) and exc.status in (400, 413, 415):
        return pages.render(
            request,
            "error.html",
            {"title": "Bad request", "message": exc.detail},
            status=exc.status,
        )
    return api_error_response(exc)


async def on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if _is_api(request):
        code = _HTTP_ERRORS.get(exc.status_code, "error")
        detail = "No such endpoint: see docs/api.md" if exc.status_code == 404 else str(exc.detail)
        return api.json_response(
            {"error": code, "detail": detail}, exc.status_code, dict(exc.headers or {})
        )
    title = "Page not found" if exc.status_code == 404 else "Error"
    return pages.render(
        request, "error.html", {"title": title, "message": str(exc.detail)}, status=exc.status_code
    )


async def on_crash(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s", request.url.path)
    return api.json_response(
        {"error": "internal_error", "detail": "The server failed on this request: try again later"},
        500,
    )


# On every answer: no page of ours may be framed (clickjacking the Approve button of
# /connect from a same-site page, where SameSite=Lax still sends the cookie), no <base> or
# plugin may be injected, forms post only here, types are not sniffed, and URLs carrying
# secrets (invitation links, result notes) never leave in a Referer.
SECURITY_HEADERS = (
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"frame-ancestors 'none'; base-uri 'none'; object-src 'none'; form-action 'self'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
)


class SecurityHeaders:
    """Adds SECURITY_HEADERS to every HTTP answer (a plain ASGI middleware: streams untouched)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                have = {name.lower() for name, _ in headers}
                headers += [(name, value) for name, value in SECURITY_HEADERS if name not in have]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_app(engine: Engine, app_url: str) -> Starlette:
    """The app for a ready (schema-initialised) engine; ``app_url`` is where pages live."""
    state = CloudState(
        engine=engine,
        app_url=app_url.rstrip("/"),
        sessions=SessionCodec(store.session_secret(engine)),
    )
    static = Mount(
        "/static", app=StaticFiles(directory=str(Path(__file__).parent / "static")), name="static"
    )
    app = Starlette(
        middleware=[Middleware(SecurityHeaders)],
        exception_handlers={
            ApiError: on_api_error,
            HTTPException: on_http_error,
            Exception: on_crash,
        },
    )
    # Every request's body is bounded before any handler runs (bodies.py).
    app.router = BodyLimitRouter(
        routes=[*api.routes, *request_bodies.api_routes, static, *team_pages.routes, *pages.routes, *budgets.routes, *retention.routes, *request_bodies.routes, *metrics.routes]
    )
    app.state.cloud = state
    return app


SWITCH_INTERVAL_S = 0.001


def tune_process() -> None:
    """Per server process: hand the GIL over every 1 ms instead of Python's 5 ms.

    The ingest's SQLite insert (``executemany``) lets go of the GIL once per row and
    its commit once more; each time, a thread decoding another batch may hold the GIL
    for a whole switch interval before the writer gets it back, and the writer holds
    the database's only write lock meanwhile. At 5 ms that stretched a 15 ms insert
    to 40 ms on the server (py-spy); at 1 ms the insert runs near its own speed.
    """
    sys.setswitchinterval(SWITCH_INTERVAL_S)


def app_from_environment() -> Starlette:
    """The app of one ``serve --workers N`` process: the parent set up the schema and the env."""
    from .cli import ENV_APP_URL, ENV_DB
    from .db import make_engine

    tune_process()
    return create_app(make_engine(os.environ[ENV_DB]), os.environ[ENV_APP_URL])
