"""Auth family 3, Express style: ``/api/auth/login``, ``/api/auth/me``,
``/auth/refresh-token``, ``/api/auth/logout`` (refresh token in an HttpOnly ``refreshToken``
cookie).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from gateway.demo.endpoint import credentials, demo_state, instrumented, json_object, user_of
from gateway.demo.state import REFRESH_COOKIE, TokenError, user_by_login


def _express_error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"message": message}, status_code=status)


def _set_refresh_cookie(response: Response, token: str) -> None:
    response.headers.append(
        "set-cookie", f"{REFRESH_COOKIE}={token}; HttpOnly; Path=/; SameSite=Lax"
    )


def _clear_refresh_cookie(response: Response) -> None:
    response.headers.append(
        "set-cookie",
        f"{REFRESH_COOKIE}=; HttpOnly; Path=/; SameSite=Lax; Max-Age=0; "
        "Expires=Thu, 01 Jan 1970 00:00:00 GMT",
    )


@instrumented("express_login")
async def express_login(request: Request) -> Response:
    body = await json_object(request)
    if body is None:
        return _express_error(400, "Invalid JSON body")
    user = user_by_login(body.get("email"), body.get("password"))
    if user is None:
        return _express_error(401, "Invalid credentials")
    access, refresh_token = demo_state(request).issue_pair(str(user.id))
    response = JSONResponse({"accessToken": access, "user": user.public()})
    _set_refresh_cookie(response, refresh_token)
    return response


@instrumented("express_me")
async def express_me(request: Request) -> Response:
    token = credentials(request, "Bearer")
    if token is None:
        return _express_error(401, "No token provided")
    try:
        claims = demo_state(request).decode(token, ("access",))
    except TokenError:
        return _express_error(401, "Invalid or expired token")
    return JSONResponse({"user": user_of(claims).public()})


@instrumented("refresh_token")
async def express_refresh(request: Request) -> Response:
    state = demo_state(request)
    token = request.cookies.get(REFRESH_COOKIE)
    if not token:
        state.refresh_rejected += 1
        return _express_error(401, "No refresh token")
    try:
        claims = state.consume_refresh(token)
    except TokenError as exc:
        state.refresh_rejected += 1
        message = "Refresh token reused" if exc.blacklisted else "Invalid refresh token"
        return _express_error(401, message)
    state.refresh_ok += 1
    response = JSONResponse({"accessToken": state.issue(claims.sub, "access")})
    if state.options.rotate_refresh:
        _set_refresh_cookie(response, state.issue(claims.sub, "refresh"))
    return response


@instrumented("express_logout")
async def express_logout(request: Request) -> Response:
    state = demo_state(request)
    for token in (request.cookies.get(REFRESH_COOKIE), credentials(request, "Bearer")):
        if token:
            state.revoke(token)
    response = JSONResponse({"message": "Logged out"})
    _clear_refresh_cookie(response)
    return response


ROUTES: list[BaseRoute] = [
    Route("/api/auth/login", express_login, methods=["POST"]),
    Route("/api/auth/me", express_me, methods=["GET"]),
    Route("/auth/refresh-token", express_refresh, methods=["POST"]),
    Route("/api/auth/logout", express_logout, methods=["POST"]),
]
