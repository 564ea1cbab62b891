"""Auth family 2, Django REST Framework + SimpleJWT/Djoser style: ``/auth/jwt/create/``,
``/auth/jwt/refresh/``, ``/auth/jwt/blacklist/``, ``/auth/users/me/``, ``/api/django/open/``,
``/api/django/private/`` (``Authorization: JWT``), with DRF's error bodies.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from gateway.demo.endpoint import demo_state, instrumented, json_object, user_of
from gateway.demo.state import DemoUser, TokenError, user_by_login

_DRF_AUTH_HEADERS = {"WWW-Authenticate": 'JWT realm="api"'}
_DRF_REQUIRED = ["This field is required."]


def _drf_401(detail: str, code: str | None = None) -> JSONResponse:
    content: dict[str, Any] = {"detail": detail}
    if code is not None:
        content["code"] = code
    return JSONResponse(content, status_code=401, headers=_DRF_AUTH_HEADERS)


def _drf_not_valid() -> JSONResponse:
    return _drf_401("Given token not valid for any token type", "token_not_valid")


def _drf_refresh_error(exc: TokenError) -> JSONResponse:
    if exc.blacklisted:
        return _drf_401("Token is blacklisted", "token_not_valid")
    if exc.reason == "wrong token type":
        return _drf_401("Token has wrong type", "token_not_valid")
    return _drf_401("Token is invalid or expired", "token_not_valid")


def _drf_parse_error() -> JSONResponse:
    return JSONResponse({"detail": "JSON parse error"}, status_code=400)


def _drf_user(request: Request) -> DemoUser | JSONResponse | None:
    """SimpleJWT's JWTAuthentication: None when no ``JWT`` header; an invalid one is refused
    (the 401 returned is the answer to send)."""
    header = request.headers.get("authorization")
    if header is None:
        return None
    parts = header.split()
    if not parts or parts[0] != "JWT":
        return None
    if len(parts) != 2:  # "Authorization header must contain two space-delimited values"
        return _drf_not_valid()
    try:
        return user_of(demo_state(request).decode(parts[1], ("access",)))
    except TokenError:
        return _drf_not_valid()


def _drf_authenticated_user(request: Request) -> DemoUser | JSONResponse:
    """``_drf_user`` under DRF's IsAuthenticated permission: no credentials is refused too."""
    user = _drf_user(request)
    if user is None:
        return _drf_401("Authentication credentials were not provided.")
    return user


def _drf_refresh_field(body: dict[str, Any]) -> str | None:
    value = body.get("refresh")
    return value if isinstance(value, str) and value else None


@instrumented("jwt_create")
async def jwt_create(request: Request) -> Response:
    body = await json_object(request)
    if body is None:
        return _drf_parse_error()
    login_value = body.get("email") or body.get("username")
    missing: dict[str, Any] = {}
    if not login_value:
        missing["email"] = _DRF_REQUIRED
    if not body.get("password"):
        missing["password"] = _DRF_REQUIRED
    if missing:
        return JSONResponse(missing, status_code=400)
    user = user_by_login(login_value, body.get("password"))
    if user is None:
        return _drf_401("No active account found with the given credentials")
    access, refresh_token = demo_state(request).issue_pair(str(user.id))
    return JSONResponse({"access": access, "refresh": refresh_token})


@instrumented("jwt_refresh")
async def jwt_refresh(request: Request) -> Response:
    state = demo_state(request)
    body = await json_object(request)
    if body is None:
        state.refresh_rejected += 1
        return _drf_parse_error()
    token = _drf_refresh_field(body)
    if token is None:
        state.refresh_rejected += 1
        return JSONResponse({"refresh": _DRF_REQUIRED}, status_code=400)
    try:
        claims = state.consume_refresh(token)
    except TokenError as exc:
        state.refresh_rejected += 1
        return _drf_refresh_error(exc)
    state.refresh_ok += 1
    if state.options.rotate_refresh:
        token = state.issue(claims.sub, "refresh")
    return JSONResponse({"access": state.issue(claims.sub, "access"), "refresh": token})


@instrumented("jwt_blacklist")
async def jwt_blacklist(request: Request) -> Response:
    state = demo_state(request)
    body = await json_object(request)
    if body is None:
        return _drf_parse_error()
    token = _drf_refresh_field(body)
    if token is None:
        return JSONResponse({"refresh": _DRF_REQUIRED}, status_code=400)
    try:
        claims = state.decode(token, ("refresh",))
    except TokenError as exc:
        return _drf_refresh_error(exc)
    state.blacklist.add(claims.jti)
    return JSONResponse({})


@instrumented("users_me")
async def users_me(request: Request) -> Response:
    user = _drf_authenticated_user(request)
    if isinstance(user, Response):
        return user
    return JSONResponse(user.public())


@instrumented("django_open")
async def django_open(request: Request) -> Response:
    user = _drf_user(request)
    if isinstance(user, Response):
        return user
    return JSONResponse({"open": True, "user_id": user.id if user is not None else None})


@instrumented("django_private")
async def django_private(request: Request) -> Response:
    user = _drf_authenticated_user(request)
    if isinstance(user, Response):
        return user
    return JSONResponse({"private": True, "user_id": user.id})


ROUTES: list[BaseRoute] = [
    Route("/auth/jwt/create/", jwt_create, methods=["POST"]),
    Route("/auth/jwt/refresh/", jwt_refresh, methods=["POST"]),
    Route("/auth/jwt/blacklist/", jwt_blacklist, methods=["POST"]),
    Route("/auth/users/me/", users_me, methods=["GET"]),
    Route("/api/django/open/", django_open, methods=["GET"]),
    Route("/api/django/private/", django_private, methods=["GET"]),
]
