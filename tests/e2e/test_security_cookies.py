"""The gateway's own cookies stay between the browser and the gateway (gateway/owncookies.py),
and preflight-shaped requests carry no credential past it (gateway/cors.py), on real sockets.

The demo backend's echo endpoint answers with every request header it received: what an app
that echoes headers would hand to page scripts.
"""

from __future__ import annotations

import pytest

from gateway.cors import is_preflight
from tests.conftest import Backend, MakeGateway
from tests.helpers.raw_http import send
from tests.helpers.replies import upstream_saw
from tests.helpers.security import OPEN_AND_USER_ROUTES, echoed_cookie_names

ROUTES = """
[cookies]
secure = false
""" + OPEN_AND_USER_ROUTES
REFRESH = "refresh-token-value-0123456789"


def test_the_app_never_sees_the_refresh_or_access_cookie(make_gateway: MakeGateway,
                                                         backend: Backend) -> None:
    gateway = make_gateway(ROUTES)
    token, guest = backend.token(1), backend.token("guest:g", typ="guest")
    for path in ("/api/echo/x", "/api/echo/open/x"):
        reply = send(gateway.url, path, [
            ("cookie", f"theme=dark; userToken={token}; refreshToken={REFRESH}"),
            ("cookie", f"guestToken={guest}; lang=en")])
        assert reply.status == 200, reply.body
        seen = upstream_saw(reply)
        assert seen["cookie"] == ["theme=dark", "lang=en"]
        assert seen["authorization"] == [f"Bearer {token}"]
        assert seen["x-auth-user-id"] == ["1"]
        assert REFRESH not in reply.body.decode()
        assert guest not in reply.body.decode()
    # Only the gateway's cookies: the Cookie header goes when nothing else is left.
    reply = send(gateway.url, "/api/echo/x", [("cookie", f"userToken={token}")])
    assert "cookie" not in upstream_saw(reply)


def test_forward_access_keeps_the_valid_access_cookie_only(make_gateway: MakeGateway,
                                                           backend: Backend) -> None:
    gateway = make_gateway(ROUTES.replace("secure = false", "secure = false\n"
                                          "forward_access = true"))
    token = backend.token(1)
    reply = send(gateway.url, "/api/echo/x",
                 [("cookie", f"a=1; userToken={token}; refreshToken={REFRESH}")])
    assert echoed_cookie_names(reply) == ["a", "userToken"]
    assert upstream_saw(reply)["cookie"] == [f"a=1; userToken={token}"]
    # A dead access token is not passed on, in a cookie any more than in Authorization.
    reply = send(gateway.url, "/api/echo/open/x", [("cookie", f"a=1; userToken={token}x")])
    assert echoed_cookie_names(reply) == ["a"]


def test_the_backends_own_auth_paths_keep_the_refresh_cookie(make_gateway: MakeGateway,
                                                             backend: Backend) -> None:
    """An SPA that still calls its refresh endpoint itself must keep working. The upstream
    is the echo endpoint (base path /api/echo); the auth endpoints are the backend's."""
    gateway = make_gateway(f"""
[auth]
url = "{backend.url}"

[auth.login]
path = "/auth/login"

[cookies]
secure = false

[[routes]]
match = "/**"
access = "public"
""", upstream=backend.url + "/api/echo")
    token = backend.token(1)
    cookies = ("cookie", f"theme=dark; userToken={token}; refreshToken={REFRESH}")
    for path in ("/auth/refresh", "/auth/login"):
        reply = send(gateway.url, path, [cookies], method="POST", body=b"{}")
        assert reply.status == 200, (path, reply.body)
        assert echoed_cookie_names(reply) == ["theme", "refreshToken"], path
    reply = send(gateway.url, "/auth/other", [cookies], method="POST", body=b"{}")
    assert echoed_cookie_names(reply) == ["theme"]


# -- Set-Cookie from the upstream -----------------------------------------------------------


@pytest.mark.parametrize("name", ["userToken", "refreshToken", "guestToken"])
def test_upstream_cannot_set_the_gateways_cookies(make_gateway: MakeGateway, backend: Backend,
                                                  name: str) -> None:
    """Any page of the app that lets a value through into Set-Cookie would otherwise fix a
    session of the attacker's choosing in the victim's browser."""
    gateway = make_gateway('[[routes]]\nmatch = "/test/**"\naccess = "public"\n')
    reply = send(gateway.url, f"/test/set-cookie?name={name}&value=attacker")
    assert reply.status == 200
    assert reply.header_list("set-cookie") == []
    reply = send(gateway.url, "/test/set-cookie?name=theme&value=dark")
    assert reply.header_list("set-cookie") == ["theme=dark; Path=/"]
    assert send(gateway.url, "/test/cookies").cookie_names() == ["a", "b", "c"]


def test_the_backends_own_refresh_path_may_set_them(make_gateway: MakeGateway,
                                                    backend: Backend) -> None:
    """A cookie-mode backend rotates its refresh cookie on its own refresh endpoint (here the
    demo's /test/set-cookie, configured as auth.refresh.path under base path /test)."""
    gateway = make_gateway(f"""
[auth]
url = "{backend.url}"

[auth.refresh]
path = "/set-cookie"

[[routes]]
match = "/**"
access = "public"
""", upstream=backend.url + "/test")
    reply = send(gateway.url, "/set-cookie?name=refreshToken&value=rotated")
    assert reply.header_list("set-cookie") == ["refreshToken=rotated; Path=/"]
    reply = send(gateway.url, "/cookies")
    assert reply.cookie_names() == ["a", "b", "c"]


# -- preflight-shaped requests without [cors] ------------------------------------------------

PREFLIGHT = [("origin", "https://app.example.test"),
             ("access-control-request-method", "POST"),
             ("access-control-request-headers", "content-type")]


def test_a_preflight_is_forwarded_without_any_credential(make_gateway: MakeGateway,
                                                         backend: Backend) -> None:
    gateway = make_gateway(ROUTES)
    token = backend.token(1)
    reply = send(gateway.url, "/api/echo/x", [
        *PREFLIGHT, ("cookie", f"theme=dark; userToken={token}; refreshToken={REFRESH}"),
        ("authorization", f"Bearer {token}")], method="OPTIONS")
    assert reply.status == 200, reply.body
    seen = upstream_saw(reply)
    assert reply.json()["method"] == "OPTIONS"
    assert seen["cookie"] == ["theme=dark"]
    assert "authorization" not in seen
    assert not any(name.startswith("x-auth-") for name in seen)
    assert reply.json()["body_len"] == 0


def test_options_with_a_body_is_checked_like_any_request(make_gateway: MakeGateway,
                                                         backend: Backend) -> None:
    """Preflight-shaped, but with a body: no preflight. Without a valid session it never
    reaches the backend; with one it is forwarded like any request (cookies stripped)."""
    gateway = make_gateway(ROUTES)
    token = backend.token(1)
    before = backend.calls("echo")
    for cookie in ("", f"userToken={token}x", f"refreshToken={REFRESH}"):
        headers = [*PREFLIGHT, ("x-requested-with", "XMLHttpRequest")]
        if cookie:
            headers.append(("cookie", cookie))
        reply = send(gateway.url, "/api/echo/x", headers, method="OPTIONS",
                     body=b'{"amount": 1000}')
        assert reply.status == 401, (cookie, reply.body)
    assert backend.calls("echo") == before
    reply = send(gateway.url, "/api/echo/x", [
        *PREFLIGHT, ("cookie", f"userToken={token}; refreshToken={REFRESH}")],
        method="OPTIONS", body=b'{"amount": 1000}')
    assert reply.status == 200
    seen = upstream_saw(reply)
    assert "cookie" not in seen
    assert seen["authorization"] == [f"Bearer {token}"]
    assert seen["x-auth-user-id"] == ["1"]


def test_preflight_shape() -> None:
    base = [(b"origin", b"https://a.example"), (b"access-control-request-method", b"PUT")]
    assert is_preflight("OPTIONS", base)
    assert is_preflight("OPTIONS", [*base, (b"content-length", b"0")])
    assert not is_preflight("OPTIONS", [*base, (b"content-length", b"5")])
    assert not is_preflight("OPTIONS", [*base, (b"transfer-encoding", b"chunked")])
    assert not is_preflight("POST", base)
    assert not is_preflight("OPTIONS", base[:1])
