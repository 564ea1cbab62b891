"""Framing toward the upstream is the gateway's own (docs/limits.md), under both HTTP servers
``gateway serve`` can run: the client's Content-Length/Transfer-Encoding are never forwarded as
received, and chunked trailer fields never become request headers. Raw sockets throughout: an
HTTP client library would not send these requests."""

from __future__ import annotations

import hashlib

import pytest

from gateway.server import HttpKind
from tests.conftest import Backend, MakeGateway
from tests.helpers.limits import HTTP_KINDS, serve
from tests.helpers.raw_http import chunked, head, request

PUBLIC = '[[routes]]\nmatch = "/api/echo/**"\naccess = "public"\n'
BODY = b"0123456789" * 4 + b"tail"  # 44 bytes


def _names(reply_json: dict[str, object]) -> list[tuple[str, str]]:
    headers = reply_json["headers"]
    assert isinstance(headers, list)
    return [(str(n).lower(), str(v)) for n, v in headers]


@pytest.mark.parametrize("http", HTTP_KINDS)
async def test_content_length_beside_chunked_is_not_forwarded(
        make_gateway: MakeGateway, backend: Backend, http: HttpKind) -> None:
    """``Content-Length: 4`` beside a chunked 44-byte body: the server frames by the chunks
    (or refuses the request); the upstream must get all 44 bytes with the gateway's framing,
    never the client's 4 (with which it read 4 bytes and took the rest as a next request)."""
    gateway = serve(make_gateway, PUBLIC, http=http, upstream=backend.url)
    host = gateway.url.removeprefix("http://")
    reply = await request(gateway.url, head(
        "POST", "/api/echo/cl-te", host, "Content-Length: 4", "Transfer-Encoding: chunked",
    ) + chunked(BODY[:20], BODY[20:]))
    if reply.status == 400:  # the server refused the ambiguous framing itself: also safe
        return
    assert reply.status == 200, reply.body
    seen = reply.json()
    assert seen["body_len"] == len(BODY)
    assert seen["body_sha256"] == hashlib.sha256(BODY).hexdigest()
    lengths = [v for n, v in _names(seen) if n == "content-length"]
    assert lengths in ([], [str(len(BODY))])
    assert "4" not in lengths


@pytest.mark.parametrize("http", HTTP_KINDS)
async def test_small_chunked_body_is_sent_with_its_exact_length(
        make_gateway: MakeGateway, backend: Backend, http: HttpKind) -> None:
    gateway = serve(make_gateway, PUBLIC, http=http, upstream=backend.url)
    host = gateway.url.removeprefix("http://")
    reply = await request(gateway.url, head(
        "POST", "/api/echo/small", host, "Transfer-Encoding: chunked") + chunked(BODY))
    assert reply.status == 200, reply.body
    seen = reply.json()
    assert seen["body_len"] == len(BODY)
    names = _names(seen)
    assert [v for n, v in names if n == "content-length"] == [str(len(BODY))]
    assert [v for n, v in names if n == "transfer-encoding"] == []


@pytest.mark.parametrize("http", HTTP_KINDS)
async def test_large_chunked_body_streams_chunked(
        make_gateway: MakeGateway, backend: Backend, http: HttpKind) -> None:
    gateway = serve(make_gateway, PUBLIC, http=http, upstream=backend.url)
    host = gateway.url.removeprefix("http://")
    big = bytes(range(256)) * 1024  # 256 KiB: more than the gateway reads ahead
    pieces = [big[i:i + 50_000] for i in range(0, len(big), 50_000)]
    reply = await request(gateway.url, head(
        "POST", "/api/echo/large", host, "Transfer-Encoding: chunked") + chunked(*pieces))
    assert reply.status == 200, reply.body
    seen = reply.json()
    assert seen["body_sha256"] == hashlib.sha256(big).hexdigest()
    names = _names(seen)
    assert [v for n, v in names if n == "transfer-encoding"] == ["chunked"]
    assert [v for n, v in names if n == "content-length"] == []


@pytest.mark.parametrize("http", HTTP_KINDS)
async def test_content_length_body_keeps_its_length(
        make_gateway: MakeGateway, backend: Backend, http: HttpKind) -> None:
    """A body framed by one Content-Length keeps that length upstream (backends such as
    Django read CONTENT_LENGTH and would see a chunked body as empty), once, and counted."""
    gateway = serve(make_gateway, PUBLIC, http=http, upstream=backend.url)
    host = gateway.url.removeprefix("http://")
    big = b"z" * 300_000
    reply = await request(gateway.url, head(
        "POST", "/api/echo/cl", host, f"Content-Length: {len(big)}") + big)
    assert reply.status == 200, reply.body
    seen = reply.json()
    assert seen["body_len"] == len(big)
    names = _names(seen)
    assert [v for n, v in names if n == "content-length"] == [str(len(big))]
    assert [v for n, v in names if n == "transfer-encoding"] == []


@pytest.mark.parametrize("http", HTTP_KINDS)
async def test_trailer_cookie_does_not_authenticate(
        make_gateway: MakeGateway, backend: Backend, http: HttpKind) -> None:
    """A chunked request without credentials whose trailer (in the same packet) carries a
    valid session cookie: trailer fields are not request headers, so it is unauthenticated.
    (Under httptools, uvicorn appended them to the headers before the app read them.)"""
    gateway = serve(make_gateway, http=http, upstream=backend.url)
    host = gateway.url.removeprefix("http://")
    token = backend.token(1)
    reply = await request(gateway.url, head(
        "POST", "/api/echo/trailer", host, "Accept: application/json",
        "Transfer-Encoding: chunked",
    ) + chunked(BODY, trailers=(f"Cookie: userToken={token}", "X-Trailer: yes")))
    assert reply.status == 401, reply.body
    # The same token as a real header is accepted: the refusal above is about the trailer.
    ok = await request(gateway.url, head(
        "POST", "/api/echo/header", host, "Accept: application/json",
        f"Cookie: userToken={token}", "Transfer-Encoding: chunked") + chunked(BODY))
    assert ok.status == 200, ok.body


@pytest.mark.parametrize("http", HTTP_KINDS)
async def test_trailer_fields_never_reach_the_upstream(
        make_gateway: MakeGateway, backend: Backend, http: HttpKind) -> None:
    gateway = serve(make_gateway, PUBLIC, http=http, upstream=backend.url)
    host = gateway.url.removeprefix("http://")
    reply = await request(gateway.url, head(
        "POST", "/api/echo/trailer", host, "Transfer-Encoding: chunked", "Trailer: X-Trailer",
    ) + chunked(BODY, trailers=("X-Trailer: injected",)))
    assert reply.status == 200, reply.body
    seen = reply.json()
    assert seen["body_len"] == len(BODY)
    assert [v for n, v in _names(seen) if n == "x-trailer"] == []
