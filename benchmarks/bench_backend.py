"""The benchmark's backend and upstream in one pure-ASGI app, counting its auth calls.

    uvicorn benchmarks.bench_backend:app

* ``GET /auth/me``: ``Authorization: Bearer tok-...`` is valid (answers the user as JSON and in
  ``x-user-id``, for nginx's ``auth_request_set``); anything else is 401.
* ``POST /auth/refresh``: ``Authorization: Bearer <expired JWT>`` gets ``tok-r-<sub>``.
* ``GET /download?bytes=N``: N bytes streamed in 64 KiB chunks.
* anything else: a ~200-byte JSON body (the upstream's answer).
* ``GET /__stats`` and ``POST /__reset``: the counters below.

A call is counted as a duplicate (more than the minimum) when the same token was validated less
than ``DUP_WINDOW_S`` earlier (every proxy measured here caches a validation for 2 s), or when
the same credential is refreshed twice (rotation grace makes a second refresh unnecessary).
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

DUP_WINDOW_S = 1.9  # a little under the proxies' 2 s cache: timer granularity is not a dup
_BODY = json.dumps({"items": [{"id": i, "name": f"item-{i}"} for i in range(7)]}).encode()
_CHUNK = b"x" * 65536

_last_me: dict[bytes, float] = {}
_refreshed: set[bytes] = set()
_stats: dict[str, int] = {}


def _reset() -> None:
    _last_me.clear()
    _refreshed.clear()
    _stats.update(me=0, me_dup=0, me_distinct=0, refresh=0, refresh_dup=0, upstream=0)


_reset()


def _bearer(scope: dict[str, Any]) -> bytes:
    for name, value in scope["headers"]:
        if name == b"authorization":
            return bytes(value[7:]) if value[:7] == b"Bearer " else b""
    return b""


def _jwt_sub(token: bytes) -> str | None:
    parts = token.split(b".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + b"=" * (-len(parts[1]) % 4)))
    except ValueError:
        return None
    sub = claims.get("sub") if isinstance(claims, dict) else None
    return sub if isinstance(sub, str) else None


async def _answer(send: Any, status: int, body: bytes,
                  extra: list[tuple[bytes, bytes]] | None = None) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *(extra or [])]})
    await send({"type": "http.response.body", "body": body})


async def _me(scope: dict[str, Any], send: Any) -> None:
    token = _bearer(scope)
    now = time.monotonic()
    _stats["me"] += 1
    last = _last_me.get(token)
    if last is None:
        _stats["me_distinct"] += 1
    elif now - last < DUP_WINDOW_S:
        _stats["me_dup"] += 1
    _last_me[token] = now
    if not token.startswith(b"tok-"):
        await _answer(send, 401, b'{"detail":"invalid"}')
        return
    user_id = token[4:].decode("ascii")
    body = json.dumps({"data": {"id": user_id, "roles": ["user"]}}).encode()
    await _answer(send, 200, body, [(b"x-user-id", user_id.encode("ascii"))])


async def _refresh(scope: dict[str, Any], send: Any) -> None:
    token = _bearer(scope)
    _stats["refresh"] += 1
    if token in _refreshed:
        _stats["refresh_dup"] += 1
    _refreshed.add(token)
    sub = _jwt_sub(token)
    if sub is None:
        await _answer(send, 401, b'{"detail":"invalid"}')
        return
    await _answer(send, 200, json.dumps({"data": {"accessToken": f"tok-r-{sub}"}}).encode())


async def _download(scope: dict[str, Any], send: Any) -> None:
    size = 0
    for pair in scope["query_string"].split(b"&"):
        if pair.startswith(b"bytes="):
            size = int(pair[6:])
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/octet-stream"),
                            (b"content-length", str(size).encode())]})
    left = size
    while left > 0:
        piece = _CHUNK if left >= len(_CHUNK) else _CHUNK[:left]
        left -= len(piece)
        await send({"type": "http.response.body", "body": piece, "more_body": left > 0})
    if size == 0:
        await send({"type": "http.response.body", "body": b""})


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/auth/me":
        await _me(scope, send)
    elif path == "/auth/refresh":
        await _refresh(scope, send)
    elif path == "/__stats":
        await _answer(send, 200, json.dumps(_stats).encode())
    elif path == "/__reset":
        _reset()
        await _answer(send, 200, b"{}")
    elif path == "/download":
        _stats["upstream"] += 1
        await _download(scope, send)
    else:
        _stats["upstream"] += 1
        await _answer(send, 200, _BODY)
