"""Guest tokens issued on real sockets (docs/behaviour.md#guests, docs/audit.md), in both modes:
``backend`` (the reference backend's ``POST /auth/guest`` mints the token, the gateway forwards
it as ``Authorization``) and ``local`` (the gateway signs an HS256 JWT itself, never calls the
backend for it, and tells the upstream of the guest only through ``x-auth-token-type`` /
``x-auth-user-id``). Covers issue and reuse, expiry, forged tokens replaced, the presets'
guest section and the startup check of the signing key.

Cookies are always sent by hand (``cookie`` header): the gateway's cookies are ``Secure`` and
the tests speak plain HTTP, so a client cookie jar would not send them anyway.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import jwt
import pytest

from gateway.demo import BackendOptions
from tests.conftest import Backend, MakeGateway, StartGateway
from tests.helpers.guest import (
    BACKEND_MODE,
    FORGERS,
    SECRET,
    SECRET_ENV,
    WRONG_SECRET,
    counts,
    forged_sub,
    get,
    local_gateway,
    new_guest_token,
    unverified,
)
from tests.helpers.replies import (
    assert_no_raw_tokens,
    attributes,
    decode_user,
    echoed,
    fp,
    set_cookie_value,
    set_cookies,
)

ROOT = Path(__file__).resolve().parents[2]


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
    line = set_cookies(reply)["guestToken"]
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
        assert set_cookie_value(reply, "guestToken") is None  # no new token
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
        assert set_cookie_value(reply, "guestToken") is None
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
    assert attributes(set_cookies(reply)["guestToken"])["max-age"] == "3600"
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
        assert set_cookie_value(again, "guestToken") is None
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
        assert set_cookie_value(reply, "guestToken") is None
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
    assert set_cookie_value(refused, "guestToken") is None


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
    assert again.status_code == 200 and set_cookie_value(again, "guestToken") is None
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
