"""Proxy probes for the gateway's tests: endpoints that reflect what the backend received
(``/api/echo``, ``/ws/echo``: headers included, so the Authorization a gateway forwarded) and
``/test/*`` helpers (streams, uploads, slow replies, cookies, gzip, hop-by-hop headers, any
status). ``BackendOptions(probes=False)`` leaves them out, as ``gateway demo`` does.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
from collections.abc import AsyncIterator
from email.utils import formatdate

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket

from gateway.demo.endpoint import (
    ALL_METHODS,
    EMPTY_BODY_STATUSES,
    demo_state,
    echo_messages,
    instrumented,
    param,
)

_MAX_CHUNK = 16 * 1024 * 1024


async def _digest_body(request: Request) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    async for chunk in request.stream():
        digest.update(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


@instrumented("echo")
async def echo(request: Request) -> Response:
    size, sha256 = await _digest_body(request)
    scope = request.scope
    raw_path = scope.get("raw_path")
    path = raw_path.decode("latin-1") if raw_path else scope["path"]
    return JSONResponse(
        {
            "method": request.method,
            "path": path,
            "query": scope["query_string"].decode("latin-1"),
            "headers": [
                [name.decode("latin-1"), value.decode("latin-1")]
                for name, value in scope["headers"]
            ],
            "body_len": size,
            "body_sha256": sha256,
        }
    )

async def _repeat(size: int, chunk: int) -> AsyncIterator[bytes]:
    piece = b"x" * chunk
    remaining = size
    while remaining > 0:
        count = min(chunk, remaining)
        yield piece if count == chunk else piece[:count]
        remaining -= count
        await asyncio.sleep(0)  # let a disconnect be noticed between chunks


async def stream_bytes(request: Request) -> Response:
    size = param(request, "size", int, None)
    chunk = param(request, "chunk", int, 65536)
    if size < 0 or not 0 < chunk <= _MAX_CHUNK:
        raise HTTPException(400, f"size must be >= 0 and chunk in 1..{_MAX_CHUNK}")
    return StreamingResponse(_repeat(size, chunk), media_type="application/octet-stream")


@instrumented("upload")
async def upload(request: Request) -> Response:
    size, sha256 = await _digest_body(request)
    return JSONResponse({"received": size, "sha256": sha256})


async def slow(request: Request) -> Response:
    delay = param(request, "delay", float, 1.0)
    await asyncio.sleep(max(delay, 0.0))
    return JSONResponse({"slept": delay})


async def three_cookies(request: Request) -> Response:
    response = JSONResponse({"cookies": ["a", "b", "c"]})
    for cookie in ("a=1; Path=/", "b=2; Path=/", "c=3; Path=/; HttpOnly"):
        response.headers.append("set-cookie", cookie)
    return response


_GZIP_PAYLOAD = {"compressed": True, "message": "hello from a gzip body " * 8}


async def gzipped(request: Request) -> Response:
    body = gzip.compress(json.dumps(_GZIP_PAYLOAD).encode(), mtime=0)
    return Response(body, media_type="application/json", headers={"content-encoding": "gzip"})


async def hop_headers(request: Request) -> Response:
    headers = {
        "connection": "x-hop-custom",
        "x-hop-custom": "1",
        "keep-alive": "timeout=5",
        "proxy-authenticate": "Basic",
        "trailer": "x-t",
        "upgrade": "h2c",
        "x-kept": "yes",
    }
    return JSONResponse({"hop": True}, headers=headers)


async def given_status(request: Request) -> Response:
    code: int = request.path_params["code"]
    if not 200 <= code <= 599:
        raise HTTPException(400, "status must be between 200 and 599")
    if code in EMPTY_BODY_STATUSES:
        return Response(status_code=code)
    return JSONResponse({"status": code}, status_code=code)


def _cookie_part_ok(value: str, forbidden: str) -> bool:
    return all(0x20 < ord(char) < 0x7F and char not in forbidden for char in value)


async def set_cookie(request: Request) -> Response:
    name = param(request, "name", str, None)
    value = param(request, "value", str, "")
    if (
        not name
        or not _cookie_part_ok(name, '()<>@,;:\\"/[]?={}')
        or not _cookie_part_ok(value, '",;\\')
    ):
        raise HTTPException(400, "invalid cookie name or value")
    response = JSONResponse({"set": {name: value}})
    response.headers.append("set-cookie", f"{name}={value}; Path=/")
    return response


async def headers_out(request: Request) -> Response:
    now = demo_state(request).now()
    headers = {"server": "demo-backend", "date": formatdate(now, usegmt=True)}
    return JSONResponse({"headers_out": True}, headers=headers)


async def websocket_echo(websocket: WebSocket) -> None:
    """Says who the gateway said the user is, then echoes text and bytes; the text "close
    <code>" closes with that code. Picks the first subprotocol offered."""
    offered = websocket.scope.get("subprotocols") or []
    await websocket.accept(subprotocol=offered[0] if offered else None)
    await websocket.send_json({"user_id": websocket.headers.get("x-auth-user-id"),
                               "token_type": websocket.headers.get("x-auth-token-type"),
                               "authorization": websocket.headers.get("authorization")})
    await echo_messages(websocket, close_command=True)


ROUTES: list[BaseRoute] = [
    Route("/api/echo", echo, methods=ALL_METHODS),
    Route("/api/echo/{path:path}", echo, methods=ALL_METHODS),
    Route("/test/stream", stream_bytes, methods=["GET"]),
    Route("/test/upload", upload, methods=["POST", "PUT"]),
    Route("/test/slow", slow, methods=["GET"]),
    Route("/test/cookies", three_cookies, methods=["GET"]),
    Route("/test/gzip", gzipped, methods=["GET"]),
    Route("/test/hop", hop_headers, methods=["GET"]),
    Route("/test/status/{code:int}", given_status, methods=ALL_METHODS),
    Route("/test/set-cookie", set_cookie, methods=["GET"]),
    Route("/test/headers-out", headers_out, methods=["GET"]),
    WebSocketRoute("/ws/echo", websocket_echo),
]
