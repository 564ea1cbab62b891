"""Request and response headers through the proxy on real sockets (docs/behaviour.md#proxying):
hop-by-hop headers removed, duplicates and Set-Cookie kept apart, X-Forwarded-* rebuilt or
kept from a trusted peer, request ids, identity headers never taken from the client, and
header bytes the upstream cannot be sent refused cleanly.

Requests go over a raw socket (tests/helpers/raw_http.py): no client library adds, merges or
re-encodes a header.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from gateway.proxy import Upstream, upstream_headers
from gateway.request import Request, TrustedProxies
from gateway.settings import UpstreamSettings
from tests.conftest import Backend, MakeGateway, RunningGateway
from tests.helpers.proxy import PUBLIC, assert_clean_error, echoed_pairs, values
from tests.helpers.raw_http import raw_request
from tests.servers import ServerThread, fixed_reply_app

# -- headers -----------------------------------------------------------------------------------


async def test_request_hop_by_hop_headers_are_removed(gw: RunningGateway) -> None:
    response = await raw_request(gw.url, "/api/echo/hop", [
        ("Connection", "x-custom-hop, keep-alive"),
        ("X-Custom-Hop", "1"),
        ("Keep-Alive", "timeout=5"),
        ("TE", "trailers"),
        ("Trailer", "x-t"),
        ("Upgrade", "websocket"),
        ("Proxy-Authorization", "Basic dXNlcjpwYXNz"),
        ("Proxy-Connection", "keep-alive"),
        ("X-Kept", "yes"),
    ])
    assert response.status == 200
    seen = echoed_pairs(response.json())
    names = {name for name, _ in seen}
    for gone in ("x-custom-hop", "keep-alive", "te", "trailer", "upgrade",
                 "proxy-authorization", "proxy-connection"):
        assert gone not in names, seen
    # aiohttp may add its own Connection for its own hop, never the client's.
    assert all("x-custom-hop" not in v.lower() for v in values(seen, "connection")), seen
    assert values(seen, "x-kept") == ["yes"]


async def test_request_connection_named_header_removed_via_httpx(gw: RunningGateway) -> None:
    async with gw.client() as client:
        response = await client.get("/api/echo/hop2", headers={
            "Connection": "x-custom-hop", "X-Custom-Hop": "1", "X-Other": "2"})
    seen = echoed_pairs(response.json())
    assert values(seen, "x-custom-hop") == []
    assert values(seen, "x-other") == ["2"]


async def test_response_hop_by_hop_headers_are_removed(gw: RunningGateway) -> None:
    response = await raw_request(gw.url, "/test/hop", [("Connection", "close")])
    assert response.status == 200
    names = {name for name, _ in response.headers}
    for gone in ("x-hop-custom", "keep-alive", "proxy-authenticate", "trailer", "upgrade"):
        assert gone not in names, response.headers
    assert all("x-hop-custom" not in v for v in response.header_list("connection"))
    assert response.header_list("x-kept") == ["yes"]
    assert response.json() == {"hop": True}


async def test_every_set_cookie_is_its_own_header(gw: RunningGateway) -> None:
    async with gw.client() as client:
        response = await client.get("/test/cookies")
    assert response.status_code == 200
    assert response.headers.get_list("set-cookie") == [
        "a=1; Path=/", "b=2; Path=/", "c=3; Path=/; HttpOnly"]


async def test_no_duplicate_server_or_date_headers(gw: RunningGateway) -> None:
    response = await raw_request(gw.url, "/test/headers-out", [("Connection", "close")])
    assert response.status == 200
    assert len(response.header_list("server")) == 1, response.headers
    assert len(response.header_list("date")) == 1, response.headers


async def test_duplicate_request_headers_kept_in_order(gw: RunningGateway) -> None:
    response = await raw_request(gw.url, "/api/echo/dup", [
        ("X-Dup", "1"), ("Accept", "a/b"), ("X-Dup", "2"), ("Accept", "c/d")])
    seen = [(n, v) for n, v in echoed_pairs(response.json()) if n in ("x-dup", "accept")]
    assert seen == [("x-dup", "1"), ("accept", "a/b"), ("x-dup", "2"), ("accept", "c/d")]


# -- X-Forwarded-* -----------------------------------------------------------------------------


async def test_forwarded_headers_from_untrusted_peer_are_rebuilt(gw: RunningGateway) -> None:
    netloc = urlsplit(gw.url).netloc
    response = await raw_request(gw.url, "/api/echo/xff", [
        ("X-Forwarded-For", "6.6.6.6"),
        ("X-Forwarded-For", "7.7.7.7"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "evil.example"),
        ("Forwarded", "for=6.6.6.6;proto=https"),
        # WSGI/CGI servers read "_" as "-": these would pass as the proxy's own headers.
        ("X_Forwarded_For", "6.6.6.6"),
        ("X_Forwarded_Host", "evil.example"),
        ("x_request_id", "spoofed"),
        # Other addressing headers proxies set.
        ("X-Real-IP", "6.6.6.6"),
        ("X-Forwarded-Port", "443"),
        ("X-Forwarded-Prefix", "/admin"),
        ("True-Client-IP", "6.6.6.6"),
    ])
    seen = echoed_pairs(response.json())
    assert values(seen, "x-forwarded-for") == ["127.0.0.1"]
    assert values(seen, "x-forwarded-proto") == ["http"]
    assert values(seen, "x-forwarded-host") == [netloc]
    assert values(seen, "forwarded") == []
    for name in ("x_forwarded_for", "x_forwarded_host", "x_request_id", "x-real-ip",
                 "x-forwarded-port", "x-forwarded-prefix", "true-client-ip"):
        assert values(seen, name) == [], name


async def test_forwarded_headers_without_client_values(gw: RunningGateway) -> None:
    response = await raw_request(gw.url, "/api/echo/xff", host=False,
                                 headers=[("Host", "app.example.com:8443")])
    seen = echoed_pairs(response.json())
    assert values(seen, "x-forwarded-for") == ["127.0.0.1"]
    assert values(seen, "x-forwarded-proto") == ["http"]
    assert values(seen, "x-forwarded-host") == ["app.example.com:8443"]
    # The upstream gets its own Host, not the client's.
    assert values(seen, "host") != ["app.example.com:8443"]


async def test_forwarded_chain_kept_from_trusted_peer(make_gateway: MakeGateway) -> None:
    gateway = make_gateway(PUBLIC + '\n[server]\ntrusted_proxies = ["127.0.0.1"]\n')
    response = await raw_request(gateway.url, "/api/echo/xff", [
        ("X-Forwarded-For", "6.6.6.6, 10.0.0.1"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "app.example.com"),
        ("X-Real-IP", "6.6.6.6"),
        ("X_Forwarded_For", "9.9.9.9"),
    ])
    seen = echoed_pairs(response.json())
    assert values(seen, "x-real-ip") == ["6.6.6.6"]  # a trusted proxy's word
    assert values(seen, "x_forwarded_for") == []  # no peer may use the "_" spelling
    assert values(seen, "x-forwarded-for") == ["6.6.6.6, 10.0.0.1, 127.0.0.1"]
    assert values(seen, "x-forwarded-proto") == ["https"]
    assert values(seen, "x-forwarded-host") == ["app.example.com"]

    plain = await raw_request(gateway.url, "/api/echo/xff")
    seen = echoed_pairs(plain.json())
    assert values(seen, "x-forwarded-for") == ["127.0.0.1"]
    assert values(seen, "x-forwarded-host") == [urlsplit(gateway.url).netloc]


# -- request ids -------------------------------------------------------------------------------


async def test_request_id_kept_and_seen_by_upstream(gw: RunningGateway) -> None:
    async with gw.client() as client:
        response = await client.get("/api/echo/rid", headers={"x-request-id": "abc-123"})
    assert response.headers.get_list("x-request-id") == ["abc-123"]
    assert values(echoed_pairs(response.json()), "x-request-id") == ["abc-123"]


@pytest.mark.parametrize("bad", ["has space", "x" * 200, "a,b", "é"])
async def test_unacceptable_request_id_is_replaced(gw: RunningGateway, bad: str) -> None:
    response = await raw_request(gw.url, "/api/echo/rid", [("X-Request-Id", bad)])
    rid = response.header_list("x-request-id")
    assert len(rid) == 1 and rid[0] != bad
    assert values(echoed_pairs(response.json()), "x-request-id") == rid


async def test_request_id_created_and_seen_by_upstream(gw: RunningGateway) -> None:
    async with gw.client() as client:
        one = await client.get("/api/echo/rid")
        two = await client.get("/api/echo/rid")
    rid = one.headers.get_list("x-request-id")
    assert len(rid) == 1 and rid[0]
    assert values(echoed_pairs(one.json()), "x-request-id") == rid
    assert two.headers["x-request-id"] != rid[0]


@pytest.mark.parametrize(("target", "status"), [
    ("/api/echo/x", 200),
    ("/test/status/418", 418),
    ("/test/status/500", 500),
    ("/__gateway/health", 200),
    ("/__gateway/nope", 404),
    ("/private/page", 401),
    ("/a/%00", 400),
])
async def test_request_id_on_every_response(gw: RunningGateway, target: str,
                                            status: int) -> None:
    sent = await raw_request(gw.url, target, [("X-Request-Id", "given-1")])
    assert sent.status == status
    assert sent.header_list("x-request-id") == ["given-1"]
    made = await raw_request(gw.url, target)
    assert made.status == status
    assert len(made.header_list("x-request-id")) == 1
    assert made.header_list("x-request-id")[0] not in ("", "given-1")


# -- identity headers --------------------------------------------------------------------------

_SPOOFED = [
    ("X-Auth-User-Id", "999"),
    ("x_auth_user_id", "999"),
    ("X-Auth-Token-Type", "user"),
    ("X-AUTH-USER", "eyJpZCI6OTk5fQ"),
    ("X-Refreshed-Token", "forged"),
    ("x_refreshed_token", "forged"),
    ("X-Auth-Roles", "admin"),
]


def _identity_names(seen: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(n, v) for n, v in seen
            if n.replace("_", "-").startswith("x-auth-") or
            n.replace("_", "-") == "x-refreshed-token"]


async def test_client_identity_headers_never_reach_upstream(gw: RunningGateway) -> None:
    response = await raw_request(gw.url, "/api/echo/id", _SPOOFED)
    assert response.status == 200
    assert _identity_names(echoed_pairs(response.json())) == []


@pytest.mark.parametrize("authorization", [
    "Bearer not-a-token", "Basic dXNlcjpwYXNz", "Bearer", "JWT x.y.z"])
async def test_client_authorization_without_valid_token_not_forwarded(
        gw: RunningGateway, authorization: str) -> None:
    response = await raw_request(gw.url, "/api/echo/auth",
                                 [("Authorization", authorization), *_SPOOFED])
    assert response.status == 200, response.body
    seen = echoed_pairs(response.json())
    assert values(seen, "authorization") == []
    assert _identity_names(seen) == []


async def test_valid_token_identity_replaces_spoofed_one(gw: RunningGateway,
                                                         backend: Backend) -> None:
    token = backend.token(1)
    response = await raw_request(gw.url, "/api/echo/auth",
                                 [("Authorization", f"Bearer {token}"), *_SPOOFED])
    assert response.status == 200, response.body
    seen = echoed_pairs(response.json())
    assert values(seen, "authorization") == [f"Bearer {token}"]
    assert values(seen, "x-auth-user-id") == ["1"]
    assert values(seen, "x-auth-token-type") == ["user"]
    assert len(values(seen, "x-auth-user")) == 1
    assert values(seen, "x-refreshed-token") == []
    assert [n for n, _ in _identity_names(seen)] == [
        "x-auth-user-id", "x-auth-token-type", "x-auth-user"]


# -- header bytes -----------------------------------------------------------------------------


@pytest.mark.parametrize("note", [
    "café ☕ ü",
    "𝄞 four-byte 😀",
    "nel\u0085 ls\u2028 ps\u2029 nbsp\u00a0",  # Unicode line breaks: still no CR/LF bytes
], ids=["two-and-three-byte", "four-byte", "unicode-line-breaks"])
async def test_utf8_header_bytes_reach_the_upstream_unchanged(gw: RunningGateway,
                                                              note: str) -> None:
    # raw_request writes latin-1: hand it the UTF-8 bytes as latin-1 characters.
    sent = note.encode("utf-8")
    reply = await raw_request(gw.url, "/api/echo/x", [("X-Note", sent.decode("latin-1")),
                                                      ("X-Other", "plain")])
    assert reply.status == 200, reply.body
    # The reference backend (Starlette) reads header bytes as latin-1: compare bytes.
    seen = echoed_pairs(reply.json())
    assert [v.encode("latin-1") for v in values(seen, "x-note")] == [sent]
    assert values(seen, "x-other") == ["plain"]


@pytest.mark.parametrize("value", [
    b"J\xf6rg",  # Latin-1
    b"caf\xe9 \xe2\x98\x95",  # Latin-1 next to UTF-8
    b"\xed\xa0\x80",  # an encoded surrogate: not UTF-8
    b"\xc0\xaf",  # an overlong "/": not UTF-8
], ids=["latin-1", "mixed", "surrogate", "overlong"])
async def test_non_utf8_header_bytes_are_refused_not_altered(
        gw: RunningGateway, backend: Backend, value: bytes) -> None:
    """aiohttp can only write header text as UTF-8: other bytes cannot reach the upstream as
    sent, so the request is refused (400 JSON) rather than forwarded altered."""
    before = backend.calls("echo")
    reply = await raw_request(gw.url, "/api/echo/x", [("X-Name", value.decode("latin-1"))])
    assert assert_clean_error(reply, 400)["error"] == "invalid_header"
    assert backend.calls("echo") == before


def _forwarding_app(upstream_url: str, added: list[tuple[bytes, bytes]]) -> Any:
    """``Upstream.forward`` alone behind uvicorn, adding ``added`` to every request's headers
    unchecked: a caller that let a control character through."""
    upstream = Upstream(UpstreamSettings(url=upstream_url, max_connections=1))

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await upstream.start()
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await upstream.close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        request = Request(scope, TrustedProxies(()))
        request.path = scope["path"]
        headers = upstream_headers(request, own_cookies=None, token=None)
        headers.extend((k.decode("latin-1"), v.decode("latin-1")) for k, v in added)
        await upstream.forward(request, receive, send, headers=headers)

    return app


@pytest.mark.parametrize("added", [
    (b"x-auth-user-id", b"1\r\nx-injected: yes"),
    (b"x-auth-user-id", b"1\nx-injected: yes"),
    (b"x-auth-user", b"a\x00b"),
    (b"x-auth-token-type", b"user\x7f"),
], ids=["crlf", "lf", "nul", "del"])
async def test_header_aiohttp_refuses_is_a_clean_502(backend: Backend,
                                                     added: tuple[bytes, bytes]) -> None:
    """aiohttp raises ValueError for a control character in a header: the client gets a JSON
    502 (not a 500 text/plain), nothing reaches the upstream, and the pool slot is given back
    (with one slot, three requests in a row would otherwise end in 503s)."""
    before = backend.calls("echo")
    with ServerThread(_forwarding_app(backend.url, [added])) as forwarder:
        replies = [await raw_request(forwarder.url, "/api/echo/x") for _ in range(3)]
    for reply in replies:
        assert assert_clean_error(reply, 502)["error"] == "upstream_request_invalid"
    assert backend.calls("echo") == before


@pytest.mark.parametrize(("user_id", "header"), [
    ("1\r\nx-injected: yes", "1%0D%0Ax-injected: yes"),
    ("jürgen", "jürgen"),
    ("50%", "50%25"),
])
async def test_backend_chosen_user_ids_cannot_break_header_lines(
        make_gateway: MakeGateway, backend: Backend, user_id: str, header: str) -> None:
    # An auth backend whose /auth/me accepts any token, for a user with this id.
    me = json.dumps({"success": True, "data": {"id": user_id, "roles": []}}).encode()
    with ServerThread(fixed_reply_app(me)) as auth:
        gateway = make_gateway(f'[auth]\nurl = "{auth.url}"\n')
        async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
            reply = await client.get("/api/echo/x", headers={"authorization": "Bearer t0ken"})
    assert reply.status_code == 200, reply.text
    seen = echoed_pairs(reply.json())
    assert [v.encode("latin-1") for v in values(seen, "x-auth-user-id")] == [header.encode()]
    assert values(seen, "x-injected") == []
