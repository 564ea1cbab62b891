"""Proxying on real sockets (docs/behaviour.md#proxying,
docs/behaviour.md#own-endpoints): the gateway under uvicorn in front of the
reference backend, driven with httpx and, where exact bytes matter, a raw socket."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import os
import re
import sys
import tomllib
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psutil
import pytest

from gateway.app import create_app
from gateway.proxy import Upstream, upstream_headers
from gateway.request import Request, TrustedProxies
from gateway.settings import UpstreamSettings, settings_from_mapping
from tests.conftest import Backend, MakeGateway, RunningGateway
from tests.servers import (
    ServerProcess,
    ServerThread,
    fixed_reply_app,
    free_port,
    python_module,
)

PUBLIC = """
[[routes]]
match = "/api/echo/**"
access = "public"

[[routes]]
match = "/test/**"
access = "public"
"""

MiB = 1024 * 1024

# What a gateway error body must never reveal.
_INTERNAL = re.compile(
    r"Traceback|Exception|Error\b|Errno|aiohttp|httpx|uvicorn|asyncio|\.py\b|"
    r"127\.0\.0\.1|localhost|:\d{2,5}\b"
)


# -- a minimal raw HTTP/1.1 client, for exact request bytes ------------------------------------


@dataclass
class RawResponse:
    status: int
    headers: list[tuple[str, str]]  # names lower-cased, in order, duplicates kept
    body: bytes

    def get_list(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k == name]

    def json(self) -> Any:
        return json.loads(self.body)


async def _read_body(reader: asyncio.StreamReader, headers: list[tuple[str, str]],
                     method: str, status: int) -> bytes:
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        return b""
    names = dict(headers)
    if "chunked" in names.get("transfer-encoding", "").lower():
        out = bytearray()
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                while (await reader.readline()) not in (b"\r\n", b""):
                    pass  # trailers
                return bytes(out)
            out += await reader.readexactly(size)
            await reader.readexactly(2)
    if "content-length" in names:
        return await reader.readexactly(int(names["content-length"]))
    return await reader.read()


async def raw_request(
    base_url: str,
    target: str,
    headers: Sequence[tuple[str, str]] = (),
    *,
    method: str = "GET",
    body: bytes = b"",
    host: bool = True,
) -> RawResponse:
    """Send exactly ``METHOD target HTTP/1.1`` plus ``headers`` (and ``Host`` unless told
    not to); nothing else is added."""
    parts = urlsplit(base_url)
    assert parts.hostname is not None and parts.port is not None
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        lines = [f"{method} {target} HTTP/1.1"]
        if host:
            lines.append(f"Host: {parts.netloc}")
        lines += [f"{name}: {value}" for name, value in headers]
        if body:
            lines.append(f"Content-Length: {len(body)}")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split(" ")[1])
        parsed = []
        for line in header_lines:
            if line:
                name, _, value = line.partition(":")
                parsed.append((name.strip().lower(), value.strip()))
        data = await asyncio.wait_for(_read_body(reader, parsed, method, status), 10)
        return RawResponse(status, parsed, data)
    finally:
        writer.close()


def echoed(body: Any) -> list[tuple[str, str]]:
    """The request headers the upstream saw, from an ``/api/echo`` reply."""
    return [(name.lower(), value) for name, value in body["headers"]]


def values(headers: list[tuple[str, str]], name: str) -> list[str]:
    return [v for k, v in headers if k == name]


def assert_clean_error(response: httpx.Response | RawResponse, status: int) -> dict[str, Any]:
    """A gateway refusal: JSON ``{"error", "detail"}`` that reveals nothing internal."""
    if isinstance(response, httpx.Response):
        got, types, text = (response.status_code, response.headers.get_list("content-type"),
                            response.content)
    else:
        got, types, text = response.status, response.get_list("content-type"), response.body
    assert got == status, text
    assert types == ["application/json"]
    body = response.json()
    assert set(body) == {"error", "detail"}, body
    assert isinstance(body["error"], str) and isinstance(body["detail"], str)
    assert not _INTERNAL.search(text.decode()), text
    return dict(body)


@pytest.fixture(scope="module")
def gw(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    """One shared gateway with PUBLIC routes for the tests that don't need their own config
    (starting and stopping a uvicorn per test would dominate this file's runtime)."""
    data = tomllib.loads(PUBLIC)
    audit_path = tmp_path_factory.mktemp("proxy") / "audit.jsonl"
    data["upstream"] = {"url": backend.url}
    data["audit"] = {"sink": str(audit_path), "flush_interval_s": 0}
    app = create_app(settings_from_mapping(data))
    server = ServerThread(app).start()
    yield RunningGateway(app, server, audit_path)
    server.stop()


# -- streaming both ways -----------------------------------------------------------------------


async def test_upload_streams_a_multi_megabyte_chunked_body(gw: RunningGateway) -> None:
    piece = os.urandom(MiB)
    chunks = 12
    expected = hashlib.sha256(piece * chunks).hexdigest()

    async def body() -> AsyncIterator[bytes]:
        for _ in range(chunks):
            yield piece
            await asyncio.sleep(0)

    async with gw.client(timeout=30) as client:
        response = await client.post("/test/upload", content=body())
    assert response.status_code == 200
    assert response.json() == {"received": chunks * MiB, "sha256": expected}


async def test_upload_with_content_length_reaches_echo_intact(gw: RunningGateway) -> None:
    payload = os.urandom(3 * MiB + 17)
    async with gw.client(timeout=30) as client:
        response = await client.put("/api/echo/upload", content=payload)
    assert response.status_code == 200
    body = response.json()
    assert body["method"] == "PUT"
    assert body["body_len"] == len(payload)
    assert body["body_sha256"] == hashlib.sha256(payload).hexdigest()


async def test_download_streams_a_large_body(gw: RunningGateway) -> None:
    size = 64 * MiB + 3
    received = 0
    chunks = 0
    async with gw.client(timeout=30) as client, client.stream(
            "GET", f"/test/stream?size={size}") as response:
        assert response.status_code == 200
        assert "content-length" not in response.headers  # streamed, not buffered
        async for chunk in response.aiter_raw():
            received += len(chunk)
            chunks += 1
    assert received == size
    assert chunks > 1


async def test_small_fixed_length_response_keeps_its_length(gw: RunningGateway) -> None:
    async with gw.client() as client:
        response = await client.get("/test/stream?size=1000")
    assert response.status_code == 200
    assert response.headers.get_list("content-length") in ([], ["1000"])
    assert response.content == b"x" * 1000


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
    seen = echoed(response.json())
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
    seen = echoed(response.json())
    assert values(seen, "x-custom-hop") == []
    assert values(seen, "x-other") == ["2"]


async def test_response_hop_by_hop_headers_are_removed(gw: RunningGateway) -> None:
    response = await raw_request(gw.url, "/test/hop", [("Connection", "close")])
    assert response.status == 200
    names = {name for name, _ in response.headers}
    for gone in ("x-hop-custom", "keep-alive", "proxy-authenticate", "trailer", "upgrade"):
        assert gone not in names, response.headers
    assert all("x-hop-custom" not in v for v in response.get_list("connection"))
    assert response.get_list("x-kept") == ["yes"]
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
    assert len(response.get_list("server")) == 1, response.headers
    assert len(response.get_list("date")) == 1, response.headers


async def test_duplicate_request_headers_kept_in_order(gw: RunningGateway) -> None:
    response = await raw_request(gw.url, "/api/echo/dup", [
        ("X-Dup", "1"), ("Accept", "a/b"), ("X-Dup", "2"), ("Accept", "c/d")])
    seen = [(n, v) for n, v in echoed(response.json()) if n in ("x-dup", "accept")]
    assert seen == [("x-dup", "1"), ("accept", "a/b"), ("x-dup", "2"), ("accept", "c/d")]


@pytest.mark.parametrize(("target", "status"), [
    ("/test/status/204", 204), ("/test/status/304", 304), ("/test/status/302", 302),
    ("/test/status/503", 503)])
async def test_upstream_status_passed_through(gw: RunningGateway, target: str,
                                              status: int) -> None:
    response = await raw_request(gw.url, target, [("Connection", "close")])
    assert response.status == status
    if status in (204, 304):
        assert response.body == b""
    else:  # the upstream's own body, not a gateway error; redirects are not followed
        assert response.json() == {"status": status}


async def test_head_is_proxied_without_body(gw: RunningGateway) -> None:
    response = await raw_request(gw.url, "/api/echo/head", [("Connection", "close")],
                                 method="HEAD")
    assert response.status == 200
    assert response.body == b""


async def test_upstream_answering_before_reading_the_upload(gw: RunningGateway) -> None:
    async with gw.client(timeout=30) as client:
        response = await client.post("/test/status/201", content=os.urandom(8 * MiB))
        assert response.status_code == 201
        assert response.json() == {"status": 201}
        assert (await client.get("/api/echo/after")).status_code == 200


async def test_upstream_base_path_is_prefixed(make_gateway: MakeGateway,
                                              backend: Backend) -> None:
    gateway = make_gateway('[server]\nallow_encoded_slash = true\n'
                           '[[routes]]\nmatch = "/**"\naccess = "public"\n',
                           upstream=backend.url + "/api/echo")
    response = await raw_request(gateway.url, "/foo/a%2Fb?x=1")
    assert response.status == 200
    assert (response.json()["path"], response.json()["query"]) == ("/api/echo/foo/a%2Fb", "x=1")


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
    seen = echoed(response.json())
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
    seen = echoed(response.json())
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
    seen = echoed(response.json())
    assert values(seen, "x-real-ip") == ["6.6.6.6"]  # a trusted proxy's word
    assert values(seen, "x_forwarded_for") == []  # no peer may use the "_" spelling
    assert values(seen, "x-forwarded-for") == ["6.6.6.6, 10.0.0.1, 127.0.0.1"]
    assert values(seen, "x-forwarded-proto") == ["https"]
    assert values(seen, "x-forwarded-host") == ["app.example.com"]

    plain = await raw_request(gateway.url, "/api/echo/xff")
    seen = echoed(plain.json())
    assert values(seen, "x-forwarded-for") == ["127.0.0.1"]
    assert values(seen, "x-forwarded-host") == [urlsplit(gateway.url).netloc]


# -- path and query ----------------------------------------------------------------------------


@pytest.mark.parametrize(("target", "path", "query"), [
    ("/api/echo/a%20b?x=1&y=%20z&y=2", "/api/echo/a%20b", "x=1&y=%20z&y=2"),
    ("/api/echo/./x/../y//z", "/api/echo/y/z", ""),
    ("/api/echo/%7Euser/%41?q=%2F%2f&&=&e", "/api/echo/~user/A", "q=%2F%2f&&=&e"),
    ("/api/echo/a%3Bb;p=1?", "/api/echo/a%3Bb;p=1", ""),
    ("/api/echo/sp?a=b+c&d=%E2%82%AC", "/api/echo/sp", "a=b+c&d=%E2%82%AC"),
])
async def test_raw_path_and_query_forwarded(gw: RunningGateway, target: str, path: str,
                                            query: str) -> None:
    response = await raw_request(gw.url, target)
    assert response.status == 200, response.body
    body = response.json()
    assert body["path"] == path
    assert body["query"] == query


async def test_no_accept_encoding_or_user_agent_added(gw: RunningGateway) -> None:
    response = await raw_request(gw.url, "/api/echo/bare")
    assert response.status == 200
    names = [name for name, _ in echoed(response.json())]
    assert "accept-encoding" not in names
    assert "user-agent" not in names
    assert "accept" not in names


async def test_client_accept_encoding_and_user_agent_passed_as_is(gw: RunningGateway) -> None:
    response = await raw_request(gw.url, "/api/echo/ua", [
        ("User-Agent", "curl/8.0"), ("Accept-Encoding", "br")])
    seen = echoed(response.json())
    assert values(seen, "user-agent") == ["curl/8.0"]
    assert values(seen, "accept-encoding") == ["br"]


async def test_compressed_body_passed_through_undecoded(gw: RunningGateway) -> None:
    async with gw.client() as client, client.stream("GET", "/test/gzip") as response:
        raw = b"".join([chunk async for chunk in response.aiter_raw()])
    assert response.status_code == 200
    assert response.headers.get_list("content-encoding") == ["gzip"]
    assert raw[:2] == b"\x1f\x8b"
    assert json.loads(gzip.decompress(raw))["compressed"] is True
    if "content-length" in response.headers:
        assert int(response.headers["content-length"]) == len(raw)


async def test_no_cookie_jar_between_clients(make_gateway: MakeGateway, backend: Backend
                                            ) -> None:
    # Upstream by host name: aiohttp's default jar ignores cookies from IP-address hosts, so
    # against 127.0.0.1 this test could not fail.
    gw = make_gateway(PUBLIC, upstream=backend.url.replace("127.0.0.1", "localhost"))
    async with gw.client() as client_a:
        set_reply = await client_a.get("/test/set-cookie?name=sid&value=A")
        assert set_reply.headers.get_list("set-cookie") == ["sid=A; Path=/"]
    for _ in range(3):  # fresh connections; the upstream pool is reused
        async with gw.client() as client_b:
            response = await client_b.get("/api/echo/jar")
        names = [name for name, _ in echoed(response.json())]
        assert "cookie" not in names


# -- upstream failures -------------------------------------------------------------------------


async def test_upstream_refused_is_502(make_gateway: MakeGateway) -> None:
    port = free_port()
    gateway = make_gateway(PUBLIC, upstream=f"http://127.0.0.1:{port}")
    async with gateway.client() as client:
        response = await client.get("/api/echo/x", headers={"x-request-id": "req-502"})
    body = assert_clean_error(response, 502)
    assert str(port) not in response.text
    assert response.headers.get_list("x-request-id") == ["req-502"]
    assert body["error"]


async def test_upstream_read_timeout_is_504(make_gateway: MakeGateway) -> None:
    gateway = make_gateway(PUBLIC + "\n[upstream]\nread_timeout_s = 0.5\n")
    async with gateway.client(timeout=10) as client:
        response = await client.get("/test/slow?delay=2")
        assert_clean_error(response, 504)
        assert len(response.headers.get_list("x-request-id")) == 1
        fast = await client.get("/test/slow?delay=0")
    assert fast.status_code == 200


async def test_pool_exhausted_is_503_with_retry_after(make_gateway: MakeGateway) -> None:
    gateway = make_gateway(
        PUBLIC + "\n[upstream]\nmax_connections = 1\nconnect_timeout_s = 0.3\n")
    async with gateway.client(timeout=10) as slow_client, gateway.client(timeout=10) as client:
        slow = asyncio.create_task(slow_client.get("/test/slow?delay=1"))
        await asyncio.sleep(0.2)
        response = await client.get("/api/echo/busy")
        assert_clean_error(response, 503)
        assert response.headers.get("retry-after", "").isdigit()
        assert len(response.headers.get_list("x-request-id")) == 1
        assert (await slow).status_code == 200
        after = await client.get("/api/echo/free")
    assert after.status_code == 200


# -- client disconnects ------------------------------------------------------------------------


# Far more than loopback socket buffers hold, so an abort is always mid-body, sent in 1 MiB
# pieces: after the gateway closes the upstream connection, the reference backend's
# StreamingResponse keeps "sending" the rest of its generator into the dead transport without
# yielding (asyncio logs a warning per piece), so fewer, bigger pieces keep that cheap.
_ABORTED = f"/test/stream?size={1 << 30}&chunk={MiB}"


def _established_to(port: int, pid: int | None = None) -> int:
    return sum(1 for c in psutil.Process(pid).net_connections(kind="tcp")
               if c.status == psutil.CONN_ESTABLISHED and c.raddr and c.raddr.port == port)


async def _aborted_download(base_url: str, target: str = _ABORTED) -> bytes:
    parts = urlsplit(base_url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    writer.write(f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\n\r\n".encode())
    await writer.drain()
    first = await asyncio.wait_for(reader.read(65536), 5)
    writer.transport.abort()  # go away mid-body
    return first


async def test_client_disconnects_release_upstream(make_gateway: MakeGateway,
                                                   backend: Backend) -> None:
    gateway = make_gateway(
        PUBLIC + "\n[upstream]\nmax_connections = 2\nconnect_timeout_s = 1.0\n")
    backend_port = urlsplit(backend.url).port
    assert backend_port is not None
    # Other gateways in this process (the module's shared one) may hold pooled connections.
    others = _established_to(backend_port)
    for _ in range(20):
        first = await _aborted_download(gateway.url)
        assert first.startswith(b"HTTP/1.1 200"), first[:200]
    async with gateway.client(timeout=10) as client:
        statuses = [(await client.get("/api/echo/after")).status_code for _ in range(10)]
        both = await asyncio.gather(client.get("/test/slow?delay=0.2"),
                                    client.get("/test/slow?delay=0.2"))
    assert statuses == [200] * 10
    assert [r.status_code for r in both] == [200, 200]
    # The aborted streams' upstream connections are closed, not parked in the pool.
    await asyncio.sleep(0.2)
    assert _established_to(backend_port) - others <= 2


async def test_client_disconnect_with_httpx_stream(gw: RunningGateway) -> None:
    for _ in range(5):
        async with gw.client(timeout=10) as client, client.stream(
                "GET", _ABORTED) as response:
            assert response.status_code == 200
            async for _chunk in response.aiter_raw():
                break
    async with gw.client() as client:
        assert (await client.get("/api/echo/ok")).status_code == 200


BACKEND_PROCESS = """
import logging, sys
import uvicorn
logging.getLogger("asyncio").setLevel(logging.ERROR)
uvicorn.run("gateway.demo:create_backend", factory=True, host="127.0.0.1",
            port=int(sys.argv[1]), log_level="warning")
"""


async def test_client_disconnect_stops_upstream_read_under_gateway_serve(
        tmp_path: Path) -> None:
    """What users run: ``python -m gateway serve`` (uvicorn; uvloop when installed) in front
    of a backend in its own process. When a client goes away mid-download, the gateway must
    stop reading the upstream body at once: the backend then writes at most what the socket
    buffers hold (a few MB), not tens of MB more for nobody. Measured from outside, as the
    bytes the backend process writes (psutil ``write_chars``) per aborted 1 GiB download.
    (Under the plain asyncio loop of the in-process gateways above this doesn't show: there the
    cancel scope's cancellation reaches the pumping task at once.)"""
    backend_port, gateway_port = free_port(), free_port()
    config = tmp_path / "gateway.toml"
    config.write_text(PUBLIC + f"""
[upstream]
url = "http://127.0.0.1:{backend_port}"

[audit]
sink = "{tmp_path / 'audit.jsonl'}"
""")
    backend = ServerProcess([sys.executable, "-c", BACKEND_PROCESS, str(backend_port)],
                            backend_port, ready_path="/api/public/hello")
    gateway = ServerProcess(python_module("gateway", "serve", "--config", str(config),
                                          "--port", str(gateway_port)), gateway_port)
    await asyncio.to_thread(backend.start)
    try:
        await asyncio.to_thread(gateway.start)
        assert backend.proc is not None
        backend_process = psutil.Process(backend.proc.pid)

        def written() -> int:
            return int(backend_process.io_counters().write_chars)

        async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
            before = written()
            whole = await client.get(f"/test/stream?size={8 * MiB}")
            assert len(whole.content) == 8 * MiB
            if written() - before < 8 * MiB:
                pytest.skip("this platform doesn't count the backend's socket writes")
            per_abort = []
            for _ in range(20):
                before = written()
                first = await _aborted_download(gateway.url, f"/test/stream?size={1 << 30}")
                assert first.startswith(b"HTTP/1.1 200"), first[:200]
                await asyncio.sleep(0.2)
                per_abort.append(round((written() - before) / MiB, 1))
            assert (await client.get("/api/echo/after")).status_code == 200
        # Socket buffers let the backend get ~0.1-8 MiB ahead of a gateway that stops at once;
        # one outlier is tolerated, a pattern is not.
        assert sum(mib > 16 for mib in per_abort) <= 1, (
            f"MiB the backend wrote per aborted download: {per_abort}; the gateway kept "
            "reading the upstream body after its client had gone")
    finally:
        await asyncio.to_thread(gateway.stop)
        await asyncio.to_thread(backend.stop)


# -- request ids -------------------------------------------------------------------------------


async def test_request_id_kept_and_seen_by_upstream(gw: RunningGateway) -> None:
    async with gw.client() as client:
        response = await client.get("/api/echo/rid", headers={"x-request-id": "abc-123"})
    assert response.headers.get_list("x-request-id") == ["abc-123"]
    assert values(echoed(response.json()), "x-request-id") == ["abc-123"]


@pytest.mark.parametrize("bad", ["has space", "x" * 200, "a,b", "é"])
async def test_unacceptable_request_id_is_replaced(gw: RunningGateway, bad: str) -> None:
    response = await raw_request(gw.url, "/api/echo/rid", [("X-Request-Id", bad)])
    rid = response.get_list("x-request-id")
    assert len(rid) == 1 and rid[0] != bad
    assert values(echoed(response.json()), "x-request-id") == rid


async def test_request_id_created_and_seen_by_upstream(gw: RunningGateway) -> None:
    async with gw.client() as client:
        one = await client.get("/api/echo/rid")
        two = await client.get("/api/echo/rid")
    rid = one.headers.get_list("x-request-id")
    assert len(rid) == 1 and rid[0]
    assert values(echoed(one.json()), "x-request-id") == rid
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
    assert sent.get_list("x-request-id") == ["given-1"]
    made = await raw_request(gw.url, target)
    assert made.status == status
    assert len(made.get_list("x-request-id")) == 1
    assert made.get_list("x-request-id")[0] not in ("", "given-1")


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
    assert _identity_names(echoed(response.json())) == []


@pytest.mark.parametrize("authorization", [
    "Bearer not-a-token", "Basic dXNlcjpwYXNz", "Bearer", "JWT x.y.z"])
async def test_client_authorization_without_valid_token_not_forwarded(
        gw: RunningGateway, authorization: str) -> None:
    response = await raw_request(gw.url, "/api/echo/auth",
                                 [("Authorization", authorization), *_SPOOFED])
    assert response.status == 200, response.body
    seen = echoed(response.json())
    assert values(seen, "authorization") == []
    assert _identity_names(seen) == []


async def test_valid_token_identity_replaces_spoofed_one(gw: RunningGateway,
                                                         backend: Backend) -> None:
    token = backend.token(1)
    response = await raw_request(gw.url, "/api/echo/auth",
                                 [("Authorization", f"Bearer {token}"), *_SPOOFED])
    assert response.status == 200, response.body
    seen = echoed(response.json())
    assert values(seen, "authorization") == [f"Bearer {token}"]
    assert values(seen, "x-auth-user-id") == ["1"]
    assert values(seen, "x-auth-token-type") == ["user"]
    assert len(values(seen, "x-auth-user")) == 1
    assert values(seen, "x-refreshed-token") == []
    assert [n for n, _ in _identity_names(seen)] == [
        "x-auth-user-id", "x-auth-token-type", "x-auth-user"]


# -- the gateway's own endpoints and bad paths -------------------------------------------------


@pytest.mark.parametrize("target", [
    "/__gateway/health",
    "/x/../__gateway/health",
    "//__gateway//health",
    "/%5F%5Fgateway/health",
    "/__gateway/./health",
])
async def test_health(gw: RunningGateway, target: str) -> None:
    response = await raw_request(gw.url, target)
    assert response.status == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.parametrize("target", [
    "/__gateway/nope",
    "/__gateway",
    "/__gateway/",
    "/__gateway/health/x",
    "/api/echo/../../__gateway/echo",
    "/__gateway/api/echo/x",
])
async def test_reserved_prefix_never_proxied(gw: RunningGateway, backend: Backend,
                                             target: str) -> None:
    before = backend.calls("echo")
    response = await raw_request(gw.url, target)
    assert_clean_error(response, 404)
    assert backend.calls("echo") == before


async def test_health_head_and_post(gw: RunningGateway) -> None:
    head = await raw_request(gw.url, "/__gateway/health", method="HEAD")
    assert head.status == 200
    post = await raw_request(gw.url, "/__gateway/health", method="POST", body=b"{}")
    assert_clean_error(post, 405)


@pytest.mark.parametrize("target", ["/a/%00", "/api/echo/%00", "/a/%zz", "/a/%4", "/a\\b"])
async def test_bad_path_is_400_json(gw: RunningGateway, backend: Backend, target: str) -> None:
    before = backend.calls("echo")
    response = await raw_request(gw.url, target)
    assert_clean_error(response, 400)
    assert backend.calls("echo") == before


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
    seen = echoed(reply.json())
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
    seen = echoed(reply.json())
    assert [v.encode("latin-1") for v in values(seen, "x-auth-user-id")] == [header.encode()]
    assert values(seen, "x-injected") == []


# -- streaming, shown by order of events rather than by memory ----------------------------------


class _Handshake:
    """Thread-safe flags shared by a test (asyncio) and an upstream app (ServerThread)."""

    def __init__(self) -> None:
        import threading

        self.upstream_got_first = threading.Event()
        self.client_got_first = threading.Event()


def _streaming_upstream(flags: _Handshake) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/upload":
            total = 0
            while True:
                message = await receive()
                total += len(message.get("body", b""))
                if total:
                    flags.upstream_got_first.set()
                if not message.get("more_body"):
                    break
            body = json.dumps({"received": total}).encode()
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": body})
            return
        # /download: the first chunk, then the rest only once the client has the first.
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/octet-stream")]})
        await send({"type": "http.response.body", "body": b"a" * 1000, "more_body": True})
        for _ in range(3000):  # 30 s: longer than the test waits for the first bytes
            if flags.client_got_first.is_set():
                break
            await asyncio.sleep(0.01)
        await send({"type": "http.response.body", "body": b"b" * 1000})

    return app


async def _wait(flag: Any, seconds: float = 10) -> bool:
    for _ in range(int(seconds * 100)):
        if flag.is_set():
            return True
        await asyncio.sleep(0.01)
    return False


async def test_request_body_streams_to_the_upstream(make_gateway: MakeGateway) -> None:
    """The upstream has the first chunk while the client is still holding back the last:
    a gateway that collected the body first would never let it."""
    flags = _Handshake()
    with ServerThread(_streaming_upstream(flags)) as upstream:
        gateway = make_gateway('[[routes]]\nmatch = "/**"\naccess = "public"\n',
                               upstream=upstream.url)
        seen_before_last: list[bool] = []

        async def body() -> AsyncIterator[bytes]:
            yield b"x" * 65536
            seen_before_last.append(await _wait(flags.upstream_got_first))
            yield b"y" * 10

        async with gateway.client() as client:
            reply = await client.post("/upload", content=body())
    assert reply.status_code == 200
    assert reply.json() == {"received": 65546}
    assert seen_before_last == [True]


async def test_response_body_streams_to_the_client(make_gateway: MakeGateway) -> None:
    """The client has the first bytes while the upstream is still holding back the rest."""
    flags = _Handshake()
    with ServerThread(_streaming_upstream(flags)) as upstream:
        gateway = make_gateway('[[routes]]\nmatch = "/**"\naccess = "public"\n',
                               upstream=upstream.url)
        async with gateway.client() as client, client.stream("GET", "/download") as reply:
            chunks = reply.aiter_raw()
            first = await asyncio.wait_for(chunks.__anext__(), 10)
            flags.client_got_first.set()
            rest = b"".join([chunk async for chunk in chunks])
    assert first.startswith(b"a") and b"b" not in first
    assert first + rest == b"a" * 1000 + b"b" * 1000


# -- the gateway's own endpoints ------------------------------------------------------------------


async def test_metrics_count_what_was_served(make_gateway: MakeGateway, backend: Backend
                                             ) -> None:
    gateway = make_gateway(PUBLIC)
    async with gateway.client() as client:
        assert (await client.get("/api/echo/one")).status_code == 200
        assert (await client.get("/test/status/418")).status_code == 418
        assert (await client.get("/api/private", headers={"accept": "application/json"})
                ).status_code == 401
        metrics = await client.get("/__gateway/metrics")
        head = await client.head("/__gateway/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
               for line in metrics.text.splitlines() if line and not line.startswith("#")}
    assert samples['gateway_http_responses_total{code="200"}'] == 1
    assert samples['gateway_http_responses_total{code="418"}'] == 1
    assert samples['gateway_http_responses_total{code="401"}'] == 1
    assert samples['gateway_auth_events_total{event="auth.denied",outcome="unauthenticated"}'] == 1
    assert head.status_code == 200 and head.content == b""


async def test_ready_follows_the_auth_backend(make_gateway: MakeGateway, backend: Backend
                                              ) -> None:
    up = make_gateway(PUBLIC)
    down = make_gateway(PUBLIC + f'\n[auth]\nurl = "http://127.0.0.1:{free_port()}"\n')
    async with up.client() as client:
        ready = await client.get("/__gateway/ready")
    async with down.client() as client:
        not_ready = await client.get("/__gateway/ready")
        health = await client.get("/__gateway/health")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "checks": {"auth": "ok", "state": "ok"}}
    assert not_ready.status_code == 503
    assert not_ready.json()["checks"]["auth"] == "unavailable"
    assert health.status_code == 200 and health.json() == {"status": "ok"}
