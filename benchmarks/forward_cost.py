"""The gateway's forwarding path vs the floor's, in-process: client-side CPU per request.

    .venv/bin/python benchmarks/forward_cost.py [--requests 2000] [--rounds 2]

Starts ``bench_backend.py`` and, in this process (uvloop), sends GETs to it one at a time
through (a) the gateway's ``upstream_headers`` + ``Upstream.forward`` and (b) the
floor app's forward (``floor_app.py``: a header list, ``session.request``, ``iter_any``), each
answering into an ASGI ``send`` that drops the messages. CPU time (``process_time``) per
request: what the gateway's forwarding costs beyond the floor's (benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import aiohttp  # noqa: E402
import uvloop  # noqa: E402
import yarl  # noqa: E402
from suite import _uvicorn  # noqa: E402

from gateway.proxy import Upstream, upstream_headers  # noqa: E402
from gateway.request import Request, TrustedProxies  # noqa: E402
from gateway.settings import UpstreamSettings  # noqa: E402
from tests.servers import free_port  # noqa: E402

_HEADERS = [(b"host", b"gw"), (b"user-agent", b"wrk"), (b"accept", b"*/*")]


def _scope() -> dict[str, Any]:
    return {"type": "http", "method": "GET", "path": "/api/items", "raw_path": b"/api/items",
            "query_string": b"", "headers": list(_HEADERS), "client": ("127.0.0.1", 5),
            "scheme": "http", "http_version": "1.1"}


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _send(message: dict[str, Any]) -> None:
    return None


async def _main(base: str, requests: int, rounds: int) -> None:
    upstream = Upstream(UpstreamSettings(url=base))
    await upstream.start()
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=256, limit_per_host=0),
        cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False, trust_env=False,
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        timeout=aiohttp.ClientTimeout(total=None, sock_read=30))
    trusted = TrustedProxies([])

    async def gateway() -> None:
        request = Request(_scope(), trusted)
        request.path = "/api/items"
        headers = upstream_headers(request, own_cookies=None, token=None)
        await upstream.forward(request, _receive, _send, headers=headers)

    async def floor() -> None:
        scope = _scope()
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]
                   if k != b"host"]
        url = yarl.URL(base + "/api/items", encoded=True)
        async with session.request("GET", url, headers=headers,
                                   allow_redirects=False) as resp:
            await _send({"type": "http.response.start", "status": resp.status,
                         "headers": resp.raw_headers})
            async for chunk in resp.content.iter_any():
                await _send({"type": "http.response.body", "body": chunk, "more_body": True})
            await _send({"type": "http.response.body", "body": b""})

    cases: list[tuple[str, Callable[[], Awaitable[None]]]] = [
        ("gateway Upstream.forward", gateway), ("floor forward", floor)]
    try:
        for _ in range(rounds):
            for name, forward in cases:
                for _ in range(200):
                    await forward()
                start = time.process_time()
                for _ in range(requests):
                    await forward()
                cpu = (time.process_time() - start) / requests * 1e6
                print(f"{name:26} {cpu:6.1f} us CPU per request (client side)")
    finally:
        await upstream.close()
        await session.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    port = free_port()
    backend = _uvicorn("benchmarks.bench_backend:app", port)
    backend.start()
    try:
        uvloop.run(_main(f"http://127.0.0.1:{port}", args.requests, args.rounds))
    finally:
        backend.stop()


if __name__ == "__main__":
    main()
