"""Limits on what one client may send or hold (docs/limits.md), on real sockets: request head
size and header count (431), body size (413), Host (400), slow and idle connections (closed),
upstream connections per client (429), and ``Expect: 100-continue`` toward a silent upstream.

Gateways started with :func:`tests.helpers.limits.serve` run with the server options of
``gateway serve``; those started with plain ``make_gateway`` run under stock uvicorn, as
``gateway.asgi:app`` would under any ASGI server, for the limits the app keeps itself."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.server import HttpKind
from tests.conftest import Backend, MakeGateway, RunningGateway
from tests.helpers.limits import HTTP_KINDS, serve
from tests.helpers.raw_http import chunked, closed_by_peer, connect, head, read_reply, request
from tests.servers import ServerProcess, ServerThread, free_port, python_module

PUBLIC = '[[routes]]\nmatch = "/**"\naccess = "public"\n'
KiB = 1024


def _host(gateway: RunningGateway) -> str:
    return gateway.url.removeprefix("http://")


def _error(reply: Any, status: int, error: str) -> None:
    assert reply.status == status, reply.body
    assert reply.header("content-type") == "application/json"
    assert reply.json()["error"] == error
    assert reply.header("x-request-id")


# -- request heads -----------------------------------------------------------------------------


@pytest.mark.parametrize("http", HTTP_KINDS)
async def test_oversized_header_is_431(make_gateway: MakeGateway, backend: Backend,
                                       http: HttpKind) -> None:
    gateway = serve(make_gateway, PUBLIC, http=http, upstream=backend.url)
    reply = await request(gateway.url, head("GET", "/api/echo/big", _host(gateway),
                                            "X-Big: " + "a" * (200 * KiB)))
    _error(reply, 431, "headers_too_large")
    assert reply.header("connection") == "close"
    assert backend.calls("echo") == 0
    fine = await request(gateway.url, head("GET", "/api/echo/ok", _host(gateway),
                                           "X-Fine: " + "a" * (32 * KiB)))
    assert fine.status == 200


@pytest.mark.parametrize("http", HTTP_KINDS)
async def test_endless_head_is_refused_before_it_ends(make_gateway: MakeGateway,
                                                      backend: Backend, http: HttpKind) -> None:
    """A head that never ends (the 16 MiB header of the review) is answered 431 once it passes
    the limit, while the client is still sending: it is never buffered whole."""
    gateway = serve(make_gateway, PUBLIC, http=http, upstream=backend.url)
    reader, writer = await connect(gateway.url)
    try:
        writer.write(f"GET /api/echo/x HTTP/1.1\r\nHost: {_host(gateway)}\r\n".encode())
        line = b"X-Pad: " + b"p" * 1000 + b"\r\n"
        with contextlib.suppress(ConnectionError):
            for _ in range(1024):  # up to 1 MiB, never the blank line that ends a head
                writer.write(line)
                await writer.drain()
        reply = await read_reply(reader)
    finally:
        writer.close()
    _error(reply, 431, "headers_too_large")


@pytest.mark.parametrize("http", HTTP_KINDS)
async def test_head_limit_is_per_request_on_a_keepalive_connection(
        make_gateway: MakeGateway, backend: Backend, http: HttpKind) -> None:
    """Twenty requests with 1 KiB heads, with and without bodies, on one connection under a
    4 KiB limit: each head is counted on its own."""
    gateway = serve(make_gateway, PUBLIC + "[server]\nmax_head_bytes = 4096\n", http=http,
                    upstream=backend.url)
    reader, writer = await connect(gateway.url)
    try:
        for i in range(20):
            extra = ("Content-Length: 5",) if i % 2 else ()
            writer.write(head("POST" if i % 2 else "GET", f"/api/echo/{i}", _host(gateway),
                              "X-Pad: " + "p" * KiB, *extra) + (b"hello" if i % 2 else b""))
            reply = await read_reply(reader)
            assert reply.status == 200, (i, reply.body)
    finally:
        writer.close()


@pytest.mark.parametrize("http", HTTP_KINDS)
async def test_too_many_headers_is_431(make_gateway: MakeGateway, backend: Backend,
                                       http: HttpKind) -> None:
    gateway = serve(make_gateway, PUBLIC, http=http, upstream=backend.url)
    lines = [f"X-H{i}: {i}" for i in range(150)]
    reply = await request(gateway.url, head("GET", "/api/echo/many", _host(gateway), *lines))
    _error(reply, 431, "too_many_headers")
    assert backend.calls("echo") == 0
    ok = await request(gateway.url, head("GET", "/api/echo/some", _host(gateway), *lines[:90]))
    assert ok.status == 200


async def test_head_limits_hold_under_any_asgi_server(make_gateway: MakeGateway,
                                                      backend: Backend) -> None:
    """Under stock uvicorn (httptools), without the gateway's protocol class, the app itself
    refuses a large head and too many headers."""
    gateway = make_gateway(PUBLIC + "[server]\nmax_head_bytes = 8192\nmax_headers = 20\n")
    big = await request(gateway.url, head("GET", "/api/echo/big", _host(gateway),
                                          "X-Big: " + "a" * (20 * KiB)))
    _error(big, 431, "headers_too_large")
    many = await request(gateway.url, head("GET", "/api/echo/many", _host(gateway),
                                           *[f"X-H{i}: {i}" for i in range(30)]))
    _error(many, 431, "too_many_headers")
    assert backend.calls("echo") == 0


@pytest.mark.parametrize("value", ["a@b", "user:pw@example.com", "exa mple.com", "a/b",
                                   "example.com:99999", "[::1", ""])
async def test_malformed_host_is_400(make_gateway: MakeGateway, backend: Backend,
                                     value: str) -> None:
    gateway = make_gateway(PUBLIC)
    reply = await request(gateway.url, f"GET /api/echo/h HTTP/1.1\r\nHost: {value}\r\n\r\n"
                          .encode())
    assert reply.status == 400, reply.body
    if reply.header("content-type") == "application/json":  # else the server refused it
        assert reply.json()["error"] == "invalid_host"
    assert backend.calls("echo") == 0


async def test_allowed_hosts(make_gateway: MakeGateway, backend: Backend) -> None:
    gateway = make_gateway(PUBLIC + '[server]\nallowed_hosts = ["app.example.com", '
                           '"*.example.org"]\n')

    async def status(host: str, target: str = "/api/echo/h") -> int:
        reply = await request(gateway.url, f"GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n"
                              .encode())
        return reply.status

    assert await status("app.example.com") == 200
    assert await status("APP.example.com:8443") == 200
    assert await status("a.b.example.org") == 200
    assert await status("evil.example.com") == 400
    assert await status("example.org") == 400
    assert await status("127.0.0.1") == 400
    # Health checks come with whatever Host the orchestrator uses.
    assert await status("10.1.2.3:8080", "/__gateway/health") == 200


# -- request bodies ----------------------------------------------------------------------------


async def test_announced_body_over_limit_is_413_without_reaching_upstream(
        make_gateway: MakeGateway, backend: Backend) -> None:
    gateway = make_gateway(PUBLIC + "[server]\nmax_body_bytes = 100000\n")
    reader, writer = await connect(gateway.url)
    try:
        # Only the head: the gateway answers without waiting for (or asking for) the body.
        writer.write(head("POST", "/api/echo/up", _host(gateway), "Content-Length: 200000",
                          "Expect: 100-continue"))
        reply = await read_reply(reader)
    finally:
        writer.close()
    _error(reply, 413, "body_too_large")
    assert reply.header("connection") == "close"
    assert backend.calls("echo") == 0


@pytest.mark.parametrize("http", HTTP_KINDS)
async def test_chunked_body_over_limit_is_cut_with_413(make_gateway: MakeGateway,
                                                       backend: Backend, http: HttpKind) -> None:
    gateway = serve(make_gateway, PUBLIC + "[server]\nmax_body_bytes = 100000\n", http=http,
                    upstream=backend.url)
    pieces = [b"x" * 30_000] * 10
    reply = await request(gateway.url, head("POST", "/api/echo/up", _host(gateway),
                                            "Transfer-Encoding: chunked") + chunked(*pieces))
    _error(reply, 413, "body_too_large")
    under = await request(gateway.url, head("POST", "/api/echo/up", _host(gateway),
                                            "Transfer-Encoding: chunked")
                          + chunked(*pieces[:3]))
    assert under.status == 200
    assert under.json()["body_len"] == 90_000


async def test_uploads_under_the_default_limit_stream(make_gateway: MakeGateway,
                                                      backend: Backend) -> None:
    """The default limit (100 MiB) leaves ordinary uploads alone: 8 MiB, chunked, intact."""
    gateway = make_gateway(PUBLIC)

    async def body() -> AsyncIterator[bytes]:
        for _ in range(128):
            yield b"u" * (64 * KiB)

    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
        reply = await client.post("/test/upload", content=body())
    assert reply.status_code == 200
    assert reply.json()["received"] == 8 * 1024 * KiB


# -- slow and idle clients ---------------------------------------------------------------------

TIMEOUTS = PUBLIC + "[server]\nhead_timeout_s = 0.5\nkeepalive_timeout_s = 0.5\n"


@pytest.mark.parametrize("http", HTTP_KINDS)
async def test_header_dripping_connection_is_closed(make_gateway: MakeGateway,
                                                    backend: Backend, http: HttpKind) -> None:
    gateway = serve(make_gateway, TIMEOUTS, http=http, upstream=backend.url)
    reader, writer = await connect(gateway.url)

    async def drip() -> None:
        writer.write(f"GET /api/echo/x HTTP/1.1\r\nHost: {_host(gateway)}\r\n".encode())
        with contextlib.suppress(ConnectionError, OSError):
            for i in range(200):
                writer.write(f"X-Drip-{i}: 1\r\n".encode())
                await writer.drain()
                await asyncio.sleep(0.1)

    dripping = asyncio.create_task(drip())
    try:
        assert await closed_by_peer(reader, within=15), "a dripping head was never cut off"
    finally:
        dripping.cancel()
        writer.close()
    assert backend.calls("echo") == 0


@pytest.mark.parametrize("http", HTTP_KINDS)
async def test_silent_new_connection_is_closed(make_gateway: MakeGateway, backend: Backend,
                                               http: HttpKind) -> None:
    gateway = serve(make_gateway, TIMEOUTS, http=http, upstream=backend.url)
    reader, writer = await connect(gateway.url)
    try:
        assert await closed_by_peer(reader, within=15)
    finally:
        writer.close()


@pytest.mark.parametrize("http", HTTP_KINDS)
async def test_idle_keepalive_connection_is_closed(make_gateway: MakeGateway,
                                                   backend: Backend, http: HttpKind) -> None:
    """``keepalive_timeout_s`` (0.5 s here) reaches the server: the connection is closed long
    before uvicorn's own default of 5 s."""
    gateway = serve(make_gateway, TIMEOUTS.replace("head_timeout_s = 0.5", "head_timeout_s = 30"),
                    http=http, upstream=backend.url)
    reader, writer = await connect(gateway.url)
    try:
        writer.write(head("GET", "/api/echo/ka", _host(gateway)))
        assert (await read_reply(reader)).status == 200
        assert await closed_by_peer(reader, within=4)
    finally:
        writer.close()


@pytest.mark.parametrize("http", HTTP_KINDS)
async def test_slow_answer_is_not_cut_by_the_head_timeout(make_gateway: MakeGateway,
                                                          backend: Backend,
                                                          http: HttpKind) -> None:
    gateway = serve(make_gateway, TIMEOUTS, http=http, upstream=backend.url)
    reply = await request(gateway.url, head("GET", "/test/slow?delay=1.5", _host(gateway)))
    assert reply.status == 200


# -- upstream connections per client -----------------------------------------------------------


class _HoldingUpstream:
    """An upstream whose ``/hold`` reads its body until the client goes away (a slow
    upload), counting the requests it has started; anything else answers at once."""

    def __init__(self) -> None:
        self.started = 0
        self._lock = threading.Lock()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/hold":
            with self._lock:
                self.started += 1
            while (await receive()).get("more_body", False):
                pass
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok"})


async def test_one_client_cannot_take_the_upstream_pool(make_gateway: MakeGateway) -> None:
    """Client a holds its bound (2) with slow uploads: its next request waits the connect
    timeout for one of them, then gets 429; client b is served at once meanwhile."""
    upstream = _HoldingUpstream()
    with ServerThread(upstream) as server:
        gateway = make_gateway(
            PUBLIC + '[server]\ntrusted_proxies = ["127.0.0.1"]\n'
            "[upstream]\nmax_connections = 4\nmax_connections_per_client = 2\n"
            "connect_timeout_s = 0.5\n",
            upstream=server.url)
        a, b = "X-Forwarded-For: 203.0.113.1", "X-Forwarded-For: 203.0.113.2"
        holders = []
        try:
            for _ in range(2):  # two slow uploads from client a, held mid-body
                reader, writer = await connect(gateway.url)
                writer.write(head("POST", "/hold", _host(gateway), a,
                                  "Content-Length: 1000000") + b"h" * 100_000)
                await writer.drain()
                holders.append((reader, writer))
            deadline = time.monotonic() + 15
            while upstream.started < 2:
                assert time.monotonic() < deadline, "the slow uploads never reached upstream"
                await asyncio.sleep(0.05)
            third = await request(gateway.url, head("GET", "/next", _host(gateway), a))
            _error(third, 429, "too_many_connections")
            assert third.header("retry-after") == "1"
            other = await request(gateway.url, head("GET", "/next", _host(gateway), b))
            assert other.status == 200
        finally:
            for _, writer in holders:
                writer.close()
        # Once a's uploads are gone, a is served again.
        deadline = time.monotonic() + 15
        while (await request(gateway.url, head("GET", "/next", _host(gateway), a))).status != 200:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)


async def test_a_burst_from_one_client_past_its_bound_is_served(make_gateway: MakeGateway,
                                                                backend: Backend) -> None:
    """The bound is on connections held, not on requests: 30 concurrent quick requests from
    one client with a bound of 2 queue for its slots and are all answered."""
    gateway = make_gateway(PUBLIC + "[upstream]\nmax_connections_per_client = 2\n")
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30,
                                 limits=httpx.Limits(max_connections=30)) as client:
        replies = await asyncio.gather(*(client.get(f"/api/echo/{i}") for i in range(30)))
    assert [r.status_code for r in replies] == [200] * 30


# -- Expect: 100-continue ----------------------------------------------------------------------


async def test_expect_continue_to_a_silent_upstream_times_out(make_gateway: MakeGateway
                                                              ) -> None:
    """The upstream accepts and never answers. The client's ``Expect: 100-continue`` is the
    gateway's to answer; sent on, the gateway's client waited for a 100 forever before its
    read timeout even started. Now: 504 after ``read_timeout_s``."""
    received = bytearray()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                received.extend(data)
        writer.close()

    listener = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        gateway = make_gateway(PUBLIC + "[upstream]\nread_timeout_s = 0.5\n",
                               upstream=f"http://127.0.0.1:{port}")
        reply = await request(gateway.url, head(
            "POST", "/x", _host(gateway), "Expect: 100-continue", "Content-Length: 5") + b"hello",
            timeout=20)
    finally:
        listener.close()
    _error(reply, 504, "upstream_timeout")
    assert b"expect" not in bytes(received).lower()


# -- readiness and metrics on their own listener -----------------------------------------------


def test_admin_listener_under_gateway_serve(tmp_path: Path, backend: Backend) -> None:
    """``server.admin_port``: readiness and metrics move to their own listener (bind it to a
    private interface); health stays on the main port for load balancers; nothing on the admin
    listener is ever proxied."""
    port, admin = free_port(), free_port()
    config = tmp_path / "gateway.toml"
    config.write_text(PUBLIC + f"""
[server]
port = {port}
admin_port = {admin}

[upstream]
url = "{backend.url}"

[audit]
sink = "{tmp_path / 'audit.jsonl'}"
""")
    gateway = ServerProcess(python_module("gateway", "serve", "--config", str(config)), port)
    gateway.start()
    try:
        main, side = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin}"
        assert httpx.get(main + "/__gateway/health").status_code == 200
        for name in ("ready", "metrics"):
            hidden = httpx.get(f"{main}/__gateway/{name}")
            assert hidden.status_code == 404
            assert hidden.json()["error"] == "not_found"
        assert httpx.get(side + "/__gateway/ready").json()["status"] == "ready"
        metrics = httpx.get(side + "/__gateway/metrics")
        assert metrics.status_code == 200
        assert "gateway_" in metrics.text
        assert httpx.get(side + "/__gateway/health").status_code == 200
        backend.reset()
        assert httpx.get(side + "/api/echo/x").status_code == 404
        assert backend.calls("echo") == 0
        assert httpx.get(main + "/api/echo/x").status_code == 200
    finally:
        gateway.stop()


@pytest.mark.parametrize("http", HTTP_KINDS)
async def test_websocket_outlives_the_head_timeout(make_gateway: MakeGateway, backend: Backend,
                                                   http: HttpKind) -> None:
    """The protocol classes of ``gateway serve`` hand upgrades over to the WebSocket protocol
    with no head timer left running: a socket idle past ``head_timeout_s`` still relays."""
    import websockets

    gateway = serve(make_gateway, '[[routes]]\nmatch = "/ws/**"\naccess = "public"\n'
                    "[server]\nhead_timeout_s = 0.3\nkeepalive_timeout_s = 0.3\n",
                    http=http, upstream=backend.url)
    async with websockets.connect("ws" + gateway.url.removeprefix("http") + "/ws/echo") as ws:
        await ws.recv()  # the backend's hello
        await asyncio.sleep(1.0)
        await ws.send("still here")
        assert await ws.recv() == "still here"
