"""The HTTP/1.1 server side of ``gateway serve``: uvicorn, with limits only a server can keep.

uvicorn's protocols buffer a request head of any size (httptools) or up to 16 KiB then answer
a bare 400 (h11), never time out a connection that is opened and left silent or that drips its
head, and, under httptools, append chunked trailer fields to the request's headers when they
arrive before the app reads them (a trailer ``Cookie`` would then authenticate the request).
The two protocol classes below add, on top of uvicorn's own:

- ``server.max_head_bytes``: a head larger than this is answered 431 and the connection
  closed as soon as the bytes arrive, before they are buffered;
- ``server.head_timeout_s``: a connection that has not delivered a complete request head this
  long after it opened, or after the first byte of its next request, is closed;
- trailer fields are dropped (h11 already ignores them): request headers are the head's only;
- (httptools) what one turn of the event loop writes leaves in one ``send()``: a small
  answer's head and body together, one system call and one wake-up of the client instead of
  two (benchmarks/README.md).

``server.keepalive_timeout_s`` is uvicorn's own ``timeout_keep_alive``. The app checks header
count, head size and Host itself (``gateway/limits.py``), so those hold under any ASGI server;
see ``docs/limits.md``.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import uuid
from dataclasses import dataclass
from typing import Any, Literal

import h11
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol as _UvicornH11
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _UvicornHttpTools
from uvicorn.server import ServerState

from gateway.settings import ServerSettings

HttpKind = Literal["auto", "httptools", "h11"]

# How long a refused connection's remaining input is read and dropped before it is closed:
# closing with unread input makes the kernel send a reset, which can destroy the 431 answer
# before the client reads it (nginx's lingering close does the same).
_LINGER_S = 2.0


@dataclass(frozen=True)
class ConnectionLimits:
    """What the protocol classes enforce per connection (from ``[server]``)."""

    max_head_bytes: int
    head_timeout_s: float

    @classmethod
    def of(cls, settings: ServerSettings) -> ConnectionLimits:
        return cls(settings.max_head_bytes, settings.head_timeout_s)


def _refusal_bytes(status: int, reason: str, error: str, detail: str) -> bytes:
    body = json.dumps({"error": error, "detail": detail}, separators=(",", ":")).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\n"
            "content-type: application/json\r\n"
            f"content-length: {len(body)}\r\n"
            "cache-control: no-store\r\n"
            f"x-request-id: {uuid.uuid4().hex}\r\n"
            "connection: close\r\n\r\n")
    return head.encode("ascii") + body


_HEAD_TOO_LARGE = (431, "Request Header Fields Too Large", "headers_too_large",
                   "The request head is too large.")


class _HeadGuard(asyncio.Protocol):
    """Counts the bytes of the request head being received and times its arrival.

    ``_in_head`` is True from the end of one request's body (or the connection's start) to
    the end of the next head; bytes that arrive then are head bytes up to the blank line that
    ends it. A head that runs past the limit is refused before it reaches the parser.

    A mixin placed before uvicorn's protocol class (which also derives from
    ``asyncio.Protocol``), so its ``super()`` calls reach uvicorn's: the construction and the
    connection hooks below are the same for both HTTP implementations."""

    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    cycle: Any  # uvicorn's RequestResponseCycle of the request being answered, if any

    def __init__(self, config: Config, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None, *,
                 limits: ConnectionLimits) -> None:
        # The next class in the MRO is uvicorn's protocol, which takes these arguments.
        super().__init__(config, server_state, app_state, _loop)  # type: ignore[call-arg]
        self._limits = limits
        self._in_head = True
        self._head_bytes = 0
        self._tail = b""
        self._head_timer: asyncio.TimerHandle | None = None
        self._refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self._limits.head_timeout_s,
                                                    self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _busy(self) -> bool:
        """A response is being sent (bytes now are a pipelined next request)."""
        return self.cycle is not None and not self.cycle.response_complete

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self._in_head or self.transport.is_closing():
            return
        if self._busy():  # the clock for the next head starts when this response is done
            self._arm_head_timer()
            return
        self.transport.close()

    def _head_done(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        self._tail = b""
        self._disarm_head_timer()

    def _next_head(self) -> None:
        self._in_head = True
        self._head_bytes = 0
        self._tail = b""

    def _head_too_large(self, data: bytes) -> bool:
        """Count ``data`` as head bytes (up to the end of the head, if it is in there)."""
        window = self._tail + data
        end = window.find(b"\r\n\r\n")
        counted = len(data) if end < 0 else end + 4 - len(self._tail)
        self._head_bytes += counted
        self._tail = window[-3:]
        return self._head_bytes > self._limits.max_head_bytes

    def _guard(self, data: bytes) -> bool:
        """Before the parser sees ``data``: False if the connection is (being) refused."""
        if self._refused:
            return False
        if not self._in_head:
            return True
        self._arm_head_timer()
        if not self._head_too_large(data):
            return True
        self._refuse(*_HEAD_TOO_LARGE)
        return False

    def _refuse(self, status: int, reason: str, error: str, detail: str) -> None:
        self._refused = True
        self._disarm_head_timer()
        if self._busy():  # an answer now would land inside the one being sent
            self.transport.close()
            return
        self.transport.write(_refusal_bytes(status, reason, error, detail))
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(_LINGER_S, self.transport.close)


class H11Protocol(_HeadGuard, _UvicornH11):
    """uvicorn's h11 protocol with the head limits and head timeout above."""

    def __init__(self, config: Config, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None, *,
                 limits: ConnectionLimits) -> None:
        super().__init__(config, server_state, app_state, _loop, limits=limits)
        # h11's own bound is a backstop above ours (it answers a bare 400).
        self.conn = h11.Connection(h11.SERVER,
                                   max_incomplete_event_size=2 * limits.max_head_bytes + 65536)

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        self._head_done()  # the connection now belongs to the WebSocket protocol
        super().handle_websocket_upgrade(event)

    def data_received(self, data: bytes) -> None:
        # Between requests (IDLE), or after this one's body (DONE: bytes now belong to the
        # next request), incoming bytes are head bytes.
        self._in_head = self.conn.their_state in (h11.IDLE, h11.DONE)
        if not self._guard(data):
            return
        cycle = self.cycle
        super().data_received(data)
        if self.cycle is not cycle:  # a head was complete: a new request started
            self._head_done()
            if self.conn.their_state is h11.DONE:  # no body: what follows is the next head
                self._next_head()


class HttpToolsProtocol(_HeadGuard, _UvicornHttpTools):
    """uvicorn's httptools protocol with the head limits, head timeout and no trailers, writing
    through a :class:`_CoalescingTransport`."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.transport = _CoalescingTransport(transport, self.loop)  # type: ignore[assignment]

    def handle_websocket_upgrade(self) -> None:
        # The WebSocket protocol takes the connection over: it gets the real transport.
        if isinstance(self.transport, _CoalescingTransport):
            self.transport.flush()
            self.transport = self.transport._transport
        super().handle_websocket_upgrade()

    def data_received(self, data: bytes) -> None:
        if self._guard(data):
            super().data_received(data)

    def on_message_begin(self) -> None:
        self._in_head = True
        super().on_message_begin()

    def on_header(self, name: bytes, value: bytes) -> None:
        # After the head, the parser reports chunked trailer fields through this same
        # callback and uvicorn would append them to scope["headers"]: they are dropped.
        if self._in_head:
            super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._head_done()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._next_head()
        super().on_message_complete()


class _CoalescingTransport:
    """The connection's transport, with what is written in one turn of the event loop sent in
    one ``send()``.

    uvicorn writes a response's head when the app sends ``http.response.start`` and its body
    at the next message: for the gateway's usual small answer, two system calls and two
    wake-ups of the client where one does. Writes are gathered and sent together by a callback
    scheduled for the loop's next turn (or at once, before a close, an end of input or
    anything that must follow them). A large write is sent at once, after what is pending:
    streaming is not held back. Everything else is the real transport's."""

    __slots__ = ("_loop", "_pending", "_scheduled", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []
        self._scheduled = False

    def write(self, data: bytes) -> None:
        if len(data) >= _COALESCE_BELOW:
            self.flush()
            self._transport.write(data)
            return
        self._pending.append(data)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush_scheduled)

    def _flush_scheduled(self) -> None:
        self._scheduled = False
        self.flush()

    def flush(self) -> None:
        if self._pending:
            data = b"".join(self._pending) if len(self._pending) > 1 else self._pending[0]
            self._pending.clear()
            if not self._transport.is_closing():
                self._transport.write(data)

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending.clear()
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


# Writes this large go out at once (after what is pending): a streamed body's chunks.
_COALESCE_BELOW = 16 * 1024


def protocol_factory(limits: ConnectionLimits, http: HttpKind = "auto") -> Any:
    """uvicorn's ``http`` option: the protocol class bound to ``limits`` (picklable, so it
    also works with several workers)."""
    if http == "h11":
        return functools.partial(H11Protocol, limits=limits)
    return functools.partial(HttpToolsProtocol, limits=limits)


def uvicorn_options(settings: ServerSettings, http: HttpKind = "auto") -> dict[str, Any]:
    """The uvicorn options that carry ``[server]``'s limits (docs/limits.md)."""
    return {
        "http": protocol_factory(ConnectionLimits.of(settings), http),
        "timeout_keep_alive": settings.keepalive_timeout_s,
    }


def serve_with_admin(config: Config, admin_host: str, admin_port: int) -> int:
    """Serve ``config`` as ``uvicorn.run`` would, on one more socket: the admin listener
    (``server.admin_port``), served by the same app, which tells the two apart by the local
    port (``gateway/endpoints.py``). Returns the process's exit code."""
    from uvicorn import Server
    from uvicorn.supervisors import Multiprocess

    sockets = [config.bind_socket(),
               Config(config.app, host=admin_host, port=admin_port).bind_socket()]
    server = Server(config)
    try:
        if config.workers > 1:
            options: dict[str, Any] = {"sockets": sockets}
            if "target" in inspect.signature(Multiprocess).parameters:  # older uvicorn
                options["target"] = server.run
            Multiprocess(config, **options).run()
            return 0
        server.run(sockets=sockets)
    except KeyboardInterrupt:  # pragma: no cover - Ctrl-C
        pass
    return 0 if server.started else 3  # 3: uvicorn's own "startup failed"
