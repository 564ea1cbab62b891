"""WebSocket relay (docs/behaviour.md#websocket).

The handshake is checked like any request by the handler; this module connects an accepted
one to the upstream and relays text, binary and close codes both ways until either side
closes. Refusals are HTTP answers, sent through the ASGI WebSocket denial-response extension
(:func:`as_handshake_answer`).
"""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
from multidict import CIMultiDict

from gateway.proxy import Upstream
from gateway.request import Request
from gateway.responses import send_error
from gateway.types import Headers, Message, Receive, Scope, Send

# Handshake headers aiohttp writes itself for the upstream leg.
_HANDSHAKE = ("sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions",
              "sec-websocket-protocol")


def as_handshake_answer(send: Send, scope: Scope) -> Send:
    """Let the handler answer a WebSocket handshake with an HTTP response: through the
    ``websocket.http.response`` extension when the server has it, else as a close (1008)."""
    denial = "websocket.http.response" in (scope.get("extensions") or {})

    async def wrapped(message: Message) -> None:
        kind = message["type"]
        if kind.startswith("http.response."):
            if denial:
                message["type"] = "websocket." + kind
            elif kind == "http.response.start":
                message = {"type": "websocket.close", "code": 1008}
            else:
                return
        await send(message)

    return wrapped


class WebSocketRelay:
    def __init__(self, upstream: Upstream) -> None:
        self._upstream = upstream
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        # Its own unbounded pool: long-lived sockets must not starve the HTTP pool.
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent",), auto_decompress=False, trust_env=False)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def forward(self, request: Request, receive: Receive, send: Send, *,
                      headers: CIMultiDict[str], extra_response_headers: Headers = ()) -> None:
        assert self._session is not None, "WebSocketRelay.start() was not awaited"
        url = self._upstream.url(request.path, request.query)
        url = url.with_scheme("wss" if url.scheme == "https" else "ws")
        outgoing = headers
        for name in _HANDSHAKE:
            outgoing.popall(name, None)
        scope = request.scope
        try:
            upstream = await self._session.ws_connect(
                url,
                headers=outgoing,
                protocols=tuple(scope.get("subprotocols") or ()),
                autoclose=False, autoping=True, max_msg_size=0,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=10.0),
            )
        except aiohttp.WSServerHandshakeError as exc:
            await send_error(send, 502, "upstream_refused",
                             f"The upstream refused the WebSocket ({exc.status}).",
                             extra_response_headers)
            return
        except (aiohttp.ClientError, OSError, TimeoutError):
            await send_error(send, 502, "upstream_unreachable",
                             "The upstream could not be reached.", extra_response_headers)
            return
        except ValueError:  # aiohttp refuses a header with a control character
            await send_error(send, 502, "upstream_request_invalid",
                             "The request could not be sent upstream.", extra_response_headers)
            return
        async with upstream:
            await send({"type": "websocket.accept", "subprotocol": upstream.protocol,
                        "headers": list(extra_response_headers)})
            await _relay(upstream, receive, send)


async def _relay(upstream: aiohttp.ClientWebSocketResponse, receive: Receive,
                 send: Send) -> None:
    to_upstream = asyncio.ensure_future(_client_to_upstream(upstream, receive))
    to_client = asyncio.ensure_future(_upstream_to_client(upstream, send))
    try:
        await asyncio.wait({to_upstream, to_client}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (to_upstream, to_client):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def _client_to_upstream(upstream: aiohttp.ClientWebSocketResponse,
                              receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "websocket.receive":
            if message.get("text") is not None:
                await upstream.send_str(message["text"])
            elif message.get("bytes") is not None:
                await upstream.send_bytes(message["bytes"])
        elif message["type"] == "websocket.disconnect":
            await upstream.close(code=message.get("code", 1000))
            return


async def _upstream_to_client(upstream: aiohttp.ClientWebSocketResponse, send: Send) -> None:
    async for message in upstream:
        if message.type == aiohttp.WSMsgType.TEXT:
            await send({"type": "websocket.send", "text": message.data})
        elif message.type == aiohttp.WSMsgType.BINARY:
            await send({"type": "websocket.send", "bytes": message.data})
        elif message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING,
                              aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
            break
    code = upstream.close_code or 1000
    await send({"type": "websocket.close", "code": code})
