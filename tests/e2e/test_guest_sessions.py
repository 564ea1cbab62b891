"""Guests and user sessions on real sockets (docs/behaviour.md#routes, docs/behaviour.md#guests),
in both guest modes: a guest token never satisfies a ``user`` route, a cleared or dead session
becomes a guest (reusing the guest cookie it has), and login removes the guest cookie.

Cookies are sent by hand (``cookie`` header), for the reason given in test_guest.py.
"""

from __future__ import annotations

import time
import uuid

import httpx
import jwt
import pytest

from tests.conftest import Backend, MakeGateway
from tests.helpers.guest import (
    BACKEND_MODE,
    LOCAL_MODE,
    SECRET,
    SECRET_ENV,
    WRONG_SECRET,
    counts,
    get,
    guest_gateway,
    new_guest_token,
    unverified,
)
from tests.helpers.replies import (
    BROWSER,
    assert_no_raw_tokens,
    attributes,
    echoed,
    set_cookie_value,
    set_cookies,
)

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
        assert not set_cookie_value(reply, "guestToken")  # no guest token on a user route
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
    assert set_cookie_value(reply, "userToken") == ""
    assert set_cookie_value(reply, "refreshToken") == ""
    for name in ("userToken", "refreshToken"):
        attrs = attributes(set_cookies(reply)[name])
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
        assert set_cookie_value(reply, "guestToken") is None, "guest token replaced"
        body = reply.json()
        assert echoed(body, "x-auth-user-id") == [sub]
        assert echoed(body, "x-auth-token-type") == ["guest"]
    assert set_cookie_value(replies[0], "userToken") == ""  # the rejected refresh cleared it
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
        assert set_cookie_value(reply, "guestToken") is None, "guest token replaced"
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
    assert set_cookie_value(reply, "userToken") == ""
    assert set_cookie_value(reply, "refreshToken") == ""
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
    assert set_cookie_value(reply, "guestToken") == ""
    attrs = attributes(set_cookies(reply)["guestToken"])
    assert attrs["max-age"] == "0" and attrs["path"] == "/"
    access = set_cookie_value(reply, "userToken")
    assert access and set_cookie_value(reply, "refreshToken")
    assert "accessToken" not in reply.json()["data"]
    assert gateway.events("auth.login")

    # The new session, even with the stale guest cookie still around, is the user.
    before = counts(backend)
    again = await get(gateway, "/api/echo/b", cookie=f"guestToken={guest}; userToken={access}")
    assert again.status_code == 200
    assert echoed(again.json(), "x-auth-token-type") == ["user"]
    assert echoed(again.json(), "x-auth-user-id") == ["1"]
    assert set_cookie_value(again, "guestToken") is None
    assert counts(backend)["guest"] == before["guest"]
    assert_no_raw_tokens(gateway, guest, access)
