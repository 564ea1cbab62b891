"""Guest tokens on real sockets (docs/behaviour.md#routes, docs/behaviour.md#guests,
docs/audit.md).

Both modes: ``backend`` (the reference backend's ``POST /auth/guest`` mints the token, the
gateway forwards it as ``Authorization``) and ``local`` (the gateway signs an HS256 JWT itself,
never calls the backend for it, and tells the upstream of the guest only through
``x-auth-token-type`` / ``x-auth-user-id``). Covers reuse, expiry, the refusal on ``user``
routes, a cleared session becoming a guest, login removing the guest cookie, forged local
tokens, the startup check of the signing key and the backend-mode flood bounds.

Cookies are always sent by hand (``cookie`` header): the gateway's cookies are ``Secure`` and
the tests speak plain HTTP, so a client cookie jar would not send them anyway.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from gateway.demo import BackendOptions
from tests.conftest import Backend, MakeGateway, RunningGateway, StartGateway
from tests.test_guest import FORGERS, SECRET, SECRET_ENV, WRONG_SECRET, forged_sub

ROOT = Path(__file__).resolve().parents[2]

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

XHR = {"accept": "application/json", "x-requested-with": "XMLHttpRequest"}
BROWSER = {"accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def fp(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:12]


def echoed(body: dict[str, Any], name: str) -> list[str]:
    """Every value the upstream received for header ``name``."""
    return [v for k, v in body["headers"] if k.lower() == name]


def set_cookie_lines(response: httpx.Response, name: str) -> list[str]:
    return [line for line in response.headers.get_list("set-cookie")
            if line.partition("=")[0].strip() == name]


def cookie_value(response: httpx.Response, name: str) -> str | None:
    """The value a ``Set-Cookie`` for ``name`` gives ("" when it clears), else None."""
    lines = set_cookie_lines(response, name)
    assert len(lines) <= 1, lines
    return lines[0].partition("=")[2].split(";")[0] if lines else None


def attributes(line: str) -> dict[str, str]:
    attrs: dict[str, str] = {}
    for part in line.split(";")[1:]:
        key, _, value = part.strip().partition("=")
        attrs[key.lower()] = value
    return attrs


def new_guest_token(response: httpx.Response) -> str:
    token = cookie_value(response, "guestToken")
    assert token, f"no guest token issued: {response.headers.get_list('set-cookie')}"
    return token


def unverified(token: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return claims


def decode_user(value: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))


def counts(backend: Backend) -> dict[str, int]:
    calls: dict[str, int] = backend.stats()["calls"]
    return {key: calls.get(key, 0) for key in ("guest", "me", "refresh", "login")}


def assert_no_raw_tokens(gateway: RunningGateway, *tokens: str) -> None:
    text = gateway.audit_path.read_text() if gateway.audit_path.exists() else ""
    for token in tokens:
        assert token not in text
        for piece in token.split("."):
            if len(piece) >= 16:
                assert piece not in text


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


# --------------------------------------------------------------------------
# backend mode
# --------------------------------------------------------------------------


async def test_backend_mode_issues_and_forwards_guest_token(
        make_gateway: MakeGateway, backend: Backend) -> None:
    gateway = make_gateway(BACKEND_MODE)
    before = counts(backend)
    reply = await get(gateway, "/api/echo/a")
    assert reply.status_code == 200
    token = new_guest_token(reply)
    line = set_cookie_lines(reply, "guestToken")[0]
    attrs = attributes(line)
    assert attrs["max-age"] == "3600"
    assert attrs["path"] == "/"
    assert "httponly" in attrs and "secure" in attrs
    assert attrs["samesite"].lower() == "lax"

    claims = unverified(token)
    assert claims["typ"] == "guest" and claims["sub"].startswith("guest:")
    body = reply.json()
    assert echoed(body, "authorization") == [f"Bearer {token}"]
    assert echoed(body, "x-auth-token-type") == ["guest"]
    assert echoed(body, "x-auth-user-id") == [claims["sub"]]
    assert decode_user(echoed(body, "x-auth-user")[0])["id"] == claims["sub"]
    after = counts(backend)
    assert after["guest"] == before["guest"] + 1
    assert after["me"] == before["me"]

    events = gateway.events("auth.guest_issued")
    assert len(events) == 1
    event = events[0]
    assert event["user_id"] == claims["sub"]
    assert event["token_fp"] == fp(token)
    assert event["outcome"] == "issued" and event["path"] == "/api/echo/a"
    assert event["client_ip"] == "127.0.0.1"
    for key in ("timestamp", "request_id", "method"):
        assert event[key]
    assert_no_raw_tokens(gateway, token)


async def test_backend_mode_reuse_validates_once_per_cache_window(
        make_gateway: MakeGateway, backend: Backend) -> None:
    gateway = make_gateway(BACKEND_MODE + "\n[audit]\nlog_cache_hits = true\n")
    token = new_guest_token(await get(gateway, "/api/echo/a"))
    sub = unverified(token)["sub"]
    before = counts(backend)
    replies = [await get(gateway, f"/api/echo/b{i}", cookie=f"guestToken={token}")
               for i in range(3)]
    after = counts(backend)
    for reply in replies:
        assert reply.status_code == 200
        assert cookie_value(reply, "guestToken") is None  # no new token
        body = reply.json()
        assert echoed(body, "x-auth-user-id") == [sub]
        assert echoed(body, "x-auth-token-type") == ["guest"]
        assert echoed(body, "authorization") == [f"Bearer {token}"]
    assert after["guest"] == before["guest"]
    assert after["me"] == before["me"] + 1  # one validation, then the cache
    caches = [e["cache"] for e in gateway.events("auth.validated")]
    assert caches == ["miss", "hit", "hit"]
    assert len(gateway.events("auth.guest_issued")) == 1


async def test_backend_mode_sends_service_credentials(
        make_gateway: MakeGateway, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GUEST_PW", "svc-password-42")
    config = BACKEND_MODE.replace('mode = "backend"',
                                  'mode = "backend"\nusername = "svc"\npassword_env = "GUEST_PW"')
    options = BackendOptions(guest_username="svc", guest_password="svc-password-42")
    with Backend.start(options) as own:
        def guest_calls() -> int:
            return own.calls("guest")

        gateway = make_gateway(config, upstream=own.url)
        reply = await get(gateway, "/api/echo/a")
        assert reply.status_code == 200, reply.text
        token = new_guest_token(reply)
        assert echoed(reply.json(), "x-auth-user-id") == [unverified(token)["sub"]]
        assert guest_calls() == 1

        # The wrong password: the backend refuses, no token is made up.
        monkeypatch.setenv("GUEST_PW", "not-the-password")
        wrong = make_gateway(config, upstream=own.url)
        reply = await get(wrong, "/api/echo/a")
        assert reply.status_code == 503
        assert reply.headers["retry-after"]
        assert cookie_value(reply, "guestToken") is None
        assert guest_calls() == 2
        assert_no_raw_tokens(wrong, "svc-password-42", "not-the-password")
        assert_no_raw_tokens(gateway, "svc-password-42")


# --------------------------------------------------------------------------
# local mode
# --------------------------------------------------------------------------


async def test_local_mode_signs_guest_token_without_backend(
        make_gateway: MakeGateway, backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    gateway = local_gateway(make_gateway, monkeypatch, ttl_s=900)
    before = counts(backend)
    reply = await get(gateway, "/api/echo/a")
    assert reply.status_code == 200
    token = new_guest_token(reply)
    assert attributes(set_cookie_lines(reply, "guestToken")[0])["max-age"] == "3600"
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert claims["typ"] == "guest"
    assert uuid.UUID(claims["sub"].removeprefix("guest:")).version == 4
    assert claims["sub"].startswith("guest:")
    assert claims["exp"] == claims["iat"] + 900
    body = reply.json()
    assert echoed(body, "authorization") == []
    assert echoed(body, "x-auth-token-type") == ["guest"]
    assert echoed(body, "x-auth-user-id") == [claims["sub"]]
    assert decode_user(echoed(body, "x-auth-user")[0]) == {"id": claims["sub"], "type": "guest"}

    # Reuse: same guest, no new token, still no backend call.
    for i in range(3):
        again = await get(gateway, f"/api/echo/b{i}", cookie=f"guestToken={token}")
        assert again.status_code == 200
        assert cookie_value(again, "guestToken") is None
        assert echoed(again.json(), "x-auth-user-id") == [claims["sub"]]
        assert echoed(again.json(), "authorization") == []
    assert counts(backend) == before

    issued = gateway.events("auth.guest_issued")
    assert len(issued) == 1
    assert issued[0]["user_id"] == claims["sub"] and issued[0]["token_fp"] == fp(token)
    assert issued[0]["mode"] == "local"
    validated = gateway.events("auth.validated")
    assert [e["outcome"] for e in validated] == ["valid"] * 3
    assert {e["token_fp"] for e in validated} == {fp(token)}
    assert_no_raw_tokens(gateway, token)


async def test_expired_guest_gets_a_new_one(
        make_gateway: MakeGateway, backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both modes share one short sleep: local ``ttl_s = 1``; backend guest tokens of 1 s."""
    local = local_gateway(make_gateway, monkeypatch, ttl_s=1)
    remote = make_gateway(BACKEND_MODE)
    backend.configure(guest_ttl_s=1)
    try:
        old_local = new_guest_token(await get(local, "/api/echo/a"))
        old_remote = new_guest_token(await get(remote, "/api/echo/a"))
        await asyncio.sleep(2.05)

        before = counts(backend)
        reply = await get(local, "/api/echo/b", cookie=f"guestToken={old_local}")
        assert reply.status_code == 200
        new = new_guest_token(reply)
        assert new != old_local
        new_sub = jwt.decode(new, SECRET, algorithms=["HS256"])["sub"]
        assert new_sub != jwt.decode(old_local, SECRET, algorithms=["HS256"],
                                     options={"verify_exp": False})["sub"]
        assert echoed(reply.json(), "x-auth-user-id") == [new_sub]
        assert counts(backend) == before  # local mode: no backend call, even now
        last = local.events("auth.validated")[-1]
        assert last["outcome"] == "invalid" and last["token_fp"] == fp(old_local)
        assert len(local.events("auth.guest_issued")) == 2

        before = counts(backend)
        reply = await get(remote, "/api/echo/b", cookie=f"guestToken={old_remote}")
        assert reply.status_code == 200
        new = new_guest_token(reply)
        new_sub = unverified(new)["sub"]
        assert new_sub != unverified(old_remote)["sub"]
        assert echoed(reply.json(), "x-auth-user-id") == [new_sub]
        assert echoed(reply.json(), "authorization") == [f"Bearer {new}"]
        after = counts(backend)
        assert after["guest"] == before["guest"] + 1
        assert after["me"] <= before["me"] + 1  # the backend's verdict on the old one
        assert remote.events("auth.validated")[-1]["outcome"] == "invalid"
        assert len(remote.events("auth.guest_issued")) == 2
    finally:
        backend.reset()


async def test_backend_guest_endpoint_down_is_503_not_a_token(
        make_gateway: MakeGateway, backend: Backend) -> None:
    gateway = make_gateway(BACKEND_MODE)
    backend.fault("guest", 503, count=-1)
    try:
        reply = await get(gateway, "/api/echo/a")
        assert reply.status_code == 503
        assert reply.headers["retry-after"]
        assert reply.json()["error"] == "auth_unavailable"
        assert cookie_value(reply, "guestToken") is None
        assert counts(backend)["guest"] == 3  # one try and auth.retries = 2
        assert gateway.events("auth.guest_issued") == []
        assert gateway.events("auth.backend_unavailable")[-1]["reason"] == "backend_error"
    finally:
        backend.reset()
    # Back up: a token again.
    assert new_guest_token(await get(gateway, "/api/echo/a"))


@pytest.mark.parametrize("kind", sorted(FORGERS))
async def test_local_mode_forged_guest_token_is_replaced(
        make_gateway: MakeGateway, backend: Backend, monkeypatch: pytest.MonkeyPatch,
        kind: str) -> None:
    gateway = local_gateway(make_gateway, monkeypatch)
    forged = FORGERS[kind](SECRET)
    before = counts(backend)
    reply = await get(gateway, "/api/echo/a", cookie=f"guestToken={forged}")
    assert reply.status_code == 200
    new = new_guest_token(reply)
    assert new != forged
    new_sub = jwt.decode(new, SECRET, algorithms=["HS256"])["sub"]
    body = reply.json()
    assert echoed(body, "x-auth-user-id") == [new_sub]
    assert echoed(body, "x-auth-user-id") != [forged_sub(forged)]
    assert echoed(body, "x-auth-token-type") == ["guest"]
    assert echoed(body, "authorization") == []
    assert counts(backend) == before
    assert_no_raw_tokens(gateway, forged, new)

    # The forged token on a user route is simply unauthenticated.
    refused = await get(gateway, "/api/echo/private/x", cookie=f"guestToken={forged}")
    assert refused.status_code == 401
    assert cookie_value(refused, "guestToken") is None


@pytest.mark.parametrize("kind", sorted(FORGERS))
async def test_backend_mode_forged_guest_token_is_replaced(
        make_gateway: MakeGateway, backend: Backend, kind: str) -> None:
    """Backend mode: the backend's /auth/me judges a guest cookie; a forged one (the backend's
    key is unknown to the forger) gets a fresh backend-minted guest, never its claimed id."""
    gateway = make_gateway(BACKEND_MODE)
    forged = FORGERS[kind](WRONG_SECRET)
    reply = await get(gateway, "/api/echo/a", cookie=f"guestToken={forged}")
    assert reply.status_code == 200, reply.text
    new = new_guest_token(reply)
    body = reply.json()
    assert echoed(body, "authorization") == [f"Bearer {new}"]
    assert echoed(body, "x-auth-user-id") == [unverified(new)["sub"]]
    assert echoed(body, "x-auth-user-id") != [forged_sub(forged)]
    refused = await get(gateway, "/api/echo/private/x", cookie=f"guestToken={forged}")
    assert refused.status_code == 401
    assert_no_raw_tokens(gateway, forged, new)


async def test_next_api_layer_preset_guest_section(start: StartGateway, backend: Backend
                                                   ) -> None:
    """The preset as shipped: /api/items/** is a guest route served with a backend-minted
    guest token, reused on the next visit; /api/** still needs a user."""
    gateway = start("next-api-layer")
    before = counts(backend)
    first = await get(gateway, "/api/items")
    assert first.status_code == 200, first.text
    token = new_guest_token(first)
    sub = unverified(token)["sub"]
    assert first.json()["user_id"] == sub  # the app saw the guest's id from the gateway
    again = await get(gateway, "/api/items", cookie=f"guestToken={token}")
    assert again.status_code == 200 and cookie_value(again, "guestToken") is None
    assert again.json()["user_id"] == sub
    private = await get(gateway, "/api/echo", cookie=f"guestToken={token}")
    assert private.status_code == 401
    assert counts(backend)["guest"] == before["guest"] + 1


async def test_local_guest_token_in_authorization_is_checked_locally(
        make_gateway: MakeGateway, backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    """A local guest token is validated by the gateway, no backend call
    (docs/behaviour.md#guests); that holds wherever it is found (docs/behaviour.md#tokens),
    the Authorization header included (the backend cannot verify it, and it is not a refresh
    credential either)."""
    gateway = local_gateway(make_gateway, monkeypatch)
    token = new_guest_token(await get(gateway, "/api/echo/a"))
    sub = jwt.decode(token, SECRET, algorithms=["HS256"])["sub"]
    before = counts(backend)
    reply = await get(gateway, "/api/echo/b", headers={"authorization": f"Bearer {token}"})
    assert reply.status_code == 200
    assert echoed(reply.json(), "authorization") == []
    assert echoed(reply.json(), "x-auth-token-type") == ["guest"]
    assert counts(backend) == before, "the local guest token was sent to the backend"
    assert echoed(reply.json(), "x-auth-user-id") == [sub]
    assert gateway.events("auth.session_cleared") == []


async def test_local_guest_key_is_not_a_user_key(
        make_gateway: MakeGateway, backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    """A token signed with the gateway's guest key but placed in the user cookie is sent to
    the backend like any user token (and rejected there)."""
    gateway = local_gateway(make_gateway, monkeypatch)
    now = int(time.time())
    forged = jwt.encode({"sub": "1", "typ": "access", "jti": "x", "iat": now, "exp": now + 600},
                        SECRET, algorithm="HS256")
    reply = await get(gateway, "/api/echo/private/x", cookie=f"userToken={forged}")
    assert reply.status_code == 401


async def test_local_mode_missing_key_check_and_serve_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text('[upstream]\nurl = "http://127.0.0.1:9"\n'
                      '[guest]\nenabled = true\nmode = "local"\n', encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in (SECRET_ENV, "GATEWAY_CONFIG")}
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)

    def run(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "gateway", *args, "--config", str(config)],
                              env={**env, **extra}, capture_output=True, text=True, timeout=30,
                              cwd=tmp_path)

    missing, short, good, serve = await asyncio.gather(
        asyncio.to_thread(run, "check"),
        asyncio.to_thread(run, "check", **{SECRET_ENV: "x" * 31}),
        asyncio.to_thread(run, "check", **{SECRET_ENV: SECRET}),
        asyncio.to_thread(run, "serve", "--port", "9"),
    )
    for result, state in ((missing, "is not set"), (short, "is shorter than 32 bytes"),
                          (serve, "is not set")):
        assert result.returncode == 2, result.stderr
        lines = result.stderr.splitlines()
        assert len(lines) == 1, lines
        assert lines[0].startswith("guest.secret_env: ")
        assert SECRET_ENV in lines[0] and state in lines[0]
    assert "x" * 31 not in short.stderr
    assert good.returncode == 0, good.stderr
    assert "guest: local mode" in good.stdout


# --------------------------------------------------------------------------
# both modes
# --------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["backend", "local"])
async def test_guest_token_never_satisfies_a_user_route(
        make_gateway: MakeGateway, backend: Backend, monkeypatch: pytest.MonkeyPatch,
        mode: str) -> None:
    gateway = guest_gateway(mode, make_gateway, monkeypatch)
    token = new_guest_token(await get(gateway, "/api/echo/a"))
    before = counts(backend)

    def check(reply: httpx.Response, status: int) -> None:
        assert reply.status_code == status, reply.text
        assert not cookie_value(reply, "guestToken")  # no guest token on a user route
        if status == 401:
            assert reply.headers["content-type"].startswith("application/json")
            assert reply.json()["error"] == "unauthenticated"

    # As the guest cookie: JSON client, then a browser navigation.
    check(await get(gateway, "/api/echo/private/x", cookie=f"guestToken={token}"), 401)
    assert gateway.events("auth.denied")[-1]["reason"] == "guest_token"
    async with gateway.client(timeout=10) as client:
        browser = await client.get("/api/echo/private/x?q=1",
                                   headers={**BROWSER, "cookie": f"guestToken={token}"})
    check(browser, 302)
    assert browser.headers["location"] == "/login?next=/api/echo/private/x%3Fq%3D1"
    # As a bearer token.
    check(await get(gateway, "/api/echo/private/x",
                          headers={"authorization": f"Bearer {token}"}), 401)
    # The default route is a user route too; anonymous there: refused, no guest issued.
    check(await get(gateway, "/api/items"), 401)
    check(await get(gateway, "/api/echo/private/y"), 401)
    assert counts(backend)["guest"] == before["guest"]
    assert len(gateway.events("auth.guest_issued")) == 1


@pytest.mark.parametrize("mode", ["backend", "local"])
async def test_cleared_session_becomes_a_guest(
        make_gateway: MakeGateway, backend: Backend, monkeypatch: pytest.MonkeyPatch,
        mode: str) -> None:
    gateway = guest_gateway(mode, make_gateway, monkeypatch)
    now = int(time.time())
    # An expired access token the backend's /auth/refresh will reject (wrong key).
    stale = jwt.encode({"sub": "1", "typ": "access", "jti": uuid.uuid4().hex,
                        "iat": now - 3600, "exp": now - 600}, WRONG_SECRET, algorithm="HS256")
    before = counts(backend)
    reply = await get(gateway, "/api/echo/a",
                      cookie=f"userToken={stale}; refreshToken=garbage-refresh")
    assert reply.status_code == 200, reply.text
    assert cookie_value(reply, "userToken") == ""
    assert cookie_value(reply, "refreshToken") == ""
    for name in ("userToken", "refreshToken"):
        attrs = attributes(set_cookie_lines(reply, name)[0])
        assert attrs["max-age"] == "0" and attrs["path"] == "/"
    token = new_guest_token(reply)
    sub = unverified(token)["sub"]
    assert sub.startswith("guest:")
    body = reply.json()
    assert echoed(body, "x-auth-token-type") == ["guest"]
    assert echoed(body, "x-auth-user-id") == [sub]
    expected_auth = [f"Bearer {token}"] if mode == "backend" else []
    assert echoed(body, "authorization") == expected_auth
    after = counts(backend)
    assert after["refresh"] == before["refresh"] + 1
    assert after["guest"] == before["guest"] + (1 if mode == "backend" else 0)
    assert [e["reason"] for e in gateway.events("auth.session_cleared")] == ["refresh_rejected"]
    assert gateway.events("auth.guest_issued")[0]["user_id"] == sub
    assert_no_raw_tokens(gateway, stale, token)


def dead_user_token() -> str:
    """An expired access token that the reference backend will refuse to refresh."""
    now = int(time.time())
    return jwt.encode({"sub": "1", "typ": "access", "jti": uuid.uuid4().hex,
                       "iat": now - 3600, "exp": now - 600}, WRONG_SECRET, algorithm="HS256")


@pytest.mark.parametrize("mode", ["backend", "local"])
async def test_dead_session_reuses_the_guest_cookie(
        make_gateway: MakeGateway, backend: Backend, monkeypatch: pytest.MonkeyPatch,
        mode: str) -> None:
    """A dead user token comes first in 3.1's order, but once it is known dead a valid guest
    cookie is still the visitor's: reused, never replaced on every request."""
    gateway = guest_gateway(mode, make_gateway, monkeypatch)
    guest = new_guest_token(await get(gateway, "/api/echo/first"))
    sub = unverified(guest)["sub"]
    stale = dead_user_token()
    before = counts(backend)
    replies = [await get(gateway, f"/api/echo/{i}", cookie=f"userToken={stale}; guestToken={guest}")
               for i in range(3)]
    after = counts(backend)
    for reply in replies:
        assert reply.status_code == 200, reply.text
        assert cookie_value(reply, "guestToken") is None, "guest token replaced"
        body = reply.json()
        assert echoed(body, "x-auth-user-id") == [sub]
        assert echoed(body, "x-auth-token-type") == ["guest"]
    assert cookie_value(replies[0], "userToken") == ""  # the rejected refresh cleared it
    assert after["guest"] == before["guest"]
    assert after["refresh"] == before["refresh"] + 1  # then the rejection is remembered
    assert len(gateway.events("auth.guest_issued")) == 1


async def test_dead_token_without_refresh_credential_reuses_the_guest_cookie(
        make_gateway: MakeGateway, backend: Backend) -> None:
    """``send = "refresh_body"`` and no refresh cookie: nothing to refresh with. Every request
    used to get a new guest token (and cost a backend guest call)."""
    gateway = make_gateway(BACKEND_MODE.replace(
        "[guest]", '[auth.refresh]\nsend = "refresh_body"\n\n[guest]'))
    guest = new_guest_token(await get(gateway, "/api/echo/first"))
    stale = dead_user_token()
    before = counts(backend)
    replies = [await get(gateway, f"/api/echo/{i}", cookie=f"userToken={stale}; guestToken={guest}")
               for i in range(4)]
    after = counts(backend)
    for reply in replies:
        assert reply.status_code == 200, reply.text
        assert cookie_value(reply, "guestToken") is None, "guest token replaced"
        assert echoed(reply.json(), "authorization") == [f"Bearer {guest}"]
    assert after["guest"] == before["guest"]
    assert after["refresh"] == before["refresh"]


async def test_guest_limit_answer_still_clears_a_dead_session(
        make_gateway: MakeGateway, backend: Backend) -> None:
    gateway = make_gateway(BACKEND_MODE.replace(
        'mode = "backend"', 'mode = "backend"\nper_client_per_minute = 1'))
    assert (await get(gateway, "/api/echo/first")).status_code == 200  # spends the allowance
    reply = await get(gateway, "/api/echo/a",
                      cookie=f"userToken={dead_user_token()}; refreshToken=garbage")
    assert reply.status_code == 429, reply.text
    assert cookie_value(reply, "userToken") == ""
    assert cookie_value(reply, "refreshToken") == ""
    assert [e["reason"] for e in gateway.events("auth.session_cleared")] == ["refresh_rejected"]


@pytest.mark.parametrize("mode", ["backend", "local"])
async def test_login_removes_the_guest_cookie(
        make_gateway: MakeGateway, backend: Backend, monkeypatch: pytest.MonkeyPatch,
        mode: str) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    base = BACKEND_MODE if mode == "backend" else LOCAL_MODE.format(ttl_s=600)
    gateway = make_gateway(base.replace("[guest]", '[auth.login]\npath = "/auth/login"\n\n[guest]'))
    guest = new_guest_token(await get(gateway, "/api/echo/a"))
    async with gateway.client(timeout=10) as client:
        reply = await client.post(
            "/auth/login", json={"email": "demo@example.com", "password": "demo-password"},
            headers={"cookie": f"guestToken={guest}"})
    assert reply.status_code == 200, reply.text
    assert cookie_value(reply, "guestToken") == ""
    attrs = attributes(set_cookie_lines(reply, "guestToken")[0])
    assert attrs["max-age"] == "0" and attrs["path"] == "/"
    access = cookie_value(reply, "userToken")
    assert access and cookie_value(reply, "refreshToken")
    assert "accessToken" not in reply.json()["data"]
    assert gateway.events("auth.login")

    # The new session, even with the stale guest cookie still around, is the user.
    before = counts(backend)
    again = await get(gateway, "/api/echo/b", cookie=f"guestToken={guest}; userToken={access}")
    assert again.status_code == 200
    assert echoed(again.json(), "x-auth-token-type") == ["user"]
    assert echoed(again.json(), "x-auth-user-id") == ["1"]
    assert cookie_value(again, "guestToken") is None
    assert counts(backend)["guest"] == before["guest"]
    assert_no_raw_tokens(gateway, guest, access)


# --------------------------------------------------------------------------
# backend mode: no amplification
# --------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k == name]
        return values[-1] if values else None

    def cookie(self, name: str) -> str | None:
        lines = [v for k, v in self.headers
                 if k == "set-cookie" and v.partition("=")[0].strip() == name]
        return lines[0].partition("=")[2].split(";")[0] if lines else None


async def _read_reply(reader: asyncio.StreamReader) -> Reply:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    status = int(head[0].split()[1])
    headers = []
    for line in head[1:]:
        if line:
            name, _, value = line.partition(":")
            headers.append((name.strip().lower(), value.strip()))
    names = dict(headers)
    if names.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            body += chunk[:-2]
    else:
        body = await reader.readexactly(int(names.get("content-length", "0")))
    return Reply(status, headers, body)


async def _flood(gateway: RunningGateway, total: int, concurrency: int,
                 spoof: bool = False) -> list[Reply]:
    """``total`` anonymous GETs over ``concurrency`` keep-alive connections from 127.0.0.1
    (with ``spoof``, each from its own ``X-Forwarded-For`` address, as seen behind a trusted
    load balancer). Written by hand: an HTTP client library costs ~20x more CPU than the
    gateway does here."""
    port = gateway.server.port
    paths = iter(range(total))
    replies: list[Reply] = []

    async def connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for i in paths:
                forwarded = f"x-forwarded-for: 10.{i >> 16}.{(i >> 8) & 255}.{i & 255}\r\n" \
                    if spoof else ""
                writer.write(f"GET /api/echo/flood/{i} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n"
                             f"accept: application/json\r\nx-requested-with: XMLHttpRequest"
                             f"\r\n{forwarded}\r\n".encode("ascii"))
                await writer.drain()
                reply = await _read_reply(reader)
                replies.append(reply)
                if (reply.header("connection") or "").lower() == "close":
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
        finally:
            writer.close()

    await asyncio.wait_for(asyncio.gather(*(connection() for _ in range(concurrency))), 20)
    assert len(replies) == total
    return replies


def _check_limited(reply: Reply) -> None:
    assert (reply.header("content-type") or "").startswith("application/json")
    assert json.loads(reply.body)["error"] == "too_many_requests"
    assert int(reply.header("retry-after") or "0") >= 1
    assert reply.cookie("guestToken") is None


async def test_flood_of_anonymous_requests_is_bounded_per_client(
        make_gateway: MakeGateway, backend: Backend, capsys: pytest.CaptureFixture[str]
        ) -> None:
    gateway = make_gateway(BACKEND_MODE.replace(
        'mode = "backend"', 'mode = "backend"\nmax_concurrent = 4\nper_client_per_minute = 20'))
    before = counts(backend)
    started = time.monotonic()
    replies = await _flood(gateway, total=1000, concurrency=50)
    elapsed = time.monotonic() - started
    statuses = Counter(r.status for r in replies)
    guest_calls = counts(backend)["guest"] - before["guest"]
    with capsys.disabled():
        print(f"\n[guest flood] 1000 requests, concurrency 50, max_concurrent=4, "
              f"per_client_per_minute=20: statuses={dict(statuses)} "
              f"backend guest calls={guest_calls} in {elapsed:.2f}s")
    assert set(statuses) <= {200, 429}, statuses
    assert guest_calls <= 20
    assert statuses[200] == guest_calls >= 1
    tokens = []
    for reply in replies:
        if reply.status == 429:
            _check_limited(reply)
        else:
            token = reply.cookie("guestToken")
            assert token
            tokens.append(token)
    assert len(set(tokens)) == len(tokens)
    denied = [e for e in gateway.events("auth.denied") if e["reason"] == "guest_rate_limited"]
    assert len(denied) == statuses[429]
    assert len(gateway.events("auth.guest_issued")) == statuses[200]
    assert_no_raw_tokens(gateway, *tokens)


async def test_flood_from_many_addresses_is_bounded_overall(
        make_gateway: MakeGateway, backend: Backend, capsys: pytest.CaptureFixture[str]
        ) -> None:
    """Behind a trusted load balancer every request can come from a new address: the
    per-client bound never triggers, the overall ``per_minute`` does."""
    gateway = make_gateway(BACKEND_MODE.replace(
        'mode = "backend"', 'mode = "backend"\nper_client_per_minute = 30\nper_minute = 50')
        + '\n[server]\ntrusted_proxies = ["127.0.0.1/32"]\n')
    before = counts(backend)
    replies = await _flood(gateway, total=1000, concurrency=8, spoof=True)
    statuses = Counter(r.status for r in replies)
    guest_calls = counts(backend)["guest"] - before["guest"]
    with capsys.disabled():
        print(f"\n[guest flood, 1000 addresses] concurrency 8, per_minute=50: "
              f"statuses={dict(statuses)} backend guest calls={guest_calls}")
    assert guest_calls == statuses[200] == 50
    assert statuses[429] == 950
    for reply in replies:
        if reply.status == 429:
            _check_limited(reply)
    clients = {e["client_ip"] for e in gateway.events("auth.guest_issued")}
    assert len(clients) == 50  # each from its own address: the per-client bound never hit


async def test_slow_guest_endpoint_bounds_calls_in_flight(
        make_gateway: MakeGateway, backend: Backend, capsys: pytest.CaptureFixture[str]
        ) -> None:
    gateway = make_gateway(BACKEND_MODE.replace(
        'mode = "backend"',
        'mode = "backend"\nmax_concurrent = 4\nper_client_per_minute = 100000'))
    backend.fault("guest", 0, count=-1, delay_s=0.5)
    try:
        before = counts(backend)
        started = time.monotonic()
        replies = await _flood(gateway, total=50, concurrency=50)
        elapsed = time.monotonic() - started
        statuses = Counter(r.status for r in replies)
        guest_calls = counts(backend)["guest"] - before["guest"]
        with capsys.disabled():
            print(f"\n[guest slow endpoint] 50 concurrent, guest delay 0.5s, max_concurrent=4: "
                  f"statuses={dict(statuses)} backend guest calls={guest_calls} "
                  f"in {elapsed:.2f}s")
        assert set(statuses) <= {200, 429}, statuses
        assert 1 <= guest_calls <= 4
        assert statuses[200] == guest_calls
        for reply in replies:
            if reply.status == 429:
                _check_limited(reply)
                assert reply.header("retry-after") == "1"
        # Once those finished, the slots are free again.
        later = await get(gateway, "/api/echo/later")
        assert later.status_code == 200
        new_guest_token(later)
    finally:
        backend.reset()
