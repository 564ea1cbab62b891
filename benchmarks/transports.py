"""Choose the gateway's upstream HTTP client transport by measurement.

Run from the repository root::

    .venv/bin/python benchmarks/transports.py            # everything (~2-3 minutes)
    .venv/bin/python benchmarks/transports.py --duration 1 --skip-memory   # quicker

It starts a tiny pure-ASGI upstream under uvicorn in a subprocess on a free loopback
port, then for every candidate client:

* measures requests/s, p50 and p99 latency (and client CPU per request) at concurrency
  1, 16 and 64, for a ~200-byte JSON body and a 1 MiB body, streaming the response the
  way a proxy does (``client.stream(...)`` + ``aiter_raw()``; ``iter_any()`` for aiohttp);
* checks proxy-relevant behaviour: extra request headers, raw (undecoded) gzip, cookie
  jar, read/connect/pool timeouts and which exception each failure raises, whether an
  early close frees the pool slot, streamed uploads;
* streams 1 GiB (peak RSS increase) and aborts 200 large downloads early, then checks
  the pool still serves requests and no sockets leaked.

Every client is built the way the gateway would build it ("proxy config"): explicit
limits/timeouts, no cookie jar, no default headers, no decompression.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import gzip
import http.cookiejar
import importlib
import importlib.metadata
import json
import os
import platform
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

# --------------------------------------------------------------------------------------
# Upstream (runs in a subprocess)
# --------------------------------------------------------------------------------------

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

SMALL_BODY = json.dumps(
    {
        "id": 12345,
        "name": "gateway-benchmark",
        "status": "ok",
        "items": [1, 2, 3, 4, 5, 6, 7, 8],
        "tags": ["alpha", "beta", "gamma", "delta"],
        "description": "a small json document of roughly two hundred bytes.",
    }
).encode()
BIG_BODY = b"x" * (1 << 20)
GZIP_PLAIN = b'{"hello": "world", "n": 1}\n' * 200
GZIP_BODY = gzip.compress(GZIP_PLAIN, mtime=0)
STREAM_CHUNK = b"y" * (256 << 10)
GIB = 1 << 30
TRUNCATED_DECLARED = 1000


async def _respond(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-length", str(len(body)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _drain(receive: Receive) -> int:
    total = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return total
        total += len(message.get("body", b""))
        if not message.get("more_body", False):
            return total


async def _stream(receive: Receive, send: Send, size: int) -> None:
    """Send ``size`` bytes in 256 KiB chunks; stop as soon as the client goes away."""
    gone = asyncio.Event()

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        gone.set()

    watcher = asyncio.create_task(watch())
    try:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-length", str(size).encode()),
                    (b"content-type", b"application/octet-stream"),
                ],
            }
        )
        sent = 0
        while sent < size and not gone.is_set():
            part = STREAM_CHUNK[: min(len(STREAM_CHUNK), size - sent)]
            sent += len(part)
            await send({"type": "http.response.body", "body": part, "more_body": sent < size})
    finally:
        watcher.cancel()


async def upstream_app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    path: str = scope["path"]
    params = dict(urllib.parse.parse_qsl(scope["query_string"].decode()))
    json_ct = [(b"content-type", b"application/json")]
    if path == "/":
        await _respond(send, 200, SMALL_BODY, json_ct)
    elif path == "/big":
        await _respond(send, 200, BIG_BODY, [(b"content-type", b"application/octet-stream")])
    elif path == "/stream":
        await _stream(receive, send, int(params.get("bytes", GIB)))
    elif path.startswith("/headers"):
        body_len = await _drain(receive)
        headers = [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]]
        target = scope["raw_path"] + (
            b"?" + scope["query_string"] if scope["query_string"] else b""
        )
        doc = {"headers": headers, "body_len": body_len, "target": target.decode("latin-1")}
        await _respond(send, 200, json.dumps(doc).encode(), json_ct)
    elif path == "/gzip":
        await _respond(send, 200, GZIP_BODY, [(b"content-encoding", b"gzip"), *json_ct])
    elif path == "/set-cookie":
        await _respond(send, 200, b"ok", [(b"set-cookie", b"sid=upstream-secret; Path=/")])
    elif path == "/slow":
        await asyncio.sleep(float(params.get("s", "2")))
        await _respond(send, 200, b"slow", [])
    elif path == "/slow-body":
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"10")]}
        )
        await send({"type": "http.response.body", "body": b"01234", "more_body": True})
        await asyncio.sleep(2)
        await send({"type": "http.response.body", "body": b"56789"})
    elif path == "/truncated":
        declared = [(b"content-length", str(TRUNCATED_DECLARED).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": declared})
        await send({"type": "http.response.body", "body": b"z" * 500, "more_body": True})
        raise RuntimeError("upstream dies mid-body on purpose")  # uvicorn closes the socket
    else:
        await _respond(send, 404, b"not found", [])


def serve_upstream(port: int) -> None:
    import logging

    import uvicorn

    # aborted downloads make asyncio warn "socket.send() raised exception."
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)

    uvicorn.run(
        upstream_app,
        host="127.0.0.1",
        port=port,
        log_level="critical",
        access_log=False,
        lifespan="off",
        backlog=4096,
        timeout_keep_alive=120,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def upstream_process() -> Any:
    port = free_port()
    argv = [sys.executable, os.path.abspath(__file__), "--serve-upstream", str(port)]
    proc = subprocess.Popen(argv)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1) as r:
                    r.read()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("upstream did not start") from None
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()


# --------------------------------------------------------------------------------------
# Candidate clients, each built the way the gateway would build it
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Timeouts:
    connect: float = 5.0
    read: float = 30.0
    pool: float = 5.0


@dataclass
class Fetched:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    nbytes: int


BodyArg = bytes | Callable[[], AsyncIterator[bytes]] | None
# What a client's _open yields: status, response headers, the raw body chunks as they arrive.
Opened = tuple[int, list[tuple[str, str]], AsyncIterator[bytes]]


class Client:
    """A candidate client. ``fetch`` reads the response the way a proxy does, the same loop
    for every candidate; each kind of client only says what its request body argument is
    called (``_body_key``), what its timeout is (``_timeout``), how it opens a streamed
    response (``_open``) and how it closes (``aclose``)."""

    _body_key: str

    async def fetch(
        self,
        path: str,
        *,
        method: str = "GET",
        headers: dict[str, str] | None = None,
        body: BodyArg = None,
        timeout: Timeouts | None = None,
        keep: bool = False,
        first_chunk_only: bool = False,
    ) -> Fetched:
        kwargs: dict[str, Any] = {}
        if body is not None:
            kwargs[self._body_key] = body if isinstance(body, bytes) else body()
        if timeout is not None:
            kwargs["timeout"] = self._timeout(timeout)
        parts: list[bytes] = []
        n = 0
        async with self._open(method, path, headers, kwargs) as (status, hdrs, chunks):
            async for chunk in chunks:
                n += len(chunk)
                if keep:
                    parts.append(chunk)
                if first_chunk_only:
                    break
            return Fetched(status, hdrs, b"".join(parts), n)

    def _timeout(self, t: Timeouts) -> Any:
        raise NotImplementedError

    def _open(
        self, method: str, path: str, headers: dict[str, str] | None, kwargs: dict[str, Any]
    ) -> contextlib.AbstractAsyncContextManager[Opened]:
        raise NotImplementedError

    async def aclose(self) -> None:
        raise NotImplementedError


class RejectAllCookies(http.cookiejar.CookieJar):
    """A stdlib CookieJar that never stores nor sends a cookie (httpx has no 'no jar')."""

    def set_cookie(self, cookie: http.cookiejar.Cookie) -> None:
        return None

    def extract_cookies(self, response: Any, request: Any) -> None:
        return None

    def add_cookie_header(self, request: Any) -> None:
        return None


class HttpxLike(Client):
    """httpx / httpx2 AsyncClient (any transport), streaming with aiter_raw()."""

    _body_key = "content"

    def __init__(self, mod: ModuleType, client: Any, base: str) -> None:
        self.mod = mod
        self.client = client
        self.base = base

    def _timeout(self, t: Timeouts) -> Any:
        return self.mod.Timeout(connect=t.connect, read=t.read, write=t.read, pool=t.pool)

    @contextlib.asynccontextmanager
    async def _open(
        self, method: str, path: str, headers: dict[str, str] | None, kwargs: dict[str, Any]
    ) -> AsyncIterator[Opened]:
        async with self.client.stream(method, self.base + path, headers=headers, **kwargs) as r:
            yield r.status_code, list(r.headers.items()), r.aiter_raw()

    async def aclose(self) -> None:
        await self.client.aclose()


class AiohttpRaw(Client):
    """Plain aiohttp.ClientSession (the ceiling), streaming with content.iter_any()."""

    _body_key = "data"

    def __init__(self, session: Any, base: str) -> None:
        import aiohttp
        import yarl

        self.aiohttp = aiohttp
        self.yarl = yarl
        self.session = session
        self.base = base

    def _timeout(self, t: Timeouts) -> Any:
        return aiohttp_timeout(self.aiohttp, t)

    @contextlib.asynccontextmanager
    async def _open(
        self, method: str, path: str, headers: dict[str, str] | None, kwargs: dict[str, Any]
    ) -> AsyncIterator[Opened]:
        # encoded=True: forward the path/query exactly as received (no yarl re-quoting)
        url = self.yarl.URL(self.base + path, encoded=True)
        async with self.session.request(
            method, url, headers=headers, allow_redirects=False, **kwargs
        ) as r:
            yield r.status, list(r.headers.items()), r.content.iter_any()

    async def aclose(self) -> None:
        await self.session.close()


def aiohttp_timeout(aiohttp: ModuleType, t: Timeouts) -> Any:
    # aiohttp's `connect` covers waiting for a pool slot *and* connecting.
    return aiohttp.ClientTimeout(
        total=None, connect=t.pool + t.connect, sock_connect=t.connect, sock_read=t.read
    )


# headers aiohttp would add on its own unless told to skip them
AIOHTTP_SKIP_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")


def make_aiohttp_session(max_connections: int, t: Timeouts) -> Any:
    import aiohttp

    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=max_connections, limit_per_host=0),
        cookie_jar=aiohttp.DummyCookieJar(),
        skip_auto_headers=AIOHTTP_SKIP_AUTO_HEADERS,
        auto_decompress=False,
        timeout=aiohttp_timeout(aiohttp, t),
        trust_env=False,
    )


def build_httpx_like(
    mod: ModuleType, transport: Any, max_connections: int, t: Timeouts, *, proxy: bool
) -> Any:
    if not proxy:
        return mod.AsyncClient(transport=transport) if transport else mod.AsyncClient()
    client = mod.AsyncClient(
        transport=transport,  # None -> the module's default transport
        limits=mod.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        ),
        timeout=mod.Timeout(connect=t.connect, read=t.read, write=t.read, pool=t.pool),
        cookies=RejectAllCookies(),
        follow_redirects=False,
        trust_env=False,
    )
    # NB: `client.headers = {}` is NOT enough: the setter re-adds Accept, Accept-Encoding,
    # Connection and User-Agent.  Clearing the Headers object removes them.
    client.headers.clear()
    return client


@dataclass
class Candidate:
    key: str
    label: str
    build: Callable[[str, int, Timeouts, bool], Client]


def candidates() -> list[Candidate]:
    import aiohttp
    import httpx
    from httpx_aiohttp import AiohttpTransport

    def httpx_default(base: str, n: int, t: Timeouts, proxy: bool) -> Client:
        return HttpxLike(httpx, build_httpx_like(httpx, None, n, t, proxy=proxy), base)

    def httpx_aiohttp(base: str, n: int, t: Timeouts, proxy: bool) -> Client:
        if not proxy:
            return HttpxLike(httpx, httpx.AsyncClient(transport=AiohttpTransport()), base)
        # The transport creates the session lazily (inside the running loop) from the callable.
        transport = AiohttpTransport(client=lambda: make_aiohttp_session(n, t))
        return HttpxLike(httpx, build_httpx_like(httpx, transport, n, t, proxy=True), base)

    def raw_aiohttp(base: str, n: int, t: Timeouts, proxy: bool) -> Client:
        if not proxy:
            return AiohttpRaw(aiohttp.ClientSession(), base)
        return AiohttpRaw(make_aiohttp_session(n, t), base)

    def httpx_proxyaio(base: str, n: int, t: Timeouts, proxy: bool) -> Client:
        from proxy_transport import ProxyAiohttpTransport

        transport = ProxyAiohttpTransport(max_connections=n)
        return HttpxLike(httpx, build_httpx_like(httpx, transport, n, t, proxy=proxy), base)

    out = [
        Candidate("httpx", "httpx (default transport)", httpx_default),
        Candidate("httpx+aiohttp", "httpx + httpx_aiohttp.AiohttpTransport", httpx_aiohttp),
        Candidate(
            "httpx+proxyaio",
            "httpx + benchmarks/proxy_transport.py ProxyAiohttpTransport (fixed)",
            httpx_proxyaio,
        ),
    ]
    try:
        httpx2 = importlib.import_module("httpx2")

        def httpx2_default(base: str, n: int, t: Timeouts, proxy: bool) -> Client:
            return HttpxLike(httpx2, build_httpx_like(httpx2, None, n, t, proxy=proxy), base)

        out.append(
            Candidate("httpx2", f"httpx2 {httpx2.__version__} (default transport)", httpx2_default)
        )
    except ImportError:
        print("httpx2 not installed: skipping (pip install httpx2)")
    out.append(Candidate("aiohttp", "aiohttp.ClientSession (raw)", raw_aiohttp))
    return out


# --------------------------------------------------------------------------------------
# Throughput / latency
# --------------------------------------------------------------------------------------


@dataclass
class Cell:
    rps: float
    p50: float
    p99: float
    cpu_us: float
    count: int
    errors: int


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    idx = min(len(sorted_values) - 1, round(q * (len(sorted_values) - 1)))
    return sorted_values[idx]


async def run_cell(client: Client, path: str, size: int, conc: int, duration: float) -> Cell:
    # warm-up: open `conc` connections and check the body arrives intact
    for f in await asyncio.gather(*(client.fetch(path) for _ in range(conc))):
        assert f.status == 200 and f.nbytes == size, (f.status, f.nbytes)
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + duration

    async def worker() -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            try:
                await client.fetch(path)
            except Exception:
                errors += 1
                continue
            latencies.append(time.perf_counter() - t0)

    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(conc)))
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    latencies.sort()
    n = len(latencies)
    return Cell(
        rps=n / elapsed,
        p50=percentile(latencies, 0.50) * 1000,
        p99=percentile(latencies, 0.99) * 1000,
        cpu_us=cpu / max(n, 1) * 1e6,
        count=n,
        errors=errors,
    )


async def benchmark(
    base: str, cands: list[Candidate], concs: list[int], duration: float
) -> list[tuple[str, str, int, Cell]]:
    rows: list[tuple[str, str, int, Cell]] = []
    bodies = [("200 B", "/", len(SMALL_BODY)), ("1 MiB", "/big", len(BIG_BODY))]
    print(f"\n== throughput ({duration:.1f}s per cell, pool max_connections=100) ==")
    header = (
        f"{'body':<6} {'client':<14} {'conc':>4} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'cpu us/req':>10} {'n':>6} {'err':>4}"
    )
    print(header)
    print("-" * len(header))
    for body_label, path, size in bodies:
        for conc in concs:  # candidates interleaved, so drift on the VM hits all of them
            for cand in cands:
                client = cand.build(base, 100, Timeouts(), True)
                try:
                    cell = await run_cell(client, path, size, conc, duration)
                finally:
                    await client.aclose()
                rows.append((body_label, cand.key, conc, cell))
                print(
                    f"{body_label:<6} {cand.key:<14} {conc:>4} {cell.rps:>8.0f} {cell.p50:>8.2f} "
                    f"{cell.p99:>8.2f} {cell.cpu_us:>10.0f} {cell.count:>6} {cell.errors:>4}",
                    flush=True,
                )
            print()
    return rows


# --------------------------------------------------------------------------------------
# Behaviour checks
# --------------------------------------------------------------------------------------


def exc_name(exc: BaseException) -> str:
    def short(e: BaseException) -> str:
        return f"{type(e).__module__.split('.')[0]}.{type(e).__name__}"

    name = short(exc)
    cause = exc.__cause__
    if cause is not None and type(cause).__module__.split(".")[0] != name.split(".")[0]:
        name += f" (from {short(cause)})"
    return name


async def expect_error(coro: Awaitable[Any]) -> str:
    t0 = time.perf_counter()
    try:
        await coro
    except Exception as exc:
        return f"{exc_name(exc)} after {time.perf_counter() - t0:.2f}s"
    return f"NO ERROR after {time.perf_counter() - t0:.2f}s"


ODD_TARGET = "/headers/a%2Fb/%7Euser/sp%20ace;p=1?q=a%20b+c&e=%3D&u=%C3%A9&flag&x=%2f"
EXPECTED_HEADERS = {"host", "content-length", "transfer-encoding", "x-test"}


async def extra_headers(client: Client, **kw: Any) -> str:
    f = await client.fetch("/headers", headers={"x-test": "1"}, keep=True, **kw)
    doc = json.loads(f.body)
    extra = sorted({k.lower() for k, _ in doc["headers"]} - EXPECTED_HEADERS)
    return ", ".join(extra) if extra else "none"


async def body_gen() -> AsyncIterator[bytes]:
    for _ in range(3):
        await asyncio.sleep(0)
        yield b"u" * 100_000


async def closes_without_response() -> tuple[str, asyncio.AbstractServer]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            await reader.readuntil(b"\r\n\r\n")
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return f"http://127.0.0.1:{port}", server


async def checks(base: str, cand: Candidate) -> dict[str, str]:
    res: dict[str, str] = {}
    t = Timeouts(connect=1.0, read=0.5, pool=0.3)

    # (1) headers, default construction vs proxy construction.  A host *name* is used here
    # because aiohttp's default CookieJar silently ignores cookies from IP-address hosts.
    c = cand.build(base.replace("127.0.0.1", "localhost"), 10, t, False)
    try:
        res["extra hdrs (default client)"] = await extra_headers(c)
        await c.fetch("/set-cookie")
        f = await c.fetch("/headers", keep=True)
        sent = {k.lower() for k, _ in json.loads(f.body)["headers"]}
        res["cookie jar (default client)"] = "yes (cookie sent back)" if "cookie" in sent else "no"
    finally:
        await c.aclose()

    c = cand.build(base, 10, t, True)
    try:
        res["extra hdrs (proxy config)"] = await extra_headers(c)
        # streamed upload with a known length, and without content-type
        f = await c.fetch(
            "/headers",
            method="POST",
            headers={"x-test": "1", "content-length": "300000"},
            body=body_gen,
            keep=True,
        )
        doc = json.loads(f.body)
        extra = sorted({k.lower() for k, _ in doc["headers"]} - EXPECTED_HEADERS)
        framing = [
            k.lower()
            for k, _ in doc["headers"]
            if k.lower() in ("content-length", "transfer-encoding")
        ]
        res["streamed upload (300000 B)"] = (
            f"{'ok' if doc['body_len'] == 300000 else 'BAD ' + str(doc['body_len'])}"
            f" via {'+'.join(framing) or '?'}; extra: {', '.join(extra) or 'none'}"
        )
        # the request target must be forwarded byte for byte
        f = await c.fetch(ODD_TARGET, keep=True)
        got = json.loads(f.body)["target"]
        res["odd path/query kept verbatim"] = "yes" if got == ODD_TARGET else f"NO: {got}"
        # (2) gzip must come through undecoded
        f = await c.fetch("/gzip", keep=True)
        res["auto-decompress (raw read)"] = (
            "no (compressed bytes)"
            if f.body == GZIP_BODY
            else "YES (decoded)"
            if f.body == GZIP_PLAIN
            else f"?? {len(f.body)} bytes"
        )
        # (3) cookie jar
        await c.fetch("/set-cookie")
        f = await c.fetch("/headers", keep=True)
        sent = {k.lower() for k, _ in json.loads(f.body)["headers"]}
        res["cookie jar (proxy config)"] = "YES" if "cookie" in sent else "no"
        # (4) read timeouts
        res["read timeout before headers"] = await expect_error(c.fetch("/slow?s=2"))
        res["read timeout mid-body"] = await expect_error(c.fetch("/slow-body"))
        # upstream dies mid body
        res["upstream truncates body"] = await expect_error(c.fetch("/truncated"))
        # (6) pool exhaustion: 2 slots held by slow requests, 3rd waits for a slot
        hold = Timeouts(connect=1.0, read=5.0, pool=1.0)
        holders = [asyncio.create_task(c.fetch("/slow?s=1.5", timeout=hold)) for _ in range(10)]
        await asyncio.sleep(0.2)
        res["pool exhausted (pool 0.3s)"] = await expect_error(c.fetch("/"))
        await asyncio.gather(*holders, return_exceptions=True)
        # early close must free the slot (10 slots, 30 early closes)
        for _ in range(30):
            await c.fetch("/stream?bytes=67108864", first_chunk_only=True)
        f = await c.fetch("/", timeout=Timeouts(connect=1.0, read=1.0, pool=1.0))
        res["early close frees pool slot"] = "yes" if f.status == 200 else "NO"
    finally:
        await c.aclose()

    # connect timeout: a listener whose accept queue is full drops new SYNs
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    filler = socket.create_connection(listener.getsockname())
    c = cand.build(f"http://127.0.0.1:{listener.getsockname()[1]}", 10, t, True)
    try:
        res["connect timeout (connect 1.0s)"] = await expect_error(c.fetch("/"))
    finally:
        await c.aclose()
        filler.close()
        listener.close()
    # (5) connect refused, and a server that closes without answering
    dead = f"http://127.0.0.1:{free_port()}"
    c = cand.build(dead, 10, t, True)
    try:
        res["connection refused"] = await expect_error(c.fetch("/"))
    finally:
        await c.aclose()
    rude_base, server = await closes_without_response()
    c = cand.build(rude_base, 10, t, True)
    try:
        res["upstream closes w/o response"] = await expect_error(c.fetch("/"))
    finally:
        await c.aclose()
        server.close()
        await server.wait_closed()
    return res


# --------------------------------------------------------------------------------------
# Streaming memory / early abort
# --------------------------------------------------------------------------------------


async def memory_and_abort(base: str, cand: Candidate) -> dict[str, str]:
    import psutil

    proc = psutil.Process()
    res: dict[str, str] = {}
    c = cand.build(base, 10, Timeouts(), True)
    try:
        await c.fetch("/")
        gc.collect()
        baseline = proc.memory_info().rss
        peak = baseline
        samples = 0
        done = threading.Event()

        def sampler() -> None:  # a thread, so it samples even if the loop never yields
            nonlocal peak, samples
            while not done.wait(0.005):
                peak = max(peak, proc.memory_info().rss)
                samples += 1

        thread = threading.Thread(target=sampler, daemon=True)
        thread.start()
        t0 = time.perf_counter()
        try:
            f = await c.fetch(f"/stream?bytes={GIB}")
        finally:
            elapsed = time.perf_counter() - t0
            done.set()
            thread.join()
        peak = max(peak, proc.memory_info().rss)
        ok = "ok" if f.nbytes == GIB else f"SHORT {f.nbytes}"
        res["1 GiB stream"] = (
            f"{ok}, {GIB / elapsed / 1e6:.0f} MB/s, peak RSS +{(peak - baseline) / 1024:.0f} KiB"
            f" ({samples} samples)"
        )

        fds0 = proc.num_fds()
        sem = asyncio.Semaphore(20)  # 20 concurrent aborts against a 10-connection pool

        async def abort_one() -> None:
            async with sem:
                await c.fetch("/stream?bytes=268435456", first_chunk_only=True)

        t0 = time.perf_counter()
        results = await asyncio.gather(*(abort_one() for _ in range(200)), return_exceptions=True)
        aborted = sum(1 for r in results if not isinstance(r, BaseException))
        abort_s = time.perf_counter() - t0
        quick = Timeouts(connect=1.0, read=2.0, pool=2.0)
        after = await asyncio.gather(
            *(c.fetch("/", timeout=quick) for _ in range(50)), return_exceptions=True
        )
        served = sum(1 for r in after if isinstance(r, Fetched) and r.status == 200)
        await asyncio.sleep(0.1)
        res["200 early aborts"] = (
            f"{aborted}/200 in {abort_s:.2f}s, then {served}/50 served, "
            f"open fds {fds0} -> {proc.num_fds()} (pool max 10)"
        )
    finally:
        await c.aclose()
    return res


# --------------------------------------------------------------------------------------


def print_matrix(title: str, cols: list[str], table: dict[str, dict[str, str]]) -> None:
    print(f"\n== {title} ==")
    for row in next(iter(table.values())):
        print(f"{row}:")
        for col in cols:
            print(f"    {col:<14} {table[col][row]}")


async def main_async(args: argparse.Namespace) -> None:
    import aiohttp
    import httpx

    cands = [c for c in candidates() if not args.only or c.key in args.only]
    versions = [f"httpx {httpx.__version__}", f"aiohttp {aiohttp.__version__}"]
    for mod in ("httpx_aiohttp", "httpx2", "httpcore", "httpcore2", "uvicorn"):
        with contextlib.suppress(Exception):
            versions.append(f"{mod} {importlib.metadata.version(mod.replace('_', '-'))}")
    print(
        f"python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"loop {type(asyncio.get_running_loop()).__module__}; " + ", ".join(versions)
    )
    for cand in cands:
        print(f"  {cand.key:<14} = {cand.label}")
    with upstream_process() as base:
        print(f"upstream: uvicorn (h11, pure ASGI) subprocess at {base}")
        if not args.skip_bench:
            await benchmark(base, cands, args.concurrency, args.duration)
        if not args.skip_checks:
            table = {c.key: await checks(base, c) for c in cands}
            print_matrix("behaviour (proxy config unless noted)", [c.key for c in cands], table)
        if not args.skip_memory:
            table = {c.key: await memory_and_abort(base, c) for c in cands}
            print_matrix("streaming memory / early abort", [c.key for c in cands], table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--serve-upstream", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--duration", type=float, default=2.5, help="seconds per cell")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--only", nargs="+", help="candidate keys to run")
    parser.add_argument("--skip-bench", action="store_true")
    parser.add_argument("--skip-checks", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--uvloop", action="store_true", help="run the clients on uvloop")
    args = parser.parse_args()
    if args.serve_upstream:
        serve_upstream(args.serve_upstream)
        return
    if args.uvloop:
        import uvloop

        uvloop.run(main_async(args))
    else:
        asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
