"""The floor: the gateway's job for a cached token done by the least Python that can do it.

    FLOOR_UPSTREAM=http://127.0.0.1:8000 uvicorn benchmarks.floor_app:app

Token from ``Authorization``; a dict cache of the backend's ``/auth/me`` answer for 2 s, with
concurrent misses of one token merged into one call; one identity header toward the upstream;
an aiohttp forward with the response streamed back chunk by chunk. No cookies, routes, audit,
refresh or guests: what any Python proxy doing this job must at least spend, so the gateway's
CPU per request is judged against it (benchmarks/README.md).
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import aiohttp
import yarl

UPSTREAM = os.environ.get("FLOOR_UPSTREAM", "http://127.0.0.1:8000")
TTL_S = 2.0
_HOP = frozenset({b"connection", b"keep-alive", b"transfer-encoding", b"te", b"upgrade",
                  b"proxy-authorization", b"proxy-connection", b"trailer", b"host"})
_OUT_HOP = frozenset({"connection", "keep-alive", "transfer-encoding"})
_UNAUTHORIZED = {"type": "http.response.start", "status": 401,
                 "headers": [(b"content-type", b"application/json"), (b"content-length", b"2")]}

_cache: dict[bytes, tuple[float, str | None]] = {}
_inflight: dict[bytes, asyncio.Future[str | None]] = {}
_session: aiohttp.ClientSession | None = None


def _client() -> aiohttp.ClientSession:
    global _session
    if _session is None:
        _session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=256, limit_per_host=0),
            cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False, trust_env=False,
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            timeout=aiohttp.ClientTimeout(total=None, sock_read=30))
    return _session


async def _ask(auth: bytes) -> str | None:
    async with _client().get(UPSTREAM + "/auth/me",
                             headers={"authorization": auth.decode("latin-1")}) as resp:
        if resp.status != 200:
            return None
        body = await resp.json()
        return str(body["data"]["id"])


async def _identity(auth: bytes) -> str | None:
    now = time.monotonic()
    hit = _cache.get(auth)
    if hit is not None and hit[0] > now:
        return hit[1]
    flight = _inflight.get(auth)
    if flight is None:
        flight = asyncio.ensure_future(_ask(auth))
        _inflight[auth] = flight
        try:
            user = await flight
        finally:
            del _inflight[auth]
        _cache[auth] = (time.monotonic() + TTL_S, user)
        return user
    return await flight


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if _session is not None:
                    await _session.close()
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    auth = b""
    headers: list[tuple[str, str]] = []
    for name, value in scope["headers"]:
        if name == b"authorization":
            auth = value
        if name not in _HOP:
            headers.append((name.decode("latin-1"), value.decode("latin-1")))
    user = await _identity(auth) if auth.startswith(b"Bearer ") else None
    if user is None:
        await send(_UNAUTHORIZED)
        await send({"type": "http.response.body", "body": b"{}"})
        return
    headers.append(("x-auth-user-id", user))
    target = scope.get("raw_path") or scope["path"].encode()
    if scope["query_string"]:
        target += b"?" + scope["query_string"]
    url = yarl.URL(UPSTREAM + target.decode("latin-1"), encoded=True)
    async with _client().request(scope["method"], url, headers=headers,
                                 allow_redirects=False) as resp:
        await send({"type": "http.response.start", "status": resp.status,
                    "headers": [(k, v) for k, v in resp.raw_headers
                                if k.decode("latin-1").lower() not in _OUT_HOP]})
        async for chunk in resp.content.iter_any():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
