"""What every demo endpoint shares: reading the request, counting calls, injected faults,
the WebSocket echo."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Awaitable, Callable
from typing import Any, cast

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.websockets import WebSocket, WebSocketDisconnect

from gateway.demo.state import Claims, DemoState, DemoUser, TokenError, user_by_id

Endpoint = Callable[[Request], Awaitable[Response]]

ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
EMPTY_BODY_STATUSES = frozenset({204, 205, 304})


def demo_state(request: Request) -> DemoState:
    return cast(DemoState, request.app.state.demo)


def user_of(claims: Claims) -> DemoUser:
    user = user_by_id(claims.sub)
    if user is None:  # pragma: no cover - `DemoState.decode` already checked
        raise TokenError("unknown user")
    return user


def gateway_user_id(request: Request) -> str | None:
    """Who the gateway says the user is (it strips client copies of ``x-auth-*``)."""
    return request.headers.get("x-auth-user-id")


async def json_object(request: Request) -> dict[str, Any] | None:
    """The request body as a JSON object, ``{}`` if empty, None if not a JSON object."""
    body = await request.body()
    if not body.strip():
        return {}
    try:
        data = json.loads(body)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def credentials(request: Request, scheme: str) -> str | None:
    """The credentials of an ``Authorization: <scheme> <credentials>`` header, if any."""
    header = request.headers.get("authorization")
    if header is None:
        return None
    parts = header.split()
    if len(parts) != 2 or parts[0].lower() != scheme.lower():
        return None
    return parts[1]


async def echo_messages(websocket: WebSocket, *, close_command: bool = False) -> None:
    """Send back every text and bytes message of an accepted WebSocket until the client goes.
    With ``close_command``, the text ``close <code>`` closes with that code instead (how the
    tests see a close code travel through the gateway)."""
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            if close_command and text is not None and text.startswith("close "):
                await websocket.close(code=int(text.split()[1]))
                return
            if text is not None:
                await websocket.send_text(text)
            elif message.get("bytes") is not None:
                await websocket.send_bytes(message["bytes"])
    except WebSocketDisconnect:
        return


def param(request: Request, name: str, cast_to: Callable[[str], Any], default: Any) -> Any:
    raw = request.query_params.get(name)
    if raw is None:
        if default is None:
            raise HTTPException(400, f"missing query parameter {name!r}")
        return default
    try:
        return cast_to(raw)
    except ValueError:
        raise HTTPException(400, f"invalid query parameter {name!r}") from None


def _fault_response(status: int) -> Response:
    if status in EMPTY_BODY_STATUSES:
        return Response(status_code=status)
    message = "injected fault"
    return JSONResponse(
        {"success": False, "error": message, "detail": message, "message": message},
        status_code=status,
    )


def instrumented(key: str) -> Callable[[Endpoint], Endpoint]:
    """Count every call to the endpoint, then apply any injected fault."""

    def decorate(endpoint: Endpoint) -> Endpoint:
        @functools.wraps(endpoint)
        async def wrapper(request: Request) -> Response:
            state = demo_state(request)
            state.calls[key] += 1
            fault = state.take_fault(key)
            if fault is not None:
                if fault.delay_s > 0:
                    await asyncio.sleep(fault.delay_s)
                if fault.status:
                    return _fault_response(fault.status)
            return await endpoint(request)

        return wrapper

    return decorate
