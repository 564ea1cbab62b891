"""Auth family 1, next-api-layer style: ``/auth/login``, ``/auth/me``, ``/auth/refresh``,
``/auth/guest``, ``/auth/logout`` (``Authorization: Bearer``, ``{"success", "data"}`` envelopes).
"""

from __future__ import annotations

import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from gateway.demo.endpoint import credentials, demo_state, instrumented, json_object, user_of
from gateway.demo.state import REFRESH_COOKIE, TokenError, user_by_login


def _api_error(status: int, error: str) -> JSONResponse:
    return JSONResponse({"success": False, "error": error}, status_code=status)


@instrumented("login")
async def login(request: Request) -> Response:
    body = await json_object(request)
    if body is None:
        return _api_error(400, "invalid JSON body")
    user = user_by_login(body.get("email"), body.get("password"))
    if user is None:
        return _api_error(401, "invalid credentials")
    access, refresh = demo_state(request).issue_pair(str(user.id))
    return JSONResponse(
        {
            "success": True,
            "data": {"accessToken": access, "refreshToken": refresh, "user": user.public()},
        }
    )


@instrumented("me")
async def me(request: Request) -> Response:
    token = credentials(request, "Bearer")
    if token is None:
        return _api_error(401, "missing token")
    try:
        claims = demo_state(request).decode(token, ("access", "guest"))
    except TokenError as exc:
        return _api_error(401, exc.reason)
    if claims.is_guest:
        data: dict[str, Any] = {
            "id": claims.sub,
            "email": None,
            "username": "guest",
            "roles": [],
            "type": "guest",
        }
    else:
        data = {**user_of(claims).public(), "type": "user"}
    return JSONResponse({"success": True, "data": data})


def _body_refresh_token(body: dict[str, Any]) -> str | None:
    for value in (body.get("refreshToken"), body.get("refresh")):
        if isinstance(value, str) and value:
            return value
    return None


@instrumented("refresh")
async def refresh(request: Request) -> Response:
    """Refresh with a refresh token from the JSON body (``refreshToken`` or ``refresh``),
    else the current (maybe expired) access token as Bearer, else the ``refreshToken``
    cookie."""
    state = demo_state(request)
    body = await json_object(request) or {}
    refresh_token = _body_refresh_token(body)
    bearer = credentials(request, "Bearer")
    try:
        if refresh_token is None and bearer is not None:
            claims = state.consume_access_for_refresh(bearer)
            access, refresh_token = state.issue_pair(claims.sub)
        else:
            refresh_token = refresh_token or request.cookies.get(REFRESH_COOKIE)
            if not refresh_token:
                raise TokenError("missing token")
            claims = state.consume_refresh(refresh_token)
            access = state.issue(claims.sub, "access")
            if state.options.rotate_refresh:
                refresh_token = state.issue(claims.sub, "refresh")
    except TokenError as exc:
        state.refresh_rejected += 1
        return _api_error(401, exc.reason)
    state.refresh_ok += 1
    return JSONResponse(
        {"success": True, "data": {"accessToken": access, "refreshToken": refresh_token}}
    )


@instrumented("guest")
async def guest(request: Request) -> Response:
    state = demo_state(request)
    options = state.options
    if options.guest_username or options.guest_password:
        body = await json_object(request)
        if (
            body is None
            or body.get("username") != options.guest_username
            or body.get("password") != options.guest_password
        ):
            return _api_error(401, "invalid guest credentials")
    token = state.issue(f"guest:{uuid.uuid4()}", "guest")
    return JSONResponse({"success": True, "data": {"accessToken": token}})


@instrumented("logout")
async def logout(request: Request) -> Response:
    state = demo_state(request)
    body = await json_object(request) or {}
    candidates = [
        credentials(request, "Bearer"),
        body.get("refresh"),
        body.get("refreshToken"),
        request.cookies.get(REFRESH_COOKIE),
    ]
    for token in candidates:
        if isinstance(token, str) and token:
            state.revoke(token)
    return JSONResponse({"success": True})


ROUTES: list[BaseRoute] = [
    Route("/auth/login", login, methods=["POST"]),
    Route("/auth/me", me, methods=["GET"]),
    Route("/auth/refresh", refresh, methods=["POST"]),
    Route("/auth/guest", guest, methods=["POST"]),
    Route("/auth/logout", logout, methods=["POST"]),
]
