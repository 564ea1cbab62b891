"""Bodies streamed through the proxy on real sockets (docs/behaviour.md#proxying): multi-megabyte
uploads and downloads both ways, streaming shown by the order of events, and clients that
go away mid-body releasing the upstream (also under ``gateway serve``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psutil
import pytest

from tests.conftest import Backend, MakeGateway, RunningGateway
from tests.helpers.proxy import PUBLIC, MiB
from tests.helpers.raw_http import connect, head
from tests.servers import ServerProcess, ServerThread, free_port, python_module

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
    reader, writer = await connect(base_url)
    writer.write(head("GET", target, urlsplit(base_url).netloc))
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
