"""Application endpoints behind the gateway: the JSON API of the tests (``/api/public/hello``,
``/api/items``, ``/api/admin/stats``) and of the demo pages (``/api/demo/*``, ``/ws/demo``).

The demo pages never see a token: the access token lives in an HttpOnly cookie that the
gateway turns into ``Authorization`` on the way here. ``/api/demo/session`` reads that header
and answers with the token's lifetime and fingerprint only.
"""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket

from gateway.audit import token_fp
from gateway.demo.activity import user_events
from gateway.demo.endpoint import (
    credentials,
    demo_state,
    echo_messages,
    gateway_user_id,
    instrumented,
)
from gateway.demo.state import DEMO_USERS, TokenError, user_by_id

_ITEMS = [
    {"id": 1, "name": "apple"},
    {"id": 2, "name": "banana"},
    {"id": 3, "name": "cherry"},
]


@instrumented("hello")
async def hello(request: Request) -> Response:
    return JSONResponse({"hello": "world"})


@instrumented("items")
async def items(request: Request) -> Response:
    return JSONResponse({"items": _ITEMS, "user_id": gateway_user_id(request)})


@instrumented("admin_stats")
async def admin_stats(request: Request) -> Response:
    return JSONResponse(
        {"users": len(DEMO_USERS), "items": len(_ITEMS), "user_id": gateway_user_id(request)}
    )


# -- the demo pages' API --------------------------------------------------------------------


def _unauthenticated(detail: str) -> JSONResponse:
    return JSONResponse({"error": "unauthenticated", "detail": detail}, status_code=401)


async def session(request: Request) -> Response:
    """Who the forwarded token belongs to and when it expires, by the backend's clock."""
    state = demo_state(request)
    token = credentials(request, "Bearer")
    if token is None:
        return _unauthenticated("no token was forwarded")
    try:
        # Expired is shown, not refused: the gateway may reuse its validation of a token for
        # up to ``auth.cache_ttl_s`` (2 s) past ``exp``; the page asks again until it sees the
        # refreshed one.
        claims = state.decode(token, ("access", "guest"), allow_expired=True)
    except TokenError as exc:
        return _unauthenticated(exc.reason)
    user = user_by_id(claims.sub)
    now = state.now()
    body: dict[str, Any] = {
        "token_type": claims.typ,
        "token_fp": token_fp(token),
        "iat": claims.iat,
        "exp": claims.exp,
        "now": now,
        "expires_in_s": max(0.0, claims.exp - now),
        "expired": claims.exp <= now,
        "user": None if user is None else {"id": user.id, "name": user.name,
                                           "email": user.email, "roles": list(user.roles)},
    }
    return JSONResponse(body, headers={"cache-control": "no-store"})


async def activity(request: Request) -> Response:
    """What the gateway did for this user: the user's events from the audit stream."""
    user_id = gateway_user_id(request)
    if user_id is None:
        return _unauthenticated("the gateway forwarded no user")
    audit_log = demo_state(request).options.audit_log
    events = await run_in_threadpool(user_events, audit_log, user_id)
    return JSONResponse({"audit_log": bool(audit_log), "events": events},
                        headers={"cache-control": "no-store"})


async def refreshes(request: Request) -> Response:
    """The backend's refresh counters, for the three-tabs page's before/after."""
    state = demo_state(request)
    return JSONResponse({"refresh_ok": state.refresh_ok,
                         "refresh_rejected": state.refresh_rejected},
                        headers={"cache-control": "no-store"})


async def websocket_demo(websocket: WebSocket) -> None:
    """The dashboard's echo panel: greets with who the gateway says the user is (no token),
    then echoes every message."""
    await websocket.accept()
    user = user_by_id(websocket.headers.get("x-auth-user-id") or "")
    await websocket.send_json({"hello": user.name if user else "guest",
                               "user_id": websocket.headers.get("x-auth-user-id")})
    await echo_messages(websocket)


ROUTES: list[BaseRoute] = [
    Route("/api/public/hello", hello, methods=["GET"]),
    Route("/api/items", items, methods=["GET"]),
    Route("/api/admin/stats", admin_stats, methods=["GET"]),
    Route("/api/demo/session", session, methods=["GET"]),
    Route("/api/demo/activity", activity, methods=["GET"]),
    Route("/api/demo/refreshes", refreshes, methods=["GET"]),
    WebSocketRoute("/ws/demo", websocket_demo),
]
