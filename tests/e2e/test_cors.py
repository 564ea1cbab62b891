"""CORS over real sockets: preflights never need a token; CORS headers on every answer
(docs/behaviour.md#cors)."""

from __future__ import annotations

import httpx

from tests.conftest import Backend, MakeGateway

ORIGIN = "https://app.example.com"
CORS = f"""
[cors]
allow_origins = ["{ORIGIN}"]

[[routes]]
match = "/api/public/**"
access = "public"
"""
PREFLIGHT = {"origin": ORIGIN, "access-control-request-method": "POST",
             "access-control-request-headers": "authorization, content-type"}


async def test_preflight_is_answered_by_the_gateway_without_a_token(
        make_gateway: MakeGateway, backend: Backend) -> None:
    gateway = make_gateway(CORS)
    async with gateway.client() as client:
        reply = await client.options("/api/items", headers=PREFLIGHT)
    assert reply.status_code == 204
    assert reply.headers.get_list("access-control-allow-origin") == [ORIGIN]
    assert reply.headers["access-control-allow-credentials"] == "true"
    assert "POST" in reply.headers["access-control-allow-methods"]
    assert "authorization" in reply.headers["access-control-allow-headers"]
    assert reply.headers["access-control-max-age"] == "600"
    assert "Origin" in reply.headers["vary"]
    assert backend.calls("me") == 0


async def test_preflight_from_another_origin_or_for_another_method_is_refused(
        make_gateway: MakeGateway) -> None:
    gateway = make_gateway(CORS)
    async with gateway.client() as client:
        evil = await client.options("/api/items",
                                    headers={**PREFLIGHT, "origin": "https://evil.example"})
        method = await client.options("/api/items", headers={
            **PREFLIGHT, "access-control-request-method": "TRACE"})
        header = await client.options("/api/items", headers={
            **PREFLIGHT, "access-control-request-headers": "x-secret"})
    for reply in (evil, method, header):
        assert reply.status_code == 403
        assert reply.json()["error"] == "cors_forbidden"
        assert "access-control-allow-methods" not in reply.headers  # the browser gives up
    assert "access-control-allow-origin" not in evil.headers


async def test_own_refusals_carry_cors_headers_for_an_allowed_origin(
        make_gateway: MakeGateway, backend: Backend) -> None:
    gateway = make_gateway(CORS)
    async with gateway.client() as client:
        denied = await client.get("/api/items", headers={"origin": ORIGIN})
        backend.fault("me", 503, count=-1)
        unavailable = await client.get("/api/items", headers={
            "origin": ORIGIN, "authorization": "Bearer " + backend.token(ttl_s=600)})
        other = await client.get("/api/items", headers={"origin": "https://evil.example"})
    assert denied.status_code == 401
    assert unavailable.status_code == 503
    for reply in (denied, unavailable):
        assert reply.headers["access-control-allow-origin"] == ORIGIN
        assert "x-request-id" in reply.headers["access-control-expose-headers"]
    assert other.status_code == 401
    assert "access-control-allow-origin" not in other.headers


async def test_proxied_response_gets_exactly_one_set_of_cors_headers(
        make_gateway: MakeGateway) -> None:
    gateway = make_gateway(CORS)
    async with gateway.client() as client:
        reply = await client.get("/api/public/hello", headers={"origin": ORIGIN})
    assert reply.status_code == 200
    assert reply.headers.get_list("access-control-allow-origin") == [ORIGIN]


async def test_without_cors_preflights_are_forwarded_untouched(
        make_gateway: MakeGateway) -> None:
    gateway = make_gateway("")  # default route: user; a preflight still needs no token
    async with gateway.client() as client:
        reply = await client.options("/api/echo/x", headers=PREFLIGHT)
    assert reply.status_code != 401
    seen = {name for name, _ in reply.json()["headers"]}
    assert "access-control-request-method" in seen
    assert "access-control-allow-origin" not in reply.headers


def test_preflight_detection_needs_origin_and_requested_method() -> None:
    from gateway.cors import is_preflight

    assert is_preflight("OPTIONS", [(b"origin", b"x"), (b"access-control-request-method", b"GET")])
    assert not is_preflight("OPTIONS", [(b"origin", b"x")])
    assert not is_preflight("GET", [(b"origin", b"x"), (b"access-control-request-method", b"GET")])
    assert httpx  # the e2e tests above talk HTTP over real sockets
