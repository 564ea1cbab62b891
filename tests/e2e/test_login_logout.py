"""Login capture and logout on real sockets (docs/behaviour.md#login-and-logout,
docs/audit.md): the gateway, configured
from the bundled presets, in front of the reference backend."""

from __future__ import annotations

import functools
import gzip
import json
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.conftest import Backend, MakeGateway, RunningGateway, StartGateway
from tests.helpers.replies import (
    ACCESS,
    GUEST,
    REFRESH,
    assert_cleared,
    assert_no_raw_tokens,
    attributes,
    cookie_header,
    cookie_value,
    cookieless_client,
    fp,
    set_cookies,
    upstream_saw,
)
from tests.servers import fixed_reply_app, serving

DEMO = {"email": "demo@example.com", "password": "demo-password"}
WRONG = {"email": "demo@example.com", "password": "not-the-password"}


# -- login capture -------------------------------------------------------------------------------


async def test_login_sets_cookies_and_strips_tokens(start: StartGateway,
                                                    backend: Backend) -> None:
    gw = start("next-api-layer")
    async with cookieless_client(gw.url) as c:
        login = await c.post("/auth/login", json=DEMO,
                             headers=cookie_header(guestToken=backend.token(1, "guest")))
        assert login.status_code == 200, login.text
        cookies = set_cookies(login)
        assert set(cookies) == {ACCESS, REFRESH, GUEST}
        access, refresh = cookie_value(cookies[ACCESS]), cookie_value(cookies[REFRESH])
        assert access and refresh and access != refresh
        for name in (ACCESS, REFRESH):
            attrs = attributes(cookies[name])
            assert "httponly" in attrs
            assert attrs["path"] == "/"
            assert attrs["samesite"] == "Lax"
            assert attrs["max-age"] == "604800"
            assert "secure" not in attrs  # cookies.secure = false in these tests
        assert_cleared(login, GUEST)
        body = login.json()
        assert body["success"] is True
        assert body["data"]["user"]["id"] == 1  # the rest of the body is kept
        assert "accessToken" not in body["data"] and "refreshToken" not in body["data"]
        assert access not in login.text and refresh not in login.text
        assert int(login.headers["content-length"]) == len(login.content)

        follow = await c.get("/api/echo", headers=cookie_header(userToken=access,
                                                                refreshToken=refresh))
    assert follow.status_code == 200, follow.text
    assert upstream_saw(follow)["authorization"] == [f"Bearer {access}"]
    assert upstream_saw(follow)["x-auth-user-id"] == ["1"]
    assert backend.calls("login") == 1
    events = gw.events("auth.login")
    assert len(events) == 1 and events[0]["token_fp"] == fp(access)
    assert_no_raw_tokens(gw, access, refresh, DEMO["password"])


async def test_login_keeps_tokens_in_body_without_strip(start: StartGateway) -> None:
    gw = start("next-api-layer", {"auth": {"login": {"strip_tokens": False}}})
    async with cookieless_client(gw.url) as c:
        login = await c.post("/auth/login", json=DEMO)
    assert login.status_code == 200, login.text
    data = login.json()["data"]
    cookies = set_cookies(login)
    assert data["accessToken"] == cookie_value(cookies[ACCESS])
    assert data["refreshToken"] == cookie_value(cookies[REFRESH])
    assert data["user"]["email"] == DEMO["email"]


async def test_failed_login_passes_through_unchanged(start: StartGateway,
                                                     backend: Backend) -> None:
    gw = start("next-api-layer")
    async with cookieless_client(gw.url) as c:
        direct = httpx.post(backend.url + "/auth/login", json=WRONG)
        login = await c.post("/auth/login", json=WRONG,
                             headers=cookie_header(guestToken=backend.token(1, "guest")))
    assert login.status_code == 401
    assert login.content == direct.content
    assert login.json() == {"success": False, "error": "invalid credentials"}
    assert login.headers.get_list("set-cookie") == []
    assert not gw.events("auth.login")
    assert_no_raw_tokens(gw, WRONG["password"])


async def test_simplejwt_create_is_captured(start: StartGateway, backend: Backend) -> None:
    gw = start("django-simplejwt")
    async with cookieless_client(gw.url) as c:
        login = await c.post("/auth/jwt/create/", json=DEMO)
        assert login.status_code == 200, login.text
        cookies = set_cookies(login)
        assert set(cookies) == {ACCESS, REFRESH, GUEST}
        assert_cleared(login, GUEST)
        assert login.json() == {}  # {access, refresh}, both stripped
        access, refresh = cookie_value(cookies[ACCESS]), cookie_value(cookies[REFRESH])
        assert attributes(cookies[ACCESS])["max-age"] == "86400"  # the preset's lifetime

        private = await c.get("/api/django/private/",
                              headers=cookie_header(userToken=access, refreshToken=refresh))
        assert private.status_code == 200, private.text
        assert private.json() == {"private": True, "user_id": 1}
        echo = await c.get("/api/echo",
                           headers=cookie_header(userToken=access, refreshToken=refresh))
        assert upstream_saw(echo)["authorization"] == [f"JWT {access}"]

        bad = await c.post("/auth/jwt/create/", json=WRONG)
    assert bad.status_code == 401
    assert bad.headers.get_list("set-cookie") == []
    assert bad.json() == {"detail": "No active account found with the given credentials"}
    assert backend.calls("jwt_create") == 2
    assert len(gw.events("auth.login")) == 1
    assert_no_raw_tokens(gw, access, refresh, DEMO["password"])


async def test_express_login_keeps_body_and_relays_refresh_cookie(
        start: StartGateway, backend: Backend) -> None:
    gw = start("express")
    async with cookieless_client(gw.url) as c:
        login = await c.post("/api/auth/login", json=DEMO)
        assert login.status_code == 200, login.text
        cookies = set_cookies(login)
        body = login.json()
        assert body["user"]["id"] == 1
        access = body["accessToken"]  # strip_tokens = false: the SPA reads it
        assert cookie_value(cookies[ACCESS]) == access
        refresh = cookie_value(cookies[REFRESH])  # the backend's own Set-Cookie, relayed
        assert "HttpOnly" in cookies[REFRESH]
        assert_cleared(login, GUEST)

        me = await c.get("/api/echo", headers={"authorization": f"Bearer {access}",
                                               **cookie_header(refreshToken=refresh)})
    assert me.status_code == 200, me.text
    assert upstream_saw(me)["authorization"] == [f"Bearer {access}"]
    assert backend.calls("express_login") == 1
    assert_no_raw_tokens(gw, access, refresh, DEMO["password"])


# -- logout --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Flavour:
    preset: str
    login_path: str
    logout_path: str
    revoke_key: str  # the backend's stats key of the revoke endpoint
    validate_key: str
    refresh_key: str

    def __str__(self) -> str:
        return self.preset


NEXT = Flavour("next-api-layer", "/auth/login", "/auth/logout", "logout", "me", "refresh")
DJANGO = Flavour("django-simplejwt", "/auth/jwt/create/", "/auth/logout/", "jwt_blacklist",
                 "users_me", "jwt_refresh")
EXPRESS = Flavour("express", "/api/auth/login", "/api/auth/logout", "express_logout",
                  "express_me", "refresh_token")


async def login_through(c: httpx.AsyncClient, flavour: Flavour) -> tuple[str, str]:
    """Log in through the gateway; the access and refresh cookies it answered with."""
    reply = await c.post(flavour.login_path, json=DEMO)
    assert reply.status_code == 200, reply.text
    cookies = set_cookies(reply)
    return cookie_value(cookies[ACCESS]), cookie_value(cookies[REFRESH])


@pytest.mark.parametrize("flavour", [NEXT, DJANGO, EXPRESS], ids=str)
async def test_logout_revokes_clears_and_forgets(start: StartGateway, backend: Backend,
                                                 flavour: Flavour) -> None:
    gw = start(flavour.preset, {"auth": {"cache_ttl_s": 60}})
    async with cookieless_client(gw.url) as c:
        access, refresh = await login_through(c, flavour)
        held = cookie_header(userToken=access, refreshToken=refresh)
        for _ in range(2):  # validated once, then answered from the cache
            ok = await c.get("/api/echo", headers=held)
            assert ok.status_code == 200, ok.text
        assert backend.calls(flavour.validate_key) == 1

        out = await c.post(flavour.logout_path, headers=held)
        assert out.status_code == 204, out.text
        assert out.content == b""
        assert_cleared(out, ACCESS, REFRESH, GUEST)
        assert backend.calls(flavour.revoke_key) == 1

        # The cache forgot the token: the next request asks the backend again.
        after = await c.get("/api/echo", headers=held)
        assert backend.calls(flavour.validate_key) == 2
        if flavour is NEXT:
            # The access token was revoked, and it is also the refresh credential here.
            dead = after
        else:
            # SimpleJWT and Express revoke the refresh token only (an access token stays
            # valid at the backend until it expires): it must not revive a session.
            expired = cookie_header(userToken=backend.token(1, "access", -60),
                                    refreshToken=refresh)
            dead = await c.get("/api/echo", headers=expired)
    assert dead.status_code == 401, dead.text
    assert_cleared(dead, ACCESS, REFRESH)
    assert backend.calls(flavour.refresh_key) == 1
    assert backend.stats()["refresh_ok"] == 0
    logout = gw.events("auth.logout")
    assert len(logout) == 1 and logout[0]["revoked"] == "ok"
    assert logout[0]["token_fp"] == fp(access)
    assert "rejected" in [e["reason"] for e in gw.events("auth.refresh_failed")]
    assert not gw.events("auth.backend_unavailable")
    assert_no_raw_tokens(gw, access, refresh, DEMO["password"])


async def test_browser_logout_redirects_home(start: StartGateway, backend: Backend) -> None:
    gw = start("next-api-layer")
    async with cookieless_client(gw.url) as c:
        access, refresh = await login_through(c, NEXT)
        out = await c.post("/auth/logout", headers={
            "accept": "text/html,application/xhtml+xml,*/*;q=0.8",
            **cookie_header(userToken=access, refreshToken=refresh)})
    assert out.status_code == 302, out.text
    assert out.headers["location"] == "/"
    assert_cleared(out, ACCESS, REFRESH, GUEST)
    assert backend.calls("logout") == 1


async def test_logout_without_session_still_clears(start: StartGateway,
                                                   backend: Backend) -> None:
    gw = start("next-api-layer")
    async with cookieless_client(gw.url) as c:
        out = await c.post("/auth/logout")
    assert out.status_code == 204
    assert_cleared(out, ACCESS, REFRESH, GUEST)
    assert backend.calls("logout") == 0
    assert [e["revoked"] for e in gw.events("auth.logout")] == ["skipped"]


async def test_failing_revoke_still_logs_out(start: StartGateway, backend: Backend) -> None:
    gw = start("next-api-layer")
    retries = gw.app.settings.auth.retries
    async with cookieless_client(gw.url) as c:
        access, refresh = await login_through(c, NEXT)
        backend.fault("logout", 503, count=-1)
        out = await c.post("/auth/logout",
                           headers=cookie_header(userToken=access, refreshToken=refresh))
    assert out.status_code == 204, out.text
    assert_cleared(out, ACCESS, REFRESH, GUEST)
    assert backend.calls("logout") == 1 + retries
    logout = gw.events("auth.logout")
    assert len(logout) == 1 and logout[0]["revoked"] == "failed"
    unavailable = gw.events("auth.backend_unavailable")
    assert len(unavailable) == 1 and unavailable[0]["path"] == "/auth/logout"
    assert_no_raw_tokens(gw, access, refresh, DEMO["password"])


@pytest.mark.parametrize("flavour", [NEXT, DJANGO], ids=str)
async def test_logout_ends_the_rotation_grace_of_the_session(
        start: StartGateway, backend: Backend, flavour: Flavour) -> None:
    """A refresh leaves "old credential -> new tokens" in the grace cache. Logging out with the
    new tokens must forget that too: otherwise, for grace_s after the logout, whoever presents
    the pre-rotation credential is forwarded as the user (without any backend check) and gets
    the revoked session's tokens set as cookies again."""
    gw = start(flavour.preset)
    old_access = backend.token(1, "access", -60)
    old_refresh = backend.token(1, "refresh") if flavour is DJANGO else None
    stale_tab = cookie_header(userToken=old_access, refreshToken=old_refresh)
    async with cookieless_client(gw.url) as c:
        first = await c.get("/api/echo", headers=stale_tab)
        assert first.status_code == 200, first.text
        cookies = set_cookies(first)
        new_access, new_refresh = cookie_value(cookies[ACCESS]), cookie_value(cookies[REFRESH])
        out = await c.post(flavour.logout_path,
                           headers=cookie_header(userToken=new_access, refreshToken=new_refresh))
        assert out.status_code == 204
        assert backend.calls(flavour.revoke_key) == 1

        stale = await c.get("/api/echo", headers=stale_tab)  # well within grace_s (30 s)
    assert stale.status_code == 401, (
        f"logged-out session revived through the rotation grace: {stale.status_code}, "
        f"upstream saw user {upstream_saw(stale).get('x-auth-user-id')}")
    assert_cleared(stale, ACCESS, REFRESH)


# -- login capture with backends that compress or stream their replies ---------------------------

LOGIN_REPLY = json.dumps({"success": True, "data": {
    "accessToken": "header.payload.signature", "refreshToken": "rheader.rpayload.rsignature",
    "user": {"id": 1}}}).encode()


def _raw_deflate(data: bytes) -> bytes:
    """Deflate without the zlib wrapper, as some servers send ``Content-Encoding: deflate``."""
    compressor = zlib.compressobj(wbits=-15)
    return compressor.compress(data) + compressor.flush()


def _gzip(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)  # the same bytes every time


def _bomb() -> bytes:
    """JSON carrying the tokens, 64 MiB once decoded but some 64 KiB gzipped: a zip bomb."""
    return _gzip(LOGIN_REPLY[:-1] + b" " * (64 * 1024 * 1024) + b"}")


# Whatever it is asked, the upstream sends these (body, content-encoding) on these paths.
_ENCODED: dict[str, tuple[Callable[[], bytes], bytes]] = {
    "/always-gzip/login": (lambda: _gzip(LOGIN_REPLY), b"gzip"),
    "/always-deflate/login": (lambda: zlib.compress(LOGIN_REPLY), b"deflate"),
    "/raw-deflate/login": (lambda: _raw_deflate(LOGIN_REPLY), b"deflate"),
    "/two-members/login": (lambda: _gzip(LOGIN_REPLY[:30]) + _gzip(LOGIN_REPLY[30:]),
                           b"gzip"),
    "/bomb/login": (_bomb, b"gzip"),
    "/truncated/login": (lambda: _gzip(LOGIN_REPLY)[:-8], b"gzip"),
    "/trailing-junk/login": (lambda: zlib.compress(LOGIN_REPLY) + b"junk", b"deflate"),
}


@functools.cache
def upstream_body(path: str) -> bytes:
    """The exact bytes ``_login_upstream`` sends on one of the ``_ENCODED`` paths."""
    return _ENCODED[path][0]()


async def _login_upstream(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An upstream whose login reply is gzipped when the client accepts it (Django's
    GZipMiddleware compresses anything over 200 bytes; Express ``compression()`` likewise),
    streamed without Content-Length (``/chunked/login``), compressed whatever it was asked
    (the ``_ENCODED`` paths), or JSON labelled ``text/plain`` (``/text/login``)."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    while (await receive()).get("more_body"):
        pass
    accepts = dict(scope["headers"]).get(b"accept-encoding", b"")
    json_type = (b"content-type", b"application/json")
    path = scope["path"]
    if path == "/chunked/login":
        await send({"type": "http.response.start", "status": 200, "headers": [json_type]})
        await send({"type": "http.response.body", "body": LOGIN_REPLY[:25], "more_body": True})
        await send({"type": "http.response.body", "body": LOGIN_REPLY[25:]})
        return
    body, headers = LOGIN_REPLY, [json_type]
    if path == "/text/login":
        headers = [(b"content-type", b"text/plain; charset=utf-8")]
    if path in _ENCODED:
        body = upstream_body(path)
        headers.append((b"content-encoding", _ENCODED[path][1]))
    elif b"gzip" in accepts:
        body = _gzip(LOGIN_REPLY)
        headers.append((b"content-encoding", b"gzip"))
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@pytest.mark.parametrize(("path", "accept_encoding"), [
    ("/auth/login", "identity"),
    ("/auth/login", "gzip, deflate, br"),  # what every browser sends
    ("/chunked/login", "identity"),
    ("/always-gzip/login", "identity"),  # the gateway asks for identity; not all obey
    ("/always-deflate/login", "identity"),
    ("/raw-deflate/login", "identity"),
    ("/two-members/login", "identity"),
    ("/text/login", "identity"),
], ids=["plain", "gzip", "chunked", "gzip-anyway", "deflate-anyway", "raw-deflate",
        "gzip-members", "text-plain"])
async def test_login_capture_whatever_the_reply_encoding(
        make_gateway: MakeGateway, path: str, accept_encoding: str) -> None:
    """A 2xx JSON reply carrying the tokens puts them in cookies and strips them
    (docs/behaviour.md#login-and-logout), however the upstream encoded or labelled it: a reply
    passed through would expose the raw tokens to page scripts."""
    with serving(_login_upstream) as upstream:
        gw = make_gateway(f'[auth.login]\npath = "{path}"\n[cookies]\nsecure = false\n',
                          upstream=upstream.url)
        async with httpx.AsyncClient(base_url=gw.url, timeout=20) as c, \
                c.stream("POST", path, json=DEMO,
                         headers={"accept-encoding": accept_encoding}) as reply:
            raw = b"".join([chunk async for chunk in reply.aiter_raw()])
    assert reply.status_code == 200
    cookies = set_cookies(reply)
    assert ACCESS in cookies and REFRESH in cookies, reply.headers.get_list("set-cookie")
    assert cookie_value(cookies[ACCESS]) == "header.payload.signature"
    # What the browser gets is plain JSON, its length announced right, with no tokens in it.
    assert "content-encoding" not in reply.headers
    assert reply.headers.get_list("content-length") == [str(len(raw))]
    assert json.loads(raw) == {"success": True, "data": {"user": {"id": 1}}}


@pytest.mark.parametrize("path", ["/bomb/login", "/truncated/login", "/trailing-junk/login"])
async def test_login_reply_too_big_or_undecodable_passes_through(
        make_gateway: MakeGateway, path: str) -> None:
    """A compressed reply that decodes to more than the 1 MiB rewrite limit (read no further
    than that: a zip bomb costs nothing) or does not decode cleanly is the upstream's own,
    byte for byte: the gateway neither guesses at it nor spends unbounded memory on it."""
    with serving(_login_upstream) as upstream:
        gw = make_gateway(f'[auth.login]\npath = "{path}"\n[cookies]\nsecure = false\n',
                          upstream=upstream.url)
        async with httpx.AsyncClient(base_url=gw.url, timeout=20) as c, \
                c.stream("POST", path, json=DEMO) as reply:
            raw = b"".join([chunk async for chunk in reply.aiter_raw()])
    assert reply.status_code == 200
    assert reply.headers.get_list("set-cookie") == []
    assert reply.headers["content-encoding"] == _ENCODED[path][1].decode()
    assert raw == upstream_body(path)
    assert gw.events("auth.login") == []


async def _login_answered_with(make_gateway: MakeGateway, body: bytes
                               ) -> tuple[RunningGateway, httpx.Response]:
    """A login through a gateway whose upstream answers every request with ``body``."""
    with serving(fixed_reply_app(body)) as upstream:
        gw = make_gateway('[auth.login]\npath = "/auth/login"\n[cookies]\nsecure = false\n',
                          upstream=upstream.url)
        async with cookieless_client(gw.url) as c:
            return gw, await c.post("/auth/login", json=DEMO)


@pytest.mark.parametrize("access", [
    "aaa; Domain=evil.test", "aaa, other=1", "t\u00f6ken", "a b", "x" * 9000,
], ids=["attribute-injection", "comma", "non-ascii", "space", "too-long"])
async def test_login_reply_with_an_unusable_token_sets_no_cookie(
        make_gateway: MakeGateway, access: str) -> None:
    """A token value goes into Set-Cookie as is: one with ';' would add attributes (a
    Domain of the attacker's choosing), one with non-ASCII used to be a 500."""
    body = json.dumps({"data": {"accessToken": access, "refreshToken": "r.e.f"}}).encode()
    gw, reply = await _login_answered_with(make_gateway, body)
    assert reply.status_code == 200
    assert reply.headers.get_list("set-cookie") == []
    assert [(e["outcome"], e["reason"]) for e in gw.events("auth.login")] == [
        ("refused", "unusable_token")]


async def test_login_reply_without_tokens_passes_through_byte_for_byte(
        make_gateway: MakeGateway) -> None:
    """A compressed login reply that carries no tokens (a 401, say) is the upstream's own."""
    with serving(_login_upstream) as upstream:
        gw = make_gateway('[auth.login]\npath = "/always-gzip/login"\naccess_path = "nope"\n'
                          '[cookies]\nsecure = false\n', upstream=upstream.url)
        async with httpx.AsyncClient(base_url=gw.url) as c, \
                c.stream("POST", "/always-gzip/login", json=DEMO) as reply:
            raw = b"".join([chunk async for chunk in reply.aiter_raw()])
    assert reply.headers["content-encoding"] == "gzip"
    assert gzip.decompress(raw) == LOGIN_REPLY
    assert reply.headers.get_list("set-cookie") == []


async def test_login_reply_nested_too_deep_to_parse_passes_through(
        make_gateway: MakeGateway) -> None:
    """A 2xx login reply nested deeper than the JSON parser goes (json.loads raises
    RecursionError, not ValueError) is no login reply: passed on as it came, not a 500."""
    body = b"[" * 100_000 + b"]" * 100_000
    _, reply = await _login_answered_with(make_gateway, body)
    assert reply.status_code == 200
    assert reply.content == body
    assert reply.headers.get_list("set-cookie") == []
