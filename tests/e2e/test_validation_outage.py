"""The auth backend down, slow or answering nonsense, on real sockets
(docs/behaviour.md#validation): a 503 with Retry-After, never a logout (no cookie cleared), and
a reply that is no verdict is not taken for one.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import httpx
import pytest

from tests.conftest import Backend, MakeGateway
from tests.helpers.replies import BROWSER, XHR, assert_no_raw_tokens, set_cookies
from tests.helpers.validation import bearer, me_calls, routes_with
from tests.servers import serving

# --------------------------------------------------------------------------
# backend outage
# --------------------------------------------------------------------------


def test_outage_is_503_with_retry_after_and_no_cookie_change(
    make_gateway: MakeGateway, backend: Backend
) -> None:
    gateway = make_gateway(routes_with("retries = 2"))
    token = backend.token(1)
    refresh = backend.token(1, typ="refresh")
    backend.fault("me", 503, count=-1)
    try:
        before = me_calls(backend)
        with httpx.Client(base_url=gateway.url) as client:
            reply = client.get("/api/items", headers={
                "cookie": f"userToken={token}; refreshToken={refresh}", **XHR})
            assert reply.status_code == 503
            assert reply.headers.get("retry-after")
            assert set_cookies(reply) == {}
            assert me_calls(backend) - before == 3  # 1 try + 2 retries
            # A browser navigation is not sent to the login page: it is not a verdict.
            reply = client.get("/api/items", headers={**bearer(token), **BROWSER})
            assert reply.status_code == 503 and "location" not in reply.headers
            assert set_cookies(reply) == {}
            assert me_calls(backend) - before == 6
    finally:
        backend.reset()
    events = gateway.events("auth.backend_unavailable")
    assert len(events) == 2
    first = events[0]
    assert {e["reason"] for e in events} == {"backend_error"}
    assert first["path"] == "/api/items" and first["method"] == "GET"
    with httpx.Client(base_url=gateway.url) as client:
        reply = client.get("/api/items", headers=bearer(token))
        assert reply.status_code == 200 and reply.json()["user_id"] == "1"
    assert me_calls(backend) == 1
    assert_no_raw_tokens(gateway, token, refresh)


def _maintenance_backend(me_status: int, me_body: bytes, me_type: str) -> tuple[Any, Counter[str]]:
    """An auth backend whose /auth/me answers a fixed page, counting every call."""
    calls: Counter[str] = Counter()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        calls[scope["path"]] += 1
        status, body, kind = (me_status, me_body, me_type) if scope["path"] == "/auth/me" \
            else (401, b'{"error": "no"}', "application/json")
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", kind.encode())]})
        await send({"type": "http.response.body", "body": body})

    return app, calls


@pytest.mark.parametrize(("status", "body", "kind"), [
    (200, b"<html><body>Down for maintenance</body></html>", "text/html"),
    (200, b"", "application/json"),
    (404, b'{"detail": "Not found."}', "application/json"),
    (429, b'{"detail": "Slow down."}', "application/json"),
])
def test_validate_reply_that_is_no_verdict_is_503_not_a_logout(
        make_gateway: MakeGateway, status: int, body: bytes, kind: str) -> None:
    """Only 401/403 (and a JSON 2xx) say something about the token. A 200 maintenance page
    used to count as "invalid": a refresh followed and, rejected, cleared the cookies."""
    app, calls = _maintenance_backend(status, body, kind)
    with serving(app) as auth:
        gateway = make_gateway(routes_with(f'url = "{auth.url}"', "retries = 0"))
        with httpx.Client(base_url=gateway.url) as client:
            reply = client.get("/api/items", headers={
                "cookie": "userToken=opaque-session-token; refreshToken=opaque-refresh", **XHR})
    assert reply.status_code == 503, reply.text
    assert reply.headers.get("retry-after")
    assert reply.json()["error"] == "auth_unavailable"
    assert set_cookies(reply) == {}
    assert calls == {"/auth/me": 1}  # no refresh attempted
    assert [e["reason"] for e in gateway.events("auth.backend_unavailable")] == ["backend_error"]


def test_validate_json_2xx_without_a_user_is_a_verdict(make_gateway: MakeGateway) -> None:
    """The other side of that choice: a JSON 2xx without a usable user (200 {"success": false},
    as some backends answer for a bad token) says "not valid", so the refresh runs; this
    backend rejects it, which ends the session."""
    app, calls = _maintenance_backend(200, b'{"success": false}', "application/json")
    with serving(app) as auth:
        gateway = make_gateway(routes_with(f'url = "{auth.url}"', "retries = 0"))
        with httpx.Client(base_url=gateway.url) as client:
            reply = client.get("/api/items", headers={
                "cookie": "userToken=opaque-session-token; refreshToken=opaque-refresh", **XHR})
    assert reply.status_code == 401, reply.text
    assert reply.json()["error"] == "unauthenticated"
    assert calls == {"/auth/me": 1, "/auth/refresh": 1}
    cleared = {c.split("=", 1)[0] for c in set_cookies(reply).values() if "max-age=0" in c.lower()}
    assert cleared == {"userToken", "refreshToken"}


def test_slow_backend_times_out_to_503(make_gateway: MakeGateway, backend: Backend) -> None:
    gateway = make_gateway(routes_with("retries = 1",
                                      extra="\n[upstream]\nread_timeout_s = 0.3\n"))
    token = backend.token(1)
    backend.fault("me", 0, count=2, delay_s=1.0)
    before = me_calls(backend)
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        reply = client.get("/api/items", headers=bearer(token))
        assert reply.status_code == 503
        assert reply.headers.get("retry-after")
        assert me_calls(backend) - before == 2
        [event] = gateway.events("auth.backend_unavailable")
        assert event["reason"] == "network"
        # The faults are used up: the same token works.
        assert client.get("/api/items", headers=bearer(token)).status_code == 200
