"""Debian's real nginx and Caddy in front of the reference backend, the gateway as their auth
service, with the shipped configs of ``config/forward-auth/`` (docs/forward-auth.md). What a
browser sees through the proxy is what it would see through the gateway's own proxy mode."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Backend, RunningGateway, StartGateway
from tests.helpers.forward_auth import (
    CONFIGS,
    ProxyProcess,
    caddy,
    forward_auth_gateway,
    have,
    nginx,
)
from tests.helpers.replies import cookie_value, cookieless_client, set_cookies, upstream_saw

HTML = "text/html,application/xhtml+xml,*/*;q=0.8"
CONCURRENCY = 50

StartProxy = Callable[..., ProxyProcess]


def _launcher(kind: str, tmp_path: Path, backend: Backend, started: list[ProxyProcess]
              ) -> StartProxy:
    if not have(kind):
        pytest.skip(f"{kind} is not installed (.ci/run installs Debian's {kind})")

    def launch(gateway: RunningGateway, **options: Any) -> ProxyProcess:
        workdir = tmp_path / f"{kind}-{len(started)}"
        workdir.mkdir()
        make = nginx if kind == "nginx" else caddy
        proxy = make(workdir, gateway_url=gateway.url, app_url=backend.url, **options)
        started.append(proxy)
        return proxy.start()

    return launch


@pytest.fixture(params=["nginx", "caddy"])
def start_proxy(request: pytest.FixtureRequest, tmp_path: Path, backend: Backend
                ) -> Iterator[StartProxy]:
    started: list[ProxyProcess] = []
    yield _launcher(request.param, tmp_path, backend, started)
    for proxy in started:
        proxy.stop()


@pytest.fixture
def start_nginx(tmp_path: Path, backend: Backend) -> Iterator[StartProxy]:
    started: list[ProxyProcess] = []
    yield _launcher("nginx", tmp_path, backend, started)
    for proxy in started:
        proxy.stop()


@pytest.fixture
def gateway(start: StartGateway) -> RunningGateway:
    return forward_auth_gateway(start)


def get(proxy: ProxyProcess, path: str, **headers: str) -> httpx.Response:
    return httpx.get(proxy.url + path, headers=headers, timeout=30)


def echoed(reply: httpx.Response) -> dict[str, list[str]]:
    """The headers the app received, by lower-cased name."""
    assert reply.status_code == 200, reply.text
    return upstream_saw(reply)


def new_cookies(reply: httpx.Response) -> dict[str, str]:
    """The value each cookie is set to, by name (no name set twice)."""
    return {name: cookie_value(header) for name, header in set_cookies(reply).items()}


def metric(gateway: RunningGateway, sample: str) -> float:
    text = httpx.get(gateway.url + "/__gateway/metrics").text
    found = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def decisions(gateway: RunningGateway) -> float:
    """Validations the gateway made (cache hits included): one per auth answer it gave."""
    return metric(gateway, 'gateway_auth_events_total{event="auth.validated",outcome="valid"}')


# -- both proxies ------------------------------------------------------------------------------


def test_login_through_the_proxy_then_the_session_reaches_the_app(
        start_proxy: StartProxy, gateway: RunningGateway, backend: Backend) -> None:
    proxy = start_proxy(gateway)
    login = httpx.post(proxy.url + "/auth/login", timeout=30,
                       json={"email": "demo@example.com", "password": "demo-password"})
    assert login.status_code == 200
    assert "accessToken" not in login.text  # captured by the gateway, kept in cookies
    cookies = new_cookies(login)
    assert cookies["guestToken"] == ""  # a login clears the guest cookie
    assert {name for name, value in cookies.items() if value} == {"userToken", "refreshToken"}
    assert all("HttpOnly" in h for h in login.headers.get_list("set-cookie"))

    reply = get(proxy, "/api/echo/x?y=1", cookie=f"theme=dark; userToken={cookies['userToken']}"
                f"; refreshToken={cookies['refreshToken']}",
                **{"x-auth-user-id": "99", "x-refreshed-token": "forged"})
    seen = echoed(reply)
    assert seen["x-auth-user-id"] == ["1"]
    assert seen["x-auth-token-type"] == ["user"]
    assert json.loads(_b64(seen["x-auth-user"][0]))["email"] == "demo@example.com"
    assert seen["authorization"] == [f"Bearer {cookies['userToken']}"]
    assert "x-refreshed-token" not in seen, repr(seen)
    assert "x-auth-authorization" not in seen
    # The app never sees the gateway's cookies; its own pass.
    assert "userToken" not in " ".join(seen.get("cookie", []))
    assert "refreshToken" not in " ".join(seen.get("cookie", []))
    assert "theme=dark" in " ".join(seen.get("cookie", []))
    assert "set-cookie" not in reply.headers


def _b64(value: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


def test_expired_session_is_refreshed_and_the_browser_gets_the_new_cookies(
        start_proxy: StartProxy, gateway: RunningGateway, backend: Backend) -> None:
    proxy = start_proxy(gateway)
    expired = backend.token(user_id=1, ttl_s=-60)
    reply = get(proxy, "/api/echo", cookie=f"userToken={expired}")
    seen = echoed(reply)
    cookies = new_cookies(reply)
    assert set(cookies) == {"userToken", "refreshToken"}
    assert cookies["userToken"] != expired
    assert seen["authorization"] == [f"Bearer {cookies['userToken']}"]
    assert seen["x-refreshed-token"] == [cookies["userToken"]]
    assert "x-refreshed-token" not in reply.headers  # a cookie session gets cookies
    assert backend.calls("refresh") == 1
    # The new cookie works through the proxy without another refresh.
    assert echoed(get(proxy, "/api/echo", cookie=f"userToken={cookies['userToken']}"))
    assert backend.calls("refresh") == 1


def test_spa_with_an_expired_bearer_token_learns_the_refreshed_one(
        start_proxy: StartProxy, gateway: RunningGateway, backend: Backend) -> None:
    proxy = start_proxy(gateway)
    expired = backend.token(user_id=1, ttl_s=-60)
    reply = get(proxy, "/api/echo", authorization=f"Bearer {expired}")
    seen = echoed(reply)
    new = reply.headers["x-refreshed-token"]
    assert new != expired
    assert seen["authorization"] == [f"Bearer {new}"]
    assert new_cookies(reply)["userToken"] == new
    assert backend.calls("refresh") == 1


def test_navigation_without_session_goes_to_login_and_xhr_gets_401_json(
        start_proxy: StartProxy, gateway: RunningGateway, backend: Backend) -> None:
    proxy = start_proxy(gateway)
    navigation = get(proxy, "/dashboard?tab=2", accept=HTML)
    assert navigation.status_code == 302
    assert navigation.headers["location"].endswith("/login?next=/dashboard%3Ftab%3D2")
    xhr = get(proxy, "/api/echo", accept="application/json",
              **{"x-requested-with": "XMLHttpRequest"})
    assert xhr.status_code == 401
    assert xhr.json()["error"] == "unauthenticated"
    assert backend.calls("echo") == 0


def test_role_miss_is_403_and_keeps_the_session(
        start_proxy: StartProxy, gateway: RunningGateway, backend: Backend) -> None:
    proxy = start_proxy(gateway)
    token = backend.token(user_id=1)
    denied = get(proxy, "/api/admin/stats", cookie=f"userToken={token}", accept=HTML)
    assert denied.status_code == 403
    assert denied.json()["error"] == "forbidden"
    assert "set-cookie" not in denied.headers
    assert backend.calls("admin_stats") == 0
    assert echoed(get(proxy, "/api/echo", cookie=f"userToken={token}"))["x-auth-user-id"] == ["1"]
    admin = backend.token(user_id=2)
    assert get(proxy, "/api/admin/stats", cookie=f"userToken={admin}").json()["user_id"] == "2"


def test_ended_session_is_cleared_through_the_proxy(
        start_proxy: StartProxy, gateway: RunningGateway, backend: Backend) -> None:
    proxy = start_proxy(gateway)
    forged = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.bad"  # the backend refuses to refresh it
    reply = get(proxy, "/api/echo", cookie=f"userToken={forged}", accept="application/json")
    assert reply.status_code == 401
    cleared = reply.headers.get_list("set-cookie")
    assert sorted(h.split("=", 1)[0] for h in cleared) == ["refreshToken", "userToken"]
    assert all("Max-Age=0" in h for h in cleared)


def test_guest_route_gets_a_guest_cookie_through_the_proxy(
        start_proxy: StartProxy, gateway: RunningGateway, backend: Backend) -> None:
    proxy = start_proxy(gateway)
    reply = get(proxy, "/api/items")
    assert reply.status_code == 200
    assert list(new_cookies(reply)) == ["guestToken"]
    assert reply.json()["user_id"].startswith("guest:")


# -- nginx only --------------------------------------------------------------------------------


async def test_burst_of_50_with_one_expired_session_through_nginx_refreshes_once(
        start_nginx: StartProxy, gateway: RunningGateway, backend: Backend) -> None:
    proxy = start_nginx(gateway, workers=2)
    expired = backend.token(user_id=1, ttl_s=-60)
    backend.fault("refresh", 0, count=1, delay_s=0.5)  # everyone arrives during the flight
    async with cookieless_client(proxy.url, connections=CONCURRENCY, timeout=60) as client:
        replies = await asyncio.gather(*[
            client.get("/api/echo", headers={"cookie": f"userToken={expired}"})
            for _ in range(CONCURRENCY)])
    assert [r.status_code for r in replies] == [200] * CONCURRENCY
    assert backend.calls("refresh") == 1
    tokens = {new_cookies(r).get("userToken") for r in replies}
    assert len(tokens) == 1 and None not in tokens  # everyone got the same new session
    assert not any("Max-Age=0" in h for r in replies for h in r.headers.get_list("set-cookie"))
    assert not gateway.events("auth.session_cleared")


def test_nginx_caches_plain_200s_but_never_answers_with_cookie_changes(
        start_nginx: StartProxy, gateway: RunningGateway, backend: Backend) -> None:
    shipped = (CONFIGS / "nginx.conf").read_text()
    assert "proxy_cache_valid 200 2s;" in shipped
    # A minute instead of 2 s: a loaded machine must not let the entry expire mid-test.
    proxy = start_nginx(gateway, site_text=shipped.replace("proxy_cache_valid 200 2s;",
                                                           "proxy_cache_valid 200 60s;"))
    token = backend.token(user_id=1)
    for _ in range(5):
        assert echoed(get(proxy, "/api/echo", cookie=f"userToken={token}"))
    assert decisions(gateway) == 1  # four answered from nginx's cache
    # Another route, another decision: not served from that entry.
    assert get(proxy, "/api/admin/stats", cookie=f"userToken={token}").status_code == 403
    expired = backend.token(user_id=1, ttl_s=-60)
    first = get(proxy, "/api/echo", cookie=f"userToken={expired}")
    second = get(proxy, "/api/echo", cookie=f"userToken={expired}")
    assert new_cookies(first)["userToken"] == new_cookies(second)["userToken"]  # grace
    assert decisions(gateway) == 2  # the 403 asked the gateway
    assert [e["via"] for e in gateway.events("auth.refreshed")] == ["backend", "grace"]


def test_backend_outage_is_503_through_nginx_and_keeps_cookies(
        start_nginx: StartProxy, gateway: RunningGateway, backend: Backend) -> None:
    proxy = start_nginx(gateway)
    expired = backend.token(user_id=1, ttl_s=-60)
    backend.fault("refresh", 503)
    try:
        reply = get(proxy, "/api/echo", cookie=f"userToken={expired}")
    finally:
        backend.fault("refresh", 0, count=0)
    assert reply.status_code == 503
    assert reply.headers["retry-after"] == "5"
    assert "set-cookie" not in reply.headers


def test_nginx_outside_trusted_is_refused_404_and_nothing_reaches_the_app(
        start_nginx: StartProxy, start: StartGateway, backend: Backend) -> None:
    gateway = forward_auth_gateway(start, trusted=["10.0.0.0/8"])
    proxy = start_nginx(gateway)
    token = backend.token(user_id=1)
    reply = get(proxy, "/api/echo", cookie=f"userToken={token}")
    assert reply.status_code == 502  # nginx: the auth service gave no usable answer
    assert reply.json()["error"] == "auth_unreachable"
    assert metric(gateway, 'gateway_http_responses_total{code="404"}') == 1
    assert backend.calls("echo") == 0 and backend.calls("me") == 0


def test_a_client_cannot_name_another_request_to_check(
        start_proxy: StartProxy, gateway: RunningGateway, backend: Backend) -> None:
    proxy = start_proxy(gateway)
    spoofed = {"x-original-uri": "/api/public/hello", "x-original-method": "GET",
               "x-forwarded-uri": "/api/public/hello", "x-forwarded-method": "GET"}
    reply = get(proxy, "/api/echo", **spoofed)
    assert reply.status_code == 401
    assert backend.calls("echo") == 0


def test_public_route_passes_neither_client_identity_headers_nor_an_invalid_token(
        start_proxy: StartProxy, start: StartGateway, backend: Backend) -> None:
    gateway = forward_auth_gateway(start, routes=[{"match": "/api/echo/open",
                                                   "access": "public"}])
    proxy = start_proxy(gateway)
    seen = echoed(get(proxy, "/api/echo/open", authorization="Bearer not-a-valid-token",
                      **{"x-auth-user-id": "99", "x-auth-token-type": "user",
                         "x-auth-user": "e30", "x-refreshed-token": "forged"}))
    assert not [name for name in seen if name.startswith("x-auth-")], seen
    assert "x-refreshed-token" not in seen
    assert "authorization" not in seen  # an invalid token is not passed on (as in proxy mode)
