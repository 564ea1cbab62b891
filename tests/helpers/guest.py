"""What the guest tests share (docs/behaviour.md#guests): signing keys, right and forged guest
tokens, a GuestIssuer for the unit tests (its auth client a stand-in that records calls), the
gateway configs of both guest modes and a few ways to talk to them."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
import warnings
from collections.abc import Callable
from typing import Any, cast

import httpx
import jwt
import pytest

from gateway.authclient import AuthClient, AuthReply, BackendUnavailable
from gateway.guest import GuestIssuer
from gateway.settings import Settings, settings_from_mapping
from gateway.state import MemoryStore
from tests.conftest import Backend, MakeGateway, RunningGateway
from tests.helpers.replies import XHR, set_cookie_value

SECRET = "local-guest-signing-key-0123456789abcdef"  # 40 bytes
WRONG_SECRET = "a-different-signing-key-0123456789abcdef"
SECRET_ENV = "GATEWAY_GUEST_SECRET"


# -- guest tokens, right and forged ---------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unsigned_jwt(header: dict[str, Any], payload: dict[str, Any], signature: str = "") -> str:
    """A JWT written by hand (for ``alg: none`` and other shapes pyjwt will not produce)."""
    return ".".join([b64url(json.dumps(header).encode()), b64url(json.dumps(payload).encode()),
                     signature])


def guest_claims(sub: str | None = None, typ: str = "guest", ttl_s: int = 600,
                 age_s: int = 0) -> dict[str, Any]:
    now = int(time.time()) - age_s
    return {"sub": sub or f"guest:{uuid.uuid4()}", "typ": typ, "iat": now, "exp": now + ttl_s}


def sign(claims: dict[str, Any], key: str = SECRET, algorithm: str = "HS256") -> str:
    with warnings.catch_warnings():  # HS512 with a 40-byte key: short, but that is the point
        warnings.simplefilter("ignore", jwt.warnings.InsecureKeyLengthWarning)
        return jwt.encode(claims, key, algorithm=algorithm)


def _truncated(key: str) -> str:
    token = sign(guest_claims(), key)
    return token[:-5]


#: name -> a factory of a forged guest token, given the gateway's real key.
FORGERS: dict[str, Callable[[str], str]] = {
    "wrong_key": lambda key: sign(guest_claims("guest:forged-wrong-key"), WRONG_SECRET),
    "alg_none": lambda key: unsigned_jwt({"alg": "none", "typ": "JWT"},
                                         guest_claims("guest:forged-alg-none")),
    "alg_none_with_signature": lambda key: unsigned_jwt(
        {"alg": "none", "typ": "JWT"}, guest_claims("guest:forged-none-sig"),
        sign(guest_claims(), key).split(".")[2]),
    "hs512_right_key": lambda key: sign(guest_claims("guest:forged-hs512"), key, "HS512"),
    "expired": lambda key: sign(guest_claims("guest:forged-expired", ttl_s=60, age_s=120), key),
    "typ_user_wrong_key": lambda key: sign(guest_claims("1", typ="user"), WRONG_SECRET),
    "typ_user_right_key": lambda key: sign(guest_claims("guest:forged-typ-user", typ="user"),
                                           key),
    "typ_missing_right_key": lambda key: sign(
        {k: v for k, v in guest_claims("guest:forged-no-typ").items() if k != "typ"}, key),
    "sub_not_guest": lambda key: sign(guest_claims("1"), key),
    "sub_admin": lambda key: sign(guest_claims("admin"), key),
    "sub_not_string": lambda key: sign({**guest_claims(), "sub": 12345}, key),
    "no_exp": lambda key: sign(
        {k: v for k, v in guest_claims("guest:forged-no-exp").items() if k != "exp"}, key),
    "garbage": lambda key: "garbage-not-a-jwt",
    "three_garbage_parts": lambda key: "aaaa.bbbb.cccc",
    "truncated_signature": _truncated,
    "signature_stripped": lambda key: sign(guest_claims("guest:forged-stripped"), key)
    .rsplit(".", 1)[0] + ".",
}


def forged_sub(token: str) -> Any:
    """The ``sub`` a forged token claims (None when it has no readable payload)."""
    try:
        return jwt.decode(token, options={"verify_signature": False}).get("sub")
    except jwt.PyJWTError:
        return None


ROUTES = """
[[routes]]
match = "/api/echo/private/**"
access = "user"

[[routes]]
match = "/api/echo/**"
access = "guest"

[default_route]
access = "user"
"""

BACKEND_MODE = """
[auth]
retry_backoff_s = 0.01

[guest]
enabled = true
mode = "backend"
""" + ROUTES

LOCAL_MODE = """
[auth]
retry_backoff_s = 0.01

[guest]
enabled = true
mode = "local"
ttl_s = {ttl_s}
""" + ROUTES


# -- an issuer for the unit tests ----------------------------------------------------------------


def make_settings(**guest: Any) -> Settings:
    return settings_from_mapping({"upstream": {"url": "http://127.0.0.1:9"},
                                  "guest": {"enabled": True, **guest}})


class FakeAuthClient:
    """Stands in for :class:`AuthClient`: records calls, optionally holds them at a gate."""

    def __init__(self, reply: AuthReply | None = None, *,
                 error: BackendUnavailable | None = None) -> None:
        self.reply = reply
        self.error = error
        self.calls: list[dict[str, Any]] = []
        self.in_flight = 0
        self.peak = 0
        self.gate: asyncio.Event | None = None

    async def call(self, method: str, path: str, *, headers: Any = None,
                   json_body: Any = None, endpoint: str = "other") -> AuthReply:
        assert endpoint == "guest"  # timed as a guest call in the metrics
        self.calls.append({"method": method, "path": path, "json_body": json_body})
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            if self.gate is not None:
                await self.gate.wait()
            if self.error is not None:
                raise self.error
            if self.reply is not None:
                return self.reply
            token = sign(guest_claims(), WRONG_SECRET)  # the backend's own key
            return AuthReply(200, {"success": True, "data": {"accessToken": token}})
        finally:
            self.in_flight -= 1


def make_issuer(settings: Settings, fake: FakeAuthClient | None = None) -> GuestIssuer:
    return GuestIssuer(settings, cast(AuthClient, fake or FakeAuthClient()), MemoryStore())


# -- talking to a gateway with guests -------------------------------------------------------------


def new_guest_token(response: httpx.Response) -> str:
    token = set_cookie_value(response, "guestToken")
    assert token, f"no guest token issued: {response.headers.get_list('set-cookie')}"
    return token


def unverified(token: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return claims


def counts(backend: Backend) -> dict[str, int]:
    calls: dict[str, int] = backend.stats()["calls"]
    return {key: calls.get(key, 0) for key in ("guest", "me", "refresh", "login")}


def local_gateway(make_gateway: MakeGateway, monkeypatch: pytest.MonkeyPatch,
                  ttl_s: float = 600) -> RunningGateway:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    return make_gateway(LOCAL_MODE.format(ttl_s=ttl_s))


def guest_gateway(mode: str, make_gateway: MakeGateway, monkeypatch: pytest.MonkeyPatch
                  ) -> RunningGateway:
    if mode == "local":
        return local_gateway(make_gateway, monkeypatch)
    return make_gateway(BACKEND_MODE)


async def get(gateway: RunningGateway, path: str, cookie: str | None = None,
              headers: dict[str, str] | None = None) -> httpx.Response:
    sent = {**XHR, **(headers or {})}
    if cookie is not None:
        sent["cookie"] = cookie
    async with gateway.client(timeout=10) as client:
        return await client.get(path, headers=sent)
