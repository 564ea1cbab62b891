"""Validation on real sockets (docs/behaviour.md#validation, docs/behaviour.md#proxying for the
identity headers, docs/audit.md): the backend's verdict mapped to identity headers (also for
Djoser), public routes with and without a valid token, spoofed identity headers replaced, and
the audit events of each validation.

Every test starts its own small gateway (``make_gateway``) in front of the session's reference
backend and counts the backend's ``/auth/me`` calls (``backend.calls("me")``) around what it
does.
"""

from __future__ import annotations

import base64
import json

import httpx

from tests.conftest import Backend, MakeGateway
from tests.helpers.raw_http import send
from tests.helpers.replies import XHR, assert_no_raw_tokens, decode_user, echoed, fp, set_cookies
from tests.helpers.validation import (
    DEMO_USER,
    IDENTITY_NAMES,
    LOG_CACHE_HITS,
    ROUTES,
    bearer,
    identity_seen,
    me_calls,
)

# --------------------------------------------------------------------------
# validation mapping (docs/behaviour.md#validation), identity headers (#proxying)
# --------------------------------------------------------------------------


def test_identity_headers_reach_the_upstream(make_gateway: MakeGateway, backend: Backend
                                             ) -> None:
    gateway = make_gateway(ROUTES)
    token = backend.token(1)
    with httpx.Client(base_url=gateway.url) as client:
        reply = client.get("/api/echo/private", headers=bearer(token))
    assert reply.status_code == 200
    body = reply.json()
    assert echoed(body, "authorization") == [f"Bearer {token}"]
    assert echoed(body, "x-auth-user-id") == ["1"]
    assert echoed(body, "x-auth-token-type") == ["user"]
    [user] = echoed(body, "x-auth-user")
    assert "=" not in user and "+" not in user and "/" not in user  # base64url, unpadded
    assert decode_user(user) == DEMO_USER


DJOSER = """
[auth]
scheme = "JWT"
retry_backoff_s = 0.01

[auth.refresh]
send = "refresh_body"

[auth.validate]
path = "/auth/users/me/"
user_path = ""

[[routes]]
match = "/api/admin/**"
access = "user"
roles = ["admin"]

[default_route]
access = "user"
"""


def test_djoser_validation_mapping(make_gateway: MakeGateway, backend: Backend) -> None:
    gateway = make_gateway(DJOSER)
    demo, admin = backend.token(1), backend.token(2)
    before_me, before_users = me_calls(backend), backend.calls("users_me")
    with httpx.Client(base_url=gateway.url) as client:
        reply = client.get("/api/echo/private", headers=bearer(demo))  # client says Bearer
        assert reply.status_code == 200
        body = reply.json()
        assert echoed(body, "authorization") == [f"JWT {demo}"]
        assert echoed(body, "x-auth-user-id") == ["1"]
        assert echoed(body, "x-auth-token-type") == ["user"]
        assert decode_user(echoed(body, "x-auth-user")[0]) == {
            "id": 1, "email": "demo@example.com", "username": "demo", "roles": ["user"]}
        assert client.get("/api/items", headers=bearer(demo, "JWT")).json()["user_id"] == "1"
        # Roles come from the bare Djoser object too.
        assert client.get("/api/admin/stats", headers=bearer(demo)).status_code == 403
        reply = client.get("/api/admin/stats", headers=bearer(admin, "jwt"))
        assert reply.status_code == 200 and reply.json()["user_id"] == "2"
        # A token the backend rejects is not valid.
        assert client.get("/api/items", headers=bearer(demo + "x")).status_code == 401
    assert backend.calls("users_me") - before_users == 3
    assert me_calls(backend) - before_me == 0


# --------------------------------------------------------------------------
# public routes with and without a valid token
# --------------------------------------------------------------------------


def test_public_route_drops_an_invalid_token(make_gateway: MakeGateway, backend: Backend
                                             ) -> None:
    gateway = make_gateway(ROUTES)
    expired = backend.token(1, ttl_s=-120)
    forged = backend.token(1)[:-4] + "AAAA"  # right shape, wrong signature
    with httpx.Client(base_url=gateway.url) as client:
        for headers in (bearer(expired), bearer(forged), {"cookie": f"userToken={expired}"},
                        {"cookie": f"userToken={forged}"}):
            reply = client.get("/api/echo/public/x", headers=headers)
            assert reply.status_code == 200
            body = reply.json()
            assert echoed(body, "authorization") == []
            assert identity_seen(body) == {}
            assert set_cookies(reply) == {}  # no cookie cleared: no refresh was rejected
    assert_no_raw_tokens(gateway, expired, forged)


def test_public_route_forwards_a_valid_identity(make_gateway: MakeGateway, backend: Backend
                                                ) -> None:
    gateway = make_gateway(ROUTES)
    token = backend.token(1)
    with httpx.Client(base_url=gateway.url) as client:
        for headers in (bearer(token, "bearer"), {"cookie": f"userToken={token}"}):
            body = client.get("/api/echo/public/x", headers=headers).json()
            assert echoed(body, "authorization") == [f"Bearer {token}"]
            assert echoed(body, "x-auth-user-id") == ["1"]
            assert echoed(body, "x-auth-token-type") == ["user"]
            assert decode_user(echoed(body, "x-auth-user")[0]) == DEMO_USER
        # And no token at all: forwarded, no identity.
        body = client.get("/api/echo/public/x").json()
        assert echoed(body, "authorization") == [] and identity_seen(body) == {}


def test_expired_jwt_costs_no_backend_call(make_gateway: MakeGateway, backend: Backend) -> None:
    gateway = make_gateway(ROUTES)
    expired = backend.token(1, ttl_s=-120)
    before = me_calls(backend)
    with httpx.Client(base_url=gateway.url) as client:
        for _ in range(3):
            reply = client.get("/api/items", headers={**bearer(expired), **XHR})
            assert reply.status_code == 401
        assert me_calls(backend) - before == 0
        assert [e["outcome"] for e in gateway.events("auth.validated")] == ["invalid"] * 3
        assert [e["reason"] for e in gateway.events("auth.denied")] == ["invalid_token"] * 3
        # Within clock_skew_s (30 s by default) the gateway does not decide alone.
        recent = backend.token(1, ttl_s=-5)
        assert client.get("/api/items", headers={**bearer(recent), **XHR}).status_code == 401
        assert me_calls(backend) - before == 1
    assert_no_raw_tokens(gateway, expired, recent)


# --------------------------------------------------------------------------
# spoofed identity headers (docs/behaviour.md#proxying)
# --------------------------------------------------------------------------


def test_spoofed_identity_headers_are_replaced(make_gateway: MakeGateway, backend: Backend
                                               ) -> None:
    gateway = make_gateway(ROUTES)
    demo = backend.token(1)
    fake_user = base64.urlsafe_b64encode(b'{"id":2,"roles":["admin"]}').decode()
    spoofed = [
        (b"X-Auth-User-Id", b"2"),
        (b"x_auth_user_id", b"2"),
        (b"x-auth-user-id", b"2"),
        (b"X-AUTH-TOKEN-TYPE", b"user"),
        (b"X-Auth-User", fake_user.encode()),
        (b"x_auth_user", fake_user.encode()),
        (b"X-Refreshed-Token", b"x"),
        (b"x_refreshed_token", b"x"),
        (b"X-Auth-Roles", b"admin"),
    ]
    reply = send(gateway.url, b"/api/echo/private",
                        [*spoofed, (b"authorization", f"Bearer {demo}".encode())])
    assert reply.status == 200
    seen = identity_seen(reply.json())
    assert seen["x-auth-user-id"] == ["1"]
    assert seen["x-auth-token-type"] == ["user"]
    assert len(seen["x-auth-user"]) == 1 and decode_user(seen["x-auth-user"][0]) == DEMO_USER
    assert set(seen) == set(IDENTITY_NAMES)  # no x-refreshed-token, no x-auth-roles

    reply = send(gateway.url, b"/api/items",
                        [*spoofed, (b"authorization", f"Bearer {demo}".encode())])
    assert reply.json()["user_id"] == "1"
    # Without a token, on a public route: none of them get through.
    reply = send(gateway.url, b"/api/echo/public/x", spoofed)
    assert reply.status == 200 and identity_seen(reply.json()) == {}
    # And they cannot buy access to a user route.
    reply = send(gateway.url, b"/api/admin/stats",
                        [*spoofed, (b"accept", b"application/json")])
    assert reply.status == 401


# --------------------------------------------------------------------------
# audit events (docs/audit.md)
# --------------------------------------------------------------------------


def test_audit_events(make_gateway: MakeGateway, backend: Backend) -> None:
    gateway = make_gateway(ROUTES + LOG_CACHE_HITS)
    demo, expired = backend.token(1), backend.token(1, ttl_s=-120)
    with httpx.Client(base_url=gateway.url) as client:
        first = client.get("/api/items", headers={**bearer(demo), "x-request-id": "req-one"})
        second = client.get("/api/items", headers={"cookie": f"userToken={demo}"})
        client.get("/api/items", headers=XHR)
        client.get("/api/items", headers={**XHR, "authorization": "Bearer a b"})
        client.get("/api/items", headers={**XHR, **bearer(expired)})
        client.get("/api/admin/stats", headers=bearer(demo))
    assert first.headers["x-request-id"] == "req-one"

    hit, miss = None, None
    validated = gateway.events("auth.validated")
    for event in validated:
        assert event["client_ip"] == "127.0.0.1"
        assert event["method"] == "GET"
        stamp = event["timestamp"]
        assert stamp.endswith("Z") or stamp.endswith("+00:00")
        assert len(event["token_fp"]) == 12
        assert all(c in "0123456789abcdef" for c in event["token_fp"])
    by_request = {e["request_id"]: e for e in validated}
    miss = by_request["req-one"]
    assert miss["cache"] == "miss" and miss["user_id"] == "1" and miss["outcome"] == "valid"
    assert miss["token_fp"] == fp(demo) and miss["path"] == "/api/items"
    hit = by_request[second.headers["x-request-id"]]
    assert hit["cache"] == "hit" and hit["user_id"] == "1" and hit["token_fp"] == fp(demo)
    invalid = [e for e in validated if e["token_fp"] == fp(expired)]
    assert len(invalid) == 1 and invalid[0]["outcome"] == "invalid"
    assert invalid[0].get("user_id") is None

    denied = gateway.events("auth.denied")
    assert [e["reason"] for e in denied] == [
        "no_token", "malformed_token", "invalid_token", "missing_role"]
    for event in denied:
        assert event["request_id"] and event["client_ip"] == "127.0.0.1"
        assert event["method"] == "GET" and event["path"] in ("/api/items", "/api/admin/stats")
        assert event["outcome"] in ("unauthenticated", "forbidden")
    assert denied[2]["token_fp"] == fp(expired)
    assert denied[3]["token_fp"] == fp(demo) and denied[3]["user_id"] == "1"

    text = gateway.audit_path.read_text()
    for line in text.splitlines():
        assert isinstance(json.loads(line), dict)
    assert_no_raw_tokens(gateway, demo, expired)
