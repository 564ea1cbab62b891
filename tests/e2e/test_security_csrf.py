"""Cross-site requests on real sockets (gateway/csrf.py, SECURITY.md).

A browser on another site can make the victim's browser send a form POST, a login, a logout
or a WebSocket handshake to the gateway, with the victim's cookies. Each is refused with 403
``csrf`` before the backend sees it; the backend's call counters prove it never did.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import websockets
from websockets.exceptions import InvalidStatus

from tests.conftest import Backend, MakeGateway, RunningGateway
from tests.helpers.raw_http import Reply, send
from tests.helpers.security import OPEN_AND_USER_ROUTES

CONFIG = """
[cookies]
secure = false

[auth.login]
path = "/auth/login"

[auth.logout]
path = "/auth/logout"
send = "access_header"
""" + OPEN_AND_USER_ROUTES + """
[[routes]]
match = "/ws/**"
access = "user"
"""

EVIL = "https://evil.example"
FORM = ("content-type", "application/x-www-form-urlencoded")
CROSS_SITE: list[list[tuple[str, str]]] = [
    [("origin", EVIL), ("sec-fetch-site", "cross-site")],  # a current browser
    [("origin", EVIL)],                                      # no Sec-Fetch-* (older browser)
    [("sec-fetch-site", "cross-site")],                      # no Origin (a GET-turned-POST)
    [("origin", "null"), ("sec-fetch-site", "cross-site")],  # sandboxed iframe, data: URL
    [("origin", "null")],
    [("origin", EVIL), ("sec-fetch-site", "same-site")],     # a sibling subdomain
]
CROSS_IDS = ["origin+sfs", "origin", "sfs", "null+sfs", "null", "same-site"]


def own_origin(gateway: RunningGateway) -> str:
    return gateway.url  # http://127.0.0.1:<port>: scheme + Host


def assert_csrf(reply: Reply) -> None:
    assert reply.status == 403, reply.body
    body = reply.json()
    assert body["error"] == "csrf"
    assert body["detail"]
    assert reply.header_list("set-cookie") == []


def events(gateway: RunningGateway) -> list[dict[str, Any]]:
    return gateway.events("auth.csrf_refused")


# -- state-changing requests with a cookie session ---------------------------------------------


@pytest.mark.parametrize("headers", CROSS_SITE, ids=CROSS_IDS)
def test_cross_site_form_post_with_the_session_cookie_is_refused(
        make_gateway: MakeGateway, backend: Backend, headers: list[tuple[str, str]]) -> None:
    gateway = make_gateway(CONFIG)
    token = backend.token(1)
    before = backend.calls("echo")
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        reply = send(gateway.url, "/api/echo/transfer", [
            ("cookie", f"userToken={token}"), FORM, *headers], method=method,
            body=b"to=attacker&amount=1000")
        assert_csrf(reply)
    # A public route is no exception: the cookie would still act for the user there.
    assert_csrf(send(gateway.url, "/api/echo/open/x", [("cookie", f"userToken={token}"),
                                                         FORM, *headers], method="POST",
                     body=b"a=1"))
    assert backend.calls("echo") == before
    refused = events(gateway)
    assert len(refused) == 5
    assert {e["outcome"] for e in refused} == {"refused"}
    assert {e["reason"] for e in refused} <= {"sec_fetch_site", "origin"}
    assert refused[0]["method"] == "POST" and refused[0]["path"] == "/api/echo/transfer"
    assert token not in gateway.audit_path.read_text()


def test_what_is_not_refused(make_gateway: MakeGateway, backend: Backend) -> None:
    gateway = make_gateway(CONFIG)
    token = backend.token(1)
    cookie = ("cookie", f"userToken={token}")
    allowed: list[tuple[str, list[tuple[str, str]]]] = [
        # Same origin, by Origin or by the browser's own word.
        ("POST", [cookie, ("origin", own_origin(gateway)), ("sec-fetch-site", "same-origin")]),
        ("POST", [cookie, ("origin", own_origin(gateway))]),
        ("POST", [cookie, ("sec-fetch-site", "same-origin")]),
        ("POST", [cookie, ("sec-fetch-site", "none")]),  # typed in by the user
        ("POST", [cookie]),                              # no browser signal at all
        # Safe methods are not state-changing.
        ("GET", [cookie, ("origin", EVIL), ("sec-fetch-site", "cross-site")]),
        ("HEAD", [cookie, ("origin", EVIL), ("sec-fetch-site", "cross-site")]),
        # A token in Authorization: a browser cannot add it cross-site.
        ("POST", [("authorization", f"Bearer {token}"), ("origin", EVIL),
                  ("sec-fetch-site", "cross-site")]),
        ("POST", [("authorization", f"Bearer {token}"), cookie, ("origin", EVIL)]),
    ]
    for method, headers in allowed:
        reply = send(gateway.url, "/api/echo/x", [*headers, FORM], method=method, body=b"a=1")
        assert reply.status == 200, (method, headers, reply.body)
    # No cookie session: nothing to forge (the route then asks for a session as usual).
    reply = send(gateway.url, "/api/echo/open/x", [("origin", EVIL), FORM], method="POST",
                 body=b"a=1")
    assert reply.status == 200
    assert events(gateway) == []


def test_basic_credentials_do_not_exempt_a_cookie_session(make_gateway: MakeGateway,
                                                          backend: Backend) -> None:
    """A browser attaches cached Basic credentials cross-site: they are no token."""
    gateway = make_gateway(CONFIG)
    token = backend.token(1)
    before = backend.calls("echo")
    reply = send(gateway.url, "/api/echo/x", [
        ("authorization", "Basic dXNlcjpwYXNz"), ("cookie", f"userToken={token}"),
        ("origin", EVIL), FORM], method="POST", body=b"a=1")
    assert_csrf(reply)
    assert backend.calls("echo") == before


def test_guest_and_refresh_cookies_are_a_session_too(make_gateway: MakeGateway,
                                                     backend: Backend) -> None:
    gateway = make_gateway(CONFIG)
    guest = backend.token("guest:x", typ="guest")
    for cookie in (f"guestToken={guest}", "refreshToken=r-token", "other=1; userToken=u"):
        assert_csrf(send(gateway.url, "/api/echo/open/x", [("cookie", cookie),
                                                             ("origin", EVIL)],
                         method="POST", body=b""))


# -- login and logout ---------------------------------------------------------------------------


@pytest.mark.parametrize("headers", CROSS_SITE, ids=CROSS_IDS)
def test_cross_site_form_encoded_login_is_refused(make_gateway: MakeGateway, backend: Backend,
                                                  headers: list[tuple[str, str]]) -> None:
    """Login CSRF: the attacker's credentials, posted from the attacker's page, would log the
    victim's browser into the attacker's account (DRF accepts form-encoded logins)."""
    gateway = make_gateway(CONFIG)
    before = backend.calls("login")
    reply = send(gateway.url, "/auth/login", [FORM, *headers], method="POST",
                 body=b"email=demo%40example.com&password=demo-password")
    assert_csrf(reply)
    # Not even a cookie needed to be present: every login capture is checked.
    assert backend.calls("login") == before
    assert [e["path"] for e in events(gateway)] == ["/auth/login"]


def test_same_origin_login_still_works(make_gateway: MakeGateway, backend: Backend) -> None:
    gateway = make_gateway(CONFIG)
    body = json.dumps({"email": "demo@example.com", "password": "demo-password"}).encode()
    reply = send(gateway.url, "/auth/login", [
        ("content-type", "application/json"), ("origin", own_origin(gateway)),
        ("sec-fetch-site", "same-origin")], method="POST", body=body)
    assert reply.status == 200, reply.body
    assert "userToken" in reply.cookie_names()


@pytest.mark.parametrize("headers", CROSS_SITE[:2], ids=CROSS_IDS[:2])
def test_cross_site_logout_is_refused(make_gateway: MakeGateway, backend: Backend,
                                      headers: list[tuple[str, str]]) -> None:
    gateway = make_gateway(CONFIG)
    token = backend.token(1)
    before = backend.calls("logout")
    reply = send(gateway.url, "/auth/logout", [("cookie", f"userToken={token}"), *headers],
                 method="POST", body=b"")
    assert_csrf(reply)  # no cookie cleared
    assert backend.calls("logout") == before
    # The session still works.
    assert send(gateway.url, "/api/echo/x", [("cookie", f"userToken={token}")]).status == 200
    # And the same logout from the site itself goes through.
    reply = send(gateway.url, "/auth/logout", [("cookie", f"userToken={token}"),
                                               ("origin", own_origin(gateway))],
                 method="POST", body=b"")
    assert reply.status == 204
    assert backend.calls("logout") == before + 1


# -- WebSocket handshakes -------------------------------------------------------------------


def ws_url(http_url: str) -> str:
    return "ws" + http_url.removeprefix("http") + "/ws/echo"


async def test_cross_site_websocket_handshake_with_a_cookie_is_refused(
        make_gateway: MakeGateway, backend: Backend) -> None:
    gateway = make_gateway(CONFIG)
    token = backend.token(1)
    with pytest.raises(InvalidStatus) as refused:
        async with websockets.connect(ws_url(gateway.url), origin=EVIL,  # type: ignore[arg-type]
                                      additional_headers={"cookie": f"userToken={token}"}):
            pass
    response = refused.value.response
    assert response.status_code == 403
    assert json.loads(response.body)["error"] == "csrf"  # the gateway's answer, not a 101
    assert events(gateway)[-1]["path"] == "/ws/echo"

    # From the site itself, or with the token in Authorization, the handshake is accepted.
    async with websockets.connect(ws_url(gateway.url),
                                  origin=own_origin(gateway),  # type: ignore[arg-type]
                                  additional_headers={"cookie": f"userToken={token}"}) as ws:
        assert json.loads(await ws.recv())["user_id"] == "1"
    async with websockets.connect(ws_url(gateway.url), origin=EVIL,  # type: ignore[arg-type]
                                  additional_headers={"authorization": f"Bearer {token}"}) as ws:
        assert json.loads(await ws.recv())["user_id"] == "1"


# -- configuration: the request's own origin, allowed origins, off switch ----------------------


def test_forwarded_host_and_proto_count_only_from_a_trusted_proxy(
        make_gateway: MakeGateway, backend: Backend) -> None:
    token = backend.token(1)
    behind_proxy = [("cookie", f"userToken={token}"), ("origin", "https://app.example.test"),
                    ("x-forwarded-host", "app.example.test"), ("x-forwarded-proto", "https")]
    untrusted = make_gateway(CONFIG)
    assert_csrf(send(untrusted.url, "/api/echo/x", behind_proxy, method="POST", body=b""))
    trusted = make_gateway(CONFIG + '[server]\ntrusted_proxies = ["127.0.0.1/32"]\n')
    assert send(trusted.url, "/api/echo/x", behind_proxy, method="POST", body=b"").status == 200
    # The client's Host is never enough for an Origin that does not match it.
    assert_csrf(send(trusted.url, "/api/echo/x", [*behind_proxy[:1], ("origin", EVIL)],
                     method="POST", body=b""))


def test_cors_and_trusted_origins_are_allowed(make_gateway: MakeGateway,
                                              backend: Backend) -> None:
    token = backend.token(1)
    gateway = make_gateway(CONFIG + '[cors]\nallow_origins = ["https://partner.example"]\n'
                           '[csrf]\ntrusted_origins = ["https://app.example.test:8443"]\n')
    cookie = ("cookie", f"userToken={token}")
    for origin in ("https://partner.example", "https://app.example.test:8443",
                   "HTTPS://PARTNER.EXAMPLE:443"):
        reply = send(gateway.url, "/api/echo/x", [cookie, ("origin", origin),
                                                  ("sec-fetch-site", "cross-site")],
                     method="POST", body=b"")
        assert reply.status == 200, origin
    assert_csrf(send(gateway.url, "/api/echo/x", [cookie, ("origin", EVIL)], method="POST",
                     body=b""))


def test_csrf_can_be_turned_off(make_gateway: MakeGateway, backend: Backend) -> None:
    gateway = make_gateway(CONFIG + "[csrf]\nenabled = false\n")
    token = backend.token(1)
    reply = send(gateway.url, "/api/echo/x", [("cookie", f"userToken={token}"),
                                              ("origin", EVIL)], method="POST", body=b"")
    assert reply.status == 200
