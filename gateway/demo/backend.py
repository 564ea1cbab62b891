"""The reference backend that tests and ``gateway demo`` run behind the gateway.

One Starlette app speaks three auth "families" on different paths, all sharing the same
users, HS256 secret and blacklist (``auth_next.py``, ``auth_django.py``, ``auth_express.py``),
plus application endpoints (``app_api.py``), the demo app's pages (``pages.py``) and, unless
``BackendOptions(probes=False)``, the proxy probes of the tests (``probes.py``). All state lives
in memory on ``app.state.demo`` (a `DemoState`, ``state.py``).

The test-control API (``/__demo/*``: counters, faults, runtime options, token minting) is a
separate app, `create_control`, served on its own listener: a gateway in front of this app
can never reach it.
"""

from __future__ import annotations

import dataclasses
import secrets
from email.utils import formatdate
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.demo import app_api, auth_django, auth_express, auth_next, pages, probes
from gateway.demo.control import create_control
from gateway.demo.state import BackendOptions, DemoState

__all__ = ["BackendOptions", "create_backend", "create_control"]


async def _no_control_here(request: Request) -> Response:
    return JSONResponse(
        {"error": "not_found", "detail": "the control API is not served by this app"},
        status_code=404,
    )


class _DateHeader:
    """Adds ``Date`` from the backend's clock (``clock_offset_s``) unless the endpoint set one.

    Servers add their own ``Date`` (uvicorn: ``date_header=True``); run the backend with it
    off, as tests/conftest.py and ``gateway demo`` do, to see only this one."""

    def __init__(self, app: ASGIApp, state: DemoState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_date(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers: list[Any] = list(message.get("headers", []))
                if not any(name.lower() == b"date" for name, _ in headers):
                    date = formatdate(self.state.now(), usegmt=True).encode("latin-1")
                    headers.append((b"date", date))
                    message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_date)


def _routes(options: BackendOptions) -> list[BaseRoute]:
    return [
        *auth_next.ROUTES,
        *auth_django.ROUTES,
        *auth_express.ROUTES,
        *app_api.ROUTES,
        *(probes.ROUTES if options.probes else []),
        *pages.ROUTES,
        Route("/__demo/{rest:path}", _no_control_here, methods=["GET", "HEAD", "POST"]),
    ]


def create_backend(options: BackendOptions | None = None) -> Starlette:
    """Build a fresh demo backend; its state is on ``app.state.demo`` (a `DemoState`).

    Its control API is ``create_control(app.state.demo)``, to be served on another port."""
    options = options or BackendOptions()
    if not options.secret:
        options = dataclasses.replace(options, secret=secrets.token_urlsafe(32))
    state = DemoState(options)
    app = Starlette(routes=_routes(options))
    app.add_middleware(_DateHeader, state=state)
    app.state.demo = state
    return app
