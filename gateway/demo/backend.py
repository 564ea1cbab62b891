"""The reference backend that tests and `gateway demo` run behind the gateway.

One Starlette app speaks three auth "families" on different paths, all sharing the same
users, HS256 secret and blacklist:

* next-api-layer style: ``/auth/login``, ``/auth/me``, ``/auth/refresh``, ``/auth/guest``,
  ``/auth/logout`` (``Authorization: Bearer``, ``{"success", "data"}`` envelopes).
* Django REST Framework + SimpleJWT/Djoser style: ``/auth/jwt/create/``,
  ``/auth/jwt/refresh/``, ``/auth/jwt/blacklist/``, ``/auth/users/me/``,
  ``/api/django/open/``, ``/api/django/private/`` (``Authorization: JWT``).
* Express style: ``/api/auth/login``, ``/api/auth/me``, ``/auth/refresh-token``,
  ``/api/auth/logout`` (refresh token in an HttpOnly ``refreshToken`` cookie).

Plus plain application endpoints, proxy test helpers under ``/test/`` and a test-control
API under ``/__demo/`` (call counters, fault injection, runtime lifetimes, token minting).
All state lives in memory on ``app.state.demo`` (a `DemoState`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import gzip
import hashlib
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any, cast

import jwt
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from gateway.demo import pages

Endpoint = Callable[[Request], Awaitable[Response]]

ALGORITHM = "HS256"
TOKEN_TYPES = ("access", "refresh", "guest")
REFRESH_COOKIE = "refreshToken"

#: Keys of ``/__demo/stats`` ``calls`` and of ``/__demo/faults``.
ENDPOINT_KEYS: tuple[str, ...] = (
    # next-api-layer style
    "login",
    "me",
    "refresh",
    "guest",
    "logout",
    # DRF / SimpleJWT / Djoser style
    "jwt_create",
    "users_me",
    "jwt_refresh",
    "jwt_blacklist",
    "django_open",
    "django_private",
    # Express style
    "express_login",
    "express_me",
    "refresh_token",
    "express_logout",
    # application endpoints
    "hello",
    "items",
    "admin_stats",
    "echo",
    "upload",
    "dashboard",
)

_ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
_EMPTY_BODY_STATUSES = frozenset({204, 205, 304})
_MAX_CHUNK = 16 * 1024 * 1024
_CONFIG_TTL_FIELDS = ("access_ttl_s", "refresh_ttl_s", "guest_ttl_s")


@dataclass(frozen=True)
class BackendOptions:
    access_ttl_s: float = 900
    refresh_ttl_s: float = 7 * 24 * 3600
    guest_ttl_s: float = 3600
    #: Rotate refresh credentials and blacklist the used ones (reuse -> 401).
    rotate_refresh: bool = True
    #: HS256 secret; a random one is generated per app when empty.
    secret: str = ""
    #: When set, ``POST /auth/guest`` requires ``{"username", "password"}`` equal to these.
    guest_username: str = ""
    guest_password: str = ""


@dataclass(frozen=True)
class DemoUser:
    id: int
    email: str
    username: str
    password: str
    roles: tuple[str, ...]

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "email": self.email,
            "username": self.username,
            "roles": list(self.roles),
        }


DEMO_USERS: tuple[DemoUser, ...] = (
    DemoUser(1, "demo@example.com", "demo", "demo-password", ("user",)),
    DemoUser(2, "admin@example.com", "admin", "admin-password", ("admin", "user")),
)


@dataclass(frozen=True)
class Claims:
    sub: str
    typ: str
    jti: str
    iat: float
    exp: float

    @property
    def is_guest(self) -> bool:
        return self.typ == "guest"


@dataclass
class Fault:
    status: int
    remaining: int  # -1 means "until reset"
    delay_s: float

    def describe(self) -> dict[str, Any]:
        return {"status": self.status, "count": self.remaining, "delay_s": self.delay_s}


class TokenError(Exception):
    def __init__(self, reason: str, *, blacklisted: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.blacklisted = blacklisted


class DemoState:
    """In-memory state of one backend app (tokens, blacklist, counters, faults)."""

    def __init__(self, options: BackendOptions) -> None:
        self.initial_options = options
        self.options = options
        self.blacklist: set[str] = set()
        self.refreshed_access: set[str] = set()
        self.calls: dict[str, int] = dict.fromkeys(ENDPOINT_KEYS, 0)
        self.refresh_ok = 0
        self.refresh_rejected = 0
        self.faults: dict[str, Fault] = {}

    @property
    def secret(self) -> str:
        return self.options.secret

    def reset(self) -> None:
        """Zero counters, clear faults and restore the initial lifetimes; keep tokens."""
        self.options = self.initial_options
        self.calls = dict.fromkeys(ENDPOINT_KEYS, 0)
        self.refresh_ok = 0
        self.refresh_rejected = 0
        self.faults.clear()

    def stats(self) -> dict[str, Any]:
        return {
            "calls": dict(self.calls),
            "refresh_ok": self.refresh_ok,
            "refresh_rejected": self.refresh_rejected,
            "blacklisted": len(self.blacklist),
            "faults": {key: fault.describe() for key, fault in self.faults.items()},
        }

    def config(self) -> dict[str, Any]:
        return {
            "access_ttl_s": self.options.access_ttl_s,
            "refresh_ttl_s": self.options.refresh_ttl_s,
            "guest_ttl_s": self.options.guest_ttl_s,
            "rotate_refresh": self.options.rotate_refresh,
        }

    # -- faults ---------------------------------------------------------------------------

    def take_fault(self, key: str) -> Fault | None:
        fault = self.faults.get(key)
        if fault is None:
            return None
        if fault.remaining > 0:
            fault.remaining -= 1
            if fault.remaining == 0:
                del self.faults[key]
        return fault

    # -- tokens ---------------------------------------------------------------------------

    def issue(self, sub: str, typ: str, ttl_s: float | None = None, age_s: float = 0.0) -> str:
        if ttl_s is None:
            ttl_s = self._ttl(typ)
        now = time.time()
        claims = {
            "sub": sub,
            "typ": typ,
            "jti": uuid.uuid4().hex,
            "iat": now - age_s,
            "exp": now + ttl_s,
        }
        return jwt.encode(claims, self.secret, algorithm=ALGORITHM)

    def issue_pair(self, sub: str) -> tuple[str, str]:
        return self.issue(sub, "access"), self.issue(sub, "refresh")

    def decode(
        self,
        token: str,
        typs: tuple[str, ...],
        *,
        allow_expired: bool = False,
        check_blacklist: bool = True,
    ) -> Claims:
        """Verify `token`; raise `TokenError` when it must not be accepted.

        With `allow_expired` an expired token still passes as long as it was issued less
        than ``refresh_ttl_s`` ago (used by the access-token refresh flow and logout).
        """
        try:
            payload = jwt.decode(
                token,
                self.secret,
                algorithms=[ALGORITHM],
                options={
                    "require": ["sub", "typ", "jti", "iat", "exp"],
                    "verify_exp": not allow_expired,
                },
            )
        except jwt.ExpiredSignatureError as exc:
            raise TokenError("token expired") from exc
        except jwt.InvalidTokenError as exc:
            raise TokenError("token invalid") from exc
        try:
            claims = Claims(
                sub=str(payload["sub"]),
                typ=str(payload["typ"]),
                jti=str(payload["jti"]),
                iat=float(payload["iat"]),
                exp=float(payload["exp"]),
            )
        except (TypeError, ValueError) as exc:
            raise TokenError("token invalid") from exc
        if claims.typ not in typs:
            raise TokenError("wrong token type")
        if check_blacklist and claims.jti in self.blacklist:
            raise TokenError("token blacklisted", blacklisted=True)
        if allow_expired and time.time() - claims.iat > self.options.refresh_ttl_s:
            raise TokenError("token expired")
        if not claims.is_guest and user_by_id(claims.sub) is None:
            raise TokenError("unknown user")
        return claims

    def consume_refresh(self, token: str) -> Claims:
        """Validate a refresh token; blacklist it when rotating."""
        claims = self.decode(token, ("refresh",))
        if self.options.rotate_refresh:
            self.blacklist.add(claims.jti)
        return claims

    def consume_access_for_refresh(self, token: str) -> Claims:
        """Validate an (possibly expired) access token presented to ``/auth/refresh``."""
        claims = self.decode(token, ("access",), allow_expired=True)
        if claims.jti in self.refreshed_access:
            raise TokenError("token already used", blacklisted=True)
        if self.options.rotate_refresh:
            self.refreshed_access.add(claims.jti)
        return claims

    def revoke(self, token: str) -> bool:
        """Blacklist any correctly signed token, expired or not."""
        try:
            payload = jwt.decode(
                token,
                self.secret,
                algorithms=[ALGORITHM],
                options={"require": ["jti"], "verify_exp": False},
            )
        except jwt.InvalidTokenError:
            return False
        self.blacklist.add(str(payload["jti"]))
        return True

    def _ttl(self, typ: str) -> float:
        if typ == "access":
            return self.options.access_ttl_s
        if typ == "refresh":
            return self.options.refresh_ttl_s
        return self.options.guest_ttl_s


# -- helpers --------------------------------------------------------------------------------


def user_by_login(login: object, password: object) -> DemoUser | None:
    if not isinstance(login, str) or not isinstance(password, str):
        return None
    for user in DEMO_USERS:
        if login in (user.email, user.username) and secrets.compare_digest(
            password.encode(), user.password.encode()
        ):
            return user
    return None


def user_by_id(sub: str) -> DemoUser | None:
    for user in DEMO_USERS:
        if str(user.id) == sub:
            return user
    return None


def _state(request: Request) -> DemoState:
    return cast(DemoState, request.app.state.demo)


def _user(claims: Claims) -> DemoUser:
    user = user_by_id(claims.sub)
    if user is None:  # pragma: no cover - `DemoState.decode` already checked
        raise TokenError("unknown user")
    return user


async def _json_object(request: Request) -> dict[str, Any] | None:
    """The request body as a JSON object, ``{}`` if empty, None if not a JSON object."""
    body = await request.body()
    if not body.strip():
        return {}
    try:
        data = json.loads(body)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _credentials(request: Request, scheme: str) -> str | None:
    """The credentials of an ``Authorization: <scheme> <credentials>`` header, if any."""
    header = request.headers.get("authorization")
    if header is None:
        return None
    parts = header.split()
    if len(parts) != 2 or parts[0].lower() != scheme.lower():
        return None
    return parts[1]


def _param(request: Request, name: str, cast_to: Callable[[str], Any], default: Any) -> Any:
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
    if status in _EMPTY_BODY_STATUSES:
        return Response(status_code=status)
    message = "injected fault"
    return JSONResponse(
        {"success": False, "error": message, "detail": message, "message": message},
        status_code=status,
    )


def _instrumented(key: str) -> Callable[[Endpoint], Endpoint]:
    """Count every call to the endpoint, then apply any injected fault."""

    def decorate(endpoint: Endpoint) -> Endpoint:
        @functools.wraps(endpoint)
        async def wrapper(request: Request) -> Response:
            state = _state(request)
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


# -- family 1: next-api-layer style ---------------------------------------------------------


def _api_error(status: int, error: str) -> JSONResponse:
    return JSONResponse({"success": False, "error": error}, status_code=status)


@_instrumented("login")
async def login(request: Request) -> Response:
    body = await _json_object(request)
    if body is None:
        return _api_error(400, "invalid JSON body")
    user = user_by_login(body.get("email"), body.get("password"))
    if user is None:
        return _api_error(401, "invalid credentials")
    access, refresh = _state(request).issue_pair(str(user.id))
    return JSONResponse(
        {
            "success": True,
            "data": {"accessToken": access, "refreshToken": refresh, "user": user.public()},
        }
    )


@_instrumented("me")
async def me(request: Request) -> Response:
    token = _credentials(request, "Bearer")
    if token is None:
        return _api_error(401, "missing token")
    try:
        claims = _state(request).decode(token, ("access", "guest"))
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
        data = {**_user(claims).public(), "type": "user"}
    return JSONResponse({"success": True, "data": data})


def _body_refresh_token(body: dict[str, Any]) -> str | None:
    for value in (body.get("refreshToken"), body.get("refresh")):
        if isinstance(value, str) and value:
            return value
    return None


@_instrumented("refresh")
async def refresh(request: Request) -> Response:
    """Refresh with a refresh token from the JSON body (``refreshToken`` or ``refresh``),
    else the current (maybe expired) access token as Bearer, else the ``refreshToken``
    cookie."""
    state = _state(request)
    body = await _json_object(request) or {}
    refresh_token = _body_refresh_token(body)
    bearer = _credentials(request, "Bearer")
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


@_instrumented("guest")
async def guest(request: Request) -> Response:
    state = _state(request)
    options = state.options
    if options.guest_username or options.guest_password:
        body = await _json_object(request)
        if (
            body is None
            or body.get("username") != options.guest_username
            or body.get("password") != options.guest_password
        ):
            return _api_error(401, "invalid guest credentials")
    token = state.issue(f"guest:{uuid.uuid4()}", "guest")
    return JSONResponse({"success": True, "data": {"accessToken": token}})


@_instrumented("logout")
async def logout(request: Request) -> Response:
    state = _state(request)
    body = await _json_object(request) or {}
    candidates = [
        _credentials(request, "Bearer"),
        body.get("refresh"),
        body.get("refreshToken"),
        request.cookies.get(REFRESH_COOKIE),
    ]
    for token in candidates:
        if isinstance(token, str) and token:
            state.revoke(token)
    return JSONResponse({"success": True})


# -- family 2: Django REST Framework + SimpleJWT / Djoser style ------------------------------

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


def _drf_user(request: Request) -> DemoUser | None:
    """SimpleJWT's JWTAuthentication: None when no ``JWT`` header, TokenError if invalid."""
    header = request.headers.get("authorization")
    if header is None:
        return None
    parts = header.split()
    if not parts or parts[0] != "JWT":
        return None
    if len(parts) != 2:
        raise TokenError("Authorization header must contain two space-delimited values")
    return _user(_state(request).decode(parts[1], ("access",)))


def _drf_refresh_field(body: dict[str, Any]) -> str | None:
    value = body.get("refresh")
    return value if isinstance(value, str) and value else None


@_instrumented("jwt_create")
async def jwt_create(request: Request) -> Response:
    body = await _json_object(request)
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
    access, refresh_token = _state(request).issue_pair(str(user.id))
    return JSONResponse({"access": access, "refresh": refresh_token})


@_instrumented("jwt_refresh")
async def jwt_refresh(request: Request) -> Response:
    state = _state(request)
    body = await _json_object(request)
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


@_instrumented("jwt_blacklist")
async def jwt_blacklist(request: Request) -> Response:
    state = _state(request)
    body = await _json_object(request)
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


@_instrumented("users_me")
async def users_me(request: Request) -> Response:
    try:
        user = _drf_user(request)
    except TokenError:
        return _drf_not_valid()
    if user is None:
        return _drf_401("Authentication credentials were not provided.")
    return JSONResponse(user.public())


@_instrumented("django_open")
async def django_open(request: Request) -> Response:
    try:
        user = _drf_user(request)
    except TokenError:
        return _drf_not_valid()
    return JSONResponse({"open": True, "user_id": user.id if user is not None else None})


@_instrumented("django_private")
async def django_private(request: Request) -> Response:
    try:
        user = _drf_user(request)
    except TokenError:
        return _drf_not_valid()
    if user is None:
        return _drf_401("Authentication credentials were not provided.")
    return JSONResponse({"private": True, "user_id": user.id})


# -- family 3: Express style ----------------------------------------------------------------


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


@_instrumented("express_login")
async def express_login(request: Request) -> Response:
    body = await _json_object(request)
    if body is None:
        return _express_error(400, "Invalid JSON body")
    user = user_by_login(body.get("email"), body.get("password"))
    if user is None:
        return _express_error(401, "Invalid credentials")
    access, refresh_token = _state(request).issue_pair(str(user.id))
    response = JSONResponse({"accessToken": access, "user": user.public()})
    _set_refresh_cookie(response, refresh_token)
    return response


@_instrumented("express_me")
async def express_me(request: Request) -> Response:
    token = _credentials(request, "Bearer")
    if token is None:
        return _express_error(401, "No token provided")
    try:
        claims = _state(request).decode(token, ("access",))
    except TokenError:
        return _express_error(401, "Invalid or expired token")
    return JSONResponse({"user": _user(claims).public()})


@_instrumented("refresh_token")
async def express_refresh(request: Request) -> Response:
    state = _state(request)
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


@_instrumented("express_logout")
async def express_logout(request: Request) -> Response:
    state = _state(request)
    for token in (request.cookies.get(REFRESH_COOKIE), _credentials(request, "Bearer")):
        if token:
            state.revoke(token)
    response = JSONResponse({"message": "Logged out"})
    _clear_refresh_cookie(response)
    return response


# -- application endpoints ------------------------------------------------------------------

_ITEMS = [
    {"id": 1, "name": "apple"},
    {"id": 2, "name": "banana"},
    {"id": 3, "name": "cherry"},
]


def _gateway_user_id(request: Request) -> str | None:
    return request.headers.get("x-auth-user-id")


@_instrumented("hello")
async def hello(request: Request) -> Response:
    return JSONResponse({"hello": "world"})


@_instrumented("items")
async def items(request: Request) -> Response:
    return JSONResponse({"items": _ITEMS, "user_id": _gateway_user_id(request)})


@_instrumented("admin_stats")
async def admin_stats(request: Request) -> Response:
    return JSONResponse(
        {"users": len(DEMO_USERS), "items": len(_ITEMS), "user_id": _gateway_user_id(request)}
    )


async def _digest_body(request: Request) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    async for chunk in request.stream():
        digest.update(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


@_instrumented("echo")
async def echo(request: Request) -> Response:
    size, sha256 = await _digest_body(request)
    scope = request.scope
    raw_path = scope.get("raw_path")
    path = raw_path.decode("latin-1") if raw_path else scope["path"]
    return JSONResponse(
        {
            "method": request.method,
            "path": path,
            "query": scope["query_string"].decode("latin-1"),
            "headers": [
                [name.decode("latin-1"), value.decode("latin-1")]
                for name, value in scope["headers"]
            ],
            "body_len": size,
            "body_sha256": sha256,
        }
    )


# -- proxy test helpers ---------------------------------------------------------------------


async def _repeat(size: int, chunk: int) -> AsyncIterator[bytes]:
    piece = b"x" * chunk
    remaining = size
    while remaining > 0:
        count = min(chunk, remaining)
        yield piece if count == chunk else piece[:count]
        remaining -= count
        await asyncio.sleep(0)  # let a disconnect be noticed between chunks


async def stream_bytes(request: Request) -> Response:
    size = _param(request, "size", int, None)
    chunk = _param(request, "chunk", int, 65536)
    if size < 0 or not 0 < chunk <= _MAX_CHUNK:
        raise HTTPException(400, f"size must be >= 0 and chunk in 1..{_MAX_CHUNK}")
    return StreamingResponse(_repeat(size, chunk), media_type="application/octet-stream")


@_instrumented("upload")
async def upload(request: Request) -> Response:
    size, sha256 = await _digest_body(request)
    return JSONResponse({"received": size, "sha256": sha256})


async def slow(request: Request) -> Response:
    delay = _param(request, "delay", float, 1.0)
    await asyncio.sleep(max(delay, 0.0))
    return JSONResponse({"slept": delay})


async def three_cookies(request: Request) -> Response:
    response = JSONResponse({"cookies": ["a", "b", "c"]})
    for cookie in ("a=1; Path=/", "b=2; Path=/", "c=3; Path=/; HttpOnly"):
        response.headers.append("set-cookie", cookie)
    return response


_GZIP_PAYLOAD = {"compressed": True, "message": "hello from a gzip body " * 8}


async def gzipped(request: Request) -> Response:
    body = gzip.compress(json.dumps(_GZIP_PAYLOAD).encode(), mtime=0)
    return Response(body, media_type="application/json", headers={"content-encoding": "gzip"})


async def hop_headers(request: Request) -> Response:
    headers = {
        "connection": "x-hop-custom",
        "x-hop-custom": "1",
        "keep-alive": "timeout=5",
        "proxy-authenticate": "Basic",
        "trailer": "x-t",
        "upgrade": "h2c",
        "x-kept": "yes",
    }
    return JSONResponse({"hop": True}, headers=headers)


async def given_status(request: Request) -> Response:
    code: int = request.path_params["code"]
    if not 200 <= code <= 599:
        raise HTTPException(400, "status must be between 200 and 599")
    if code in _EMPTY_BODY_STATUSES:
        return Response(status_code=code)
    return JSONResponse({"status": code}, status_code=code)


def _cookie_part_ok(value: str, forbidden: str) -> bool:
    return all(0x20 < ord(char) < 0x7F and char not in forbidden for char in value)


async def set_cookie(request: Request) -> Response:
    name = _param(request, "name", str, None)
    value = _param(request, "value", str, "")
    if (
        not name
        or not _cookie_part_ok(name, '()<>@,;:\\"/[]?={}')
        or not _cookie_part_ok(value, '",;\\')
    ):
        raise HTTPException(400, "invalid cookie name or value")
    response = JSONResponse({"set": {name: value}})
    response.headers.append("set-cookie", f"{name}={value}; Path=/")
    return response


async def headers_out(request: Request) -> Response:
    headers = {"server": "demo-backend", "date": formatdate(usegmt=True)}
    return JSONResponse({"headers_out": True}, headers=headers)


# -- HTML pages -----------------------------------------------------------------------------


async def home(request: Request) -> Response:
    return HTMLResponse(pages.home_page())


async def login_form(request: Request) -> Response:
    next_path = pages.safe_next(request.query_params.get("next"))
    return HTMLResponse(pages.login_page(next_path))


@_instrumented("dashboard")
async def dashboard(request: Request) -> Response:
    return HTMLResponse(pages.dashboard_page(_gateway_user_id(request)))


# -- test control: /__demo/ -----------------------------------------------------------------


def _control_error(message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=400)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _parse_fault(spec: object) -> Fault:
    if not isinstance(spec, dict):
        raise ValueError("fault must be an object")
    status = spec.get("status", 503)
    count = spec.get("count", 1)
    delay_s = spec.get("delay_s", 0.0)
    if not isinstance(status, int) or isinstance(status, bool):
        raise ValueError("status must be an integer")
    if status != 0 and not 200 <= status <= 599:
        raise ValueError("status must be 0 or between 200 and 599")
    if not isinstance(count, int) or isinstance(count, bool) or count < -1:
        raise ValueError("count must be an integer >= -1")
    if not _is_number(delay_s) or delay_s < 0:
        raise ValueError("delay_s must be a number >= 0")
    return Fault(status=status, remaining=count, delay_s=float(delay_s))


async def demo_stats(request: Request) -> Response:
    return JSONResponse(_state(request).stats())


async def demo_reset(request: Request) -> Response:
    state = _state(request)
    state.reset()
    return JSONResponse(state.stats())


async def demo_faults(request: Request) -> Response:
    state = _state(request)
    if request.method == "POST":
        body = await _json_object(request)
        if body is None:
            return _control_error("body must be a JSON object")
        unknown = sorted(set(body) - set(ENDPOINT_KEYS))
        if unknown:
            return _control_error(f"unknown endpoint keys: {', '.join(unknown)}")
        try:
            parsed = {key: _parse_fault(spec) for key, spec in body.items()}
        except ValueError as exc:
            return _control_error(str(exc))
        for key, fault in parsed.items():
            if fault.remaining == 0:
                state.faults.pop(key, None)
            else:
                state.faults[key] = fault
    return JSONResponse({key: fault.describe() for key, fault in state.faults.items()})


async def demo_config(request: Request) -> Response:
    state = _state(request)
    if request.method == "POST":
        body = await _json_object(request)
        if body is None:
            return _control_error("body must be a JSON object")
        changes: dict[str, Any] = {}
        for key, value in body.items():
            if key in _CONFIG_TTL_FIELDS and _is_number(value):
                changes[key] = float(value)
            elif key == "rotate_refresh" and isinstance(value, bool):
                changes[key] = value
            else:
                return _control_error(f"invalid config entry {key!r}")
        state.options = dataclasses.replace(state.options, **changes)
    return JSONResponse(state.config())


async def demo_token(request: Request) -> Response:
    state = _state(request)
    body = await _json_object(request)
    if body is None:
        return _control_error("body must be a JSON object")
    typ = body.get("typ", "access")
    if typ not in TOKEN_TYPES:
        return _control_error(f"typ must be one of {', '.join(TOKEN_TYPES)}")
    ttl_s = body.get("ttl_s")
    age_s = body.get("age_s", 0.0)
    if (ttl_s is not None and not _is_number(ttl_s)) or not _is_number(age_s):
        return _control_error("ttl_s and age_s must be numbers")
    user_id = body.get("user_id")
    if typ == "guest":
        sub = str(user_id) if user_id is not None else f"guest:{uuid.uuid4()}"
    elif user_id is None or user_by_id(str(user_id)) is None:
        return _control_error("user_id must be a demo user id")
    else:
        sub = str(user_id)
    token = state.issue(sub, typ, None if ttl_s is None else float(ttl_s), float(age_s))
    claims = jwt.decode(token, options={"verify_signature": False})
    return JSONResponse({"token": token, "claims": claims})


# -- application factory --------------------------------------------------------------------


async def websocket_echo(websocket: WebSocket) -> None:
    """Says who the gateway said the user is, then echoes text and bytes; the text "close
    <code>" closes with that code. Picks the first subprotocol offered."""
    offered = websocket.scope.get("subprotocols") or []
    await websocket.accept(subprotocol=offered[0] if offered else None)
    await websocket.send_json({"user_id": websocket.headers.get("x-auth-user-id"),
                               "token_type": websocket.headers.get("x-auth-token-type"),
                               "authorization": websocket.headers.get("authorization")})
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            if text is not None and text.startswith("close "):
                await websocket.close(code=int(text.split()[1]))
                return
            if text is not None:
                await websocket.send_text(text)
            elif message.get("bytes") is not None:
                await websocket.send_bytes(message["bytes"])
    except WebSocketDisconnect:
        return


def _routes() -> list[BaseRoute]:
    return [
        # family 1
        Route("/auth/login", login, methods=["POST"]),
        Route("/auth/me", me, methods=["GET"]),
        Route("/auth/refresh", refresh, methods=["POST"]),
        Route("/auth/guest", guest, methods=["POST"]),
        Route("/auth/logout", logout, methods=["POST"]),
        # family 2
        Route("/auth/jwt/create/", jwt_create, methods=["POST"]),
        Route("/auth/jwt/refresh/", jwt_refresh, methods=["POST"]),
        Route("/auth/jwt/blacklist/", jwt_blacklist, methods=["POST"]),
        Route("/auth/users/me/", users_me, methods=["GET"]),
        Route("/api/django/open/", django_open, methods=["GET"]),
        Route("/api/django/private/", django_private, methods=["GET"]),
        # family 3
        Route("/api/auth/login", express_login, methods=["POST"]),
        Route("/api/auth/me", express_me, methods=["GET"]),
        Route("/auth/refresh-token", express_refresh, methods=["POST"]),
        Route("/api/auth/logout", express_logout, methods=["POST"]),
        # application
        Route("/api/public/hello", hello, methods=["GET"]),
        Route("/api/items", items, methods=["GET"]),
        Route("/api/admin/stats", admin_stats, methods=["GET"]),
        Route("/api/echo", echo, methods=_ALL_METHODS),
        Route("/api/echo/{path:path}", echo, methods=_ALL_METHODS),
        # proxy test helpers
        Route("/test/stream", stream_bytes, methods=["GET"]),
        Route("/test/upload", upload, methods=["POST", "PUT"]),
        Route("/test/slow", slow, methods=["GET"]),
        Route("/test/cookies", three_cookies, methods=["GET"]),
        Route("/test/gzip", gzipped, methods=["GET"]),
        Route("/test/hop", hop_headers, methods=["GET"]),
        Route("/test/status/{code:int}", given_status, methods=_ALL_METHODS),
        Route("/test/set-cookie", set_cookie, methods=["GET"]),
        Route("/test/headers-out", headers_out, methods=["GET"]),
        WebSocketRoute("/ws/echo", websocket_echo),
        # pages
        Route("/", home, methods=["GET"]),
        Route("/login", login_form, methods=["GET"]),
        Route("/dashboard", dashboard, methods=["GET"]),
        # test control
        Route("/__demo/stats", demo_stats, methods=["GET"]),
        Route("/__demo/reset", demo_reset, methods=["POST"]),
        Route("/__demo/faults", demo_faults, methods=["GET", "POST"]),
        Route("/__demo/config", demo_config, methods=["GET", "POST"]),
        Route("/__demo/token", demo_token, methods=["POST"]),
    ]


def create_backend(options: BackendOptions | None = None) -> Starlette:
    """Build a fresh demo backend; its state is on ``app.state.demo`` (a `DemoState`)."""
    options = options or BackendOptions()
    if not options.secret:
        options = dataclasses.replace(options, secret=secrets.token_urlsafe(32))
    app = Starlette(routes=_routes())
    app.state.demo = DemoState(options)
    return app
