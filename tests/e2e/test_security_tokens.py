"""What counts as a credential, on real sockets (gateway/tokens.py, gateway/validation.py):
other Authorization schemes, a session cookie sent twice, and the cost of bogus tokens,
counted at the backend's /auth/me."""

from __future__ import annotations

import asyncio
import time

import httpx

from tests.conftest import Backend, MakeGateway
from tests.helpers.raw_http import send
from tests.helpers.replies import upstream_saw
from tests.helpers.security import OPEN_AND_USER_ROUTES

ROUTES = """
[auth]
retry_backoff_s = 0.01

[auth.refresh]
send = "refresh_body"
""" + OPEN_AND_USER_ROUTES
XHR = ("x-requested-with", "XMLHttpRequest")
BASIC = ("authorization", "Basic ZGVtbzpkZW1vLXBhc3N3b3Jk")


def test_basic_credentials_are_not_a_token(make_gateway: MakeGateway, backend: Backend) -> None:
    """Only Bearer and the configured scheme carry a token. Basic is never sent to /auth/me
    nor passed on: Authorization toward the app is the gateway's own."""
    gateway = make_gateway(ROUTES)
    token = backend.token(1)
    before = backend.calls("me")
    reply = send(gateway.url, "/api/echo/x", [BASIC, XHR])
    assert reply.status == 401
    assert reply.json()["error"] == "unauthenticated"
    assert gateway.events("auth.denied")[-1]["reason"] == "no_token"
    reply = send(gateway.url, "/api/echo/open/x", [BASIC])
    assert reply.status == 200
    assert "authorization" not in upstream_saw(reply)
    assert backend.calls("me") == before  # the Basic credential cost nothing
    # Beside it, the session cookie is the credential.
    reply = send(gateway.url, "/api/echo/x", [BASIC, ("cookie", f"userToken={token}")])
    assert reply.status == 200
    assert upstream_saw(reply)["authorization"] == [f"Bearer {token}"]
    assert backend.calls("me") == before + 1
    for scheme in ("Digest", "Negotiate", "Token"):
        assert send(gateway.url, "/api/echo/x", [("authorization", f"{scheme} {token}"),
                                                 XHR]).status == 401
    assert backend.calls("me") == before + 1


def test_a_session_cookie_sent_twice_is_not_first_wins(make_gateway: MakeGateway,
                                                       backend: Backend) -> None:
    """A sibling subdomain (or a page that can write cookies) adds its own userToken, which
    the browser sends first: neither copy is believed."""
    gateway = make_gateway(ROUTES)
    victim, attacker = backend.token(1), backend.token(2)
    before = backend.calls("me")
    for headers in ([("cookie", f"userToken={attacker}; userToken={victim}")],
                    [("cookie", f"userToken={attacker}"), ("cookie", f"userToken={victim}")],
                    [("cookie", f"guestToken={attacker}; a=1; guestToken={victim}")]):
        reply = send(gateway.url, "/api/echo/x", [*headers, XHR])
        assert reply.status == 401, reply.body
        assert gateway.events("auth.denied")[-1]["reason"] == "malformed_token"
        reply = send(gateway.url, "/api/echo/open/x", headers)
        assert reply.status == 200
        seen = upstream_saw(reply)
        assert "authorization" not in seen and "x-auth-user-id" not in seen
    assert backend.calls("me") == before
    # The same value twice is one cookie.
    reply = send(gateway.url, "/api/echo/x", [("cookie", f"userToken={victim}; "
                                                         f"userToken={victim}")])
    assert reply.status == 200
    assert upstream_saw(reply)["x-auth-user-id"] == ["1"]


async def test_one_bogus_token_costs_one_backend_call(make_gateway: MakeGateway,
                                                      backend: Backend) -> None:
    """1,000 requests (20 rounds of 50 concurrent) with one token the backend rejects: one
    /auth/me call. Without the negative cache each round asks again."""
    gateway = make_gateway(ROUTES.replace("[auth]", "[auth]\ncache_ttl_s = 600\n"
                                          "invalid_cache_ttl_s = 600"))
    bogus = "bogus-token-that-the-backend-rejects"
    before = backend.calls("me")
    limits = httpx.Limits(max_connections=50, max_keepalive_connections=50)
    async with httpx.AsyncClient(base_url=gateway.url, limits=limits, timeout=60) as client:
        for _ in range(20):
            replies = await asyncio.gather(*(
                client.get("/api/echo/x", headers={"authorization": f"Bearer {bogus}",
                                                   "x-requested-with": "XMLHttpRequest"})
                for _ in range(50)))
            assert {r.status_code for r in replies} == {401}
    assert backend.calls("me") == before + 1
    cache = [e["cache"] for e in gateway.events("auth.validated")]
    assert cache.count("miss") == 1
    # Keyed by the token's hash, like the positive cache: never the token itself.
    keys = [key for space in gateway.app.store._values.spaces().values()  # type: ignore[attr-defined]
            for key in space]
    assert keys and all(bogus.encode() not in key for key in keys)


def test_the_negative_cache_never_outlives_cache_ttl(make_gateway: MakeGateway,
                                                     backend: Backend) -> None:
    gateway = make_gateway(ROUTES.replace("[auth]", "[auth]\ncache_ttl_s = 0.2\n"
                                          "invalid_cache_ttl_s = 600"))
    before = backend.calls("me")
    headers = [("authorization", "Bearer another-bogus-token"), XHR]
    assert send(gateway.url, "/api/echo/x", headers).status == 401
    assert send(gateway.url, "/api/echo/x", headers).status == 401
    time.sleep(0.5)  # past cache_ttl_s: the rejection is forgotten (never longer)
    assert send(gateway.url, "/api/echo/x", headers).status == 401
    calls = backend.calls("me") - before
    assert 2 <= calls <= 3, calls  # the second request hits unless the machine stalled 0.2 s
