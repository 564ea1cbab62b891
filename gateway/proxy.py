"""The streaming forwarder: request headers in, bodies both ways, upstream errors out.

One :class:`Upstream` (an aiohttp session with a bounded pool, no cookie jar, no headers of
its own, no decompression) is shared by every request. Bodies are streamed both ways; the
response to a client that goes away is abandoned and its upstream connection closed.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from urllib.parse import urlsplit

import aiohttp
import anyio
from multidict import CIMultiDict
from yarl import URL

from gateway.accesslog import current_request
from gateway.metrics import AuthEndpoint, CallOutcome, Metrics, call_outcome
from gateway.owncookies import OwnCookies, without_set_cookies
from gateway.request import Request, TrustedProxies, connection_listed
from gateway.responses import send_error
from gateway.settings import UpstreamSettings
from gateway.types import Headers, Receive, Send

__all__ = ["TrustedProxies", "Upstream", "pump", "response_headers", "upstream_headers"]

HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization",
    b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade",
})
_FORWARDED = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host",
                        b"forwarded"})
# Other client-addressing headers proxies set: passed on only from a trusted peer.
_PROXY_SET = frozenset({b"x-real-ip", b"x-forwarded-port", b"x-forwarded-prefix",
                        b"x-forwarded-server", b"x-forwarded-ssl", b"x-client-ip",
                        b"true-client-ip"})
# Upstream headers the serving ASGI server writes itself (nginx drops them the same way).
_SERVER_OWNED = frozenset({b"server", b"date"})
# Request headers the gateway always sets itself (Authorization only for a valid session).
_GATEWAY_OWNED = frozenset({b"x-request-id", b"authorization"})
# The client's framing is never forwarded as received: the gateway frames the body it reads
# itself (Upstream.forward). ``Expect: 100-continue`` is answered toward the client by the
# server; sent on, it would make the client library wait for a 100 that may never come before
# its read timeout even starts.
_FRAMING = frozenset({b"content-length", b"expect"})
_DROPPED = HOP_BY_HOP | _GATEWAY_OWNED | _FRAMING
# Request headers passed on as they are unless ``Connection`` names them: the common ones.
_PASSED = frozenset({b"accept", b"accept-encoding", b"accept-language", b"user-agent",
                     b"content-type", b"referer", b"origin", b"cache-control", b"pragma",
                     b"if-none-match", b"if-modified-since", b"sec-fetch-site",
                     b"sec-fetch-mode", b"sec-fetch-dest", b"x-requested-with"})
CHUNK = 64 * 1024
# A body announced at no more than one chunk is read in one go (what streaming it would
# read anyway) and sent with its headers; anything larger streams.
_SMALL_BODY = CHUNK
_UNSAFE_QUERY_BYTE = re.compile(rb"[^\x21-\x7e]")


# Takes over relaying an upstream reply (login capture's, gateway/login.py): the response, the
# client's send, the upstream's headers as the client may see them, and the gateway's own
# headers owed to the client whatever the answer. False: not its kind of reply, relay it as
# any other.
ResponseRelay = Callable[
    [aiohttp.ClientResponse, Send, list[tuple[bytes, bytes]], list[tuple[bytes, bytes]]],
    Awaitable[bool]]


class ClientDisconnect(Exception):
    """The client went away while we were reading its request body."""


def is_identity_header(name: bytes) -> bool:
    """Headers only the gateway may set: ``x-auth-*`` and ``x-refreshed-token``, any spelling."""
    name = name.lower().replace(b"_", b"-")
    return name.startswith(b"x-auth-") or name == b"x-refreshed-token"


def _underscored_spoof(name: bytes) -> bool:
    """``X_Forwarded_For`` and friends: WSGI/CGI servers read ``_`` as ``-`` (both become
    ``HTTP_X_FORWARDED_FOR``), so such a spelling would pass a client's own value as the
    proxy's. Never forwarded, from any peer."""
    folded = name.replace(b"_", b"-")
    return folded in _FORWARDED or folded in _PROXY_SET or folded in _GATEWAY_OWNED


class InvalidHeader(ValueError):
    """A request header the upstream cannot be sent as received (bytes that are not UTF-8)."""


def upstream_headers(request: Request, *, own_cookies: OwnCookies | None, token: str | None,
                     identity: Headers = (), keep_no_cookie: bool = False) -> CIMultiDict[str]:
    """What the upstream sees of the request, built once, after the access decision, in
    aiohttp's own header type: the client's headers minus

    * hop-by-hop headers and any named in ``Connection``, ``Host`` (the upstream's own is
      used), the body's framing (the gateway frames the body itself: ``Upstream.forward``);
    * ``Authorization`` and the identity headers: only the gateway sets those (``identity``,
      from its own validation);
    * ``X-Forwarded-*``, ``X-Real-IP`` and the like unless the peer is trusted (``_``
      spellings of them from anyone);
    * the gateway's own cookies (``gateway/owncookies.py``; ``keep_no_cookie`` removes all
      three whatever the path, ``token`` is the one being forwarded),

    then ``X-Forwarded-For/-Proto/-Host`` and ``x-request-id`` (re)built. Header bytes are
    decoded as UTF-8, which aiohttp writes back exactly; bytes that are not UTF-8 raise
    :class:`InvalidHeader` (the caller answers 400) rather than reaching the upstream
    altered."""
    listed = request.connection_listed
    peer_trusted = request.peer_trusted
    kept: list[tuple[str, str]] = []
    host = b""
    prior_for = b""
    scope = request.scope
    proto = scope.get("scheme", "http").encode("latin-1")
    forwarded_host = b""
    cookies = own_cookies.forwarded_cookie if own_cookies is not None else None
    try:
        for name, value in request.headers:
            if listed and name in listed:
                continue
            if name in _PASSED:  # the common ones, known to need nothing more
                pass
            elif name == b"host":
                host = value
                continue
            elif name in _DROPPED:
                continue
            elif name == b"cookie":
                if cookies is not None:
                    filtered = cookies(value, path=request.path, token=token,
                                       keep_none=keep_no_cookie)
                    if filtered is None:
                        continue
                    value = filtered
            elif b"_" in name and _underscored_spoof(name):
                continue
            elif name in _PROXY_SET:
                if not peer_trusted:
                    continue
            elif name in _FORWARDED:
                if peer_trusted:
                    if name == b"x-forwarded-for":
                        prior_for = value if not prior_for else prior_for + b", " + value
                    elif name == b"x-forwarded-proto":
                        proto = value
                    elif name == b"x-forwarded-host":
                        forwarded_host = value
                continue
            elif is_identity_header(name):
                continue
            kept.append((name.decode("latin-1"), value.decode("utf-8")))
        for name, value in identity:
            kept.append((name.decode("latin-1"), value.decode("utf-8")))
    except UnicodeDecodeError:
        raise InvalidHeader("A request header holds bytes that are not UTF-8.") from None
    peer = request.peer
    kept.append(("x-forwarded-for", (prior_for.decode("latin-1") + ", " + peer) if prior_for
                 else peer))
    kept.append(("x-forwarded-proto", proto.decode("latin-1")))
    if forwarded_host or host:
        kept.append(("x-forwarded-host", (forwarded_host or host).decode("latin-1")))
    kept.append(("x-request-id", request.request_id))
    return CIMultiDict(kept)


def response_headers(raw: Iterable[tuple[bytes, bytes]],
                     drop_cookies: frozenset[bytes] = frozenset()) -> list[tuple[bytes, bytes]]:
    """Upstream response headers minus hop-by-hop ones and any ``Set-Cookie`` of a name in
    ``drop_cookies`` (the gateway's own: gateway/owncookies.py); each ``Set-Cookie`` stays
    its own header."""
    raw = list(raw)
    listed = connection_listed(v for n, v in raw if n.lower() == b"connection")
    out: list[tuple[bytes, bytes]] = []
    for name, value in raw:
        lower = name.lower()
        if lower in HOP_BY_HOP or lower in listed or lower in _SERVER_OWNED:
            continue
        if lower == b"x-request-id":
            continue
        out.append((lower, value))
    return without_set_cookies(out, drop_cookies)


class _BodyTooLarge(Exception):
    """The request body went past ``server.max_body_bytes``."""


class _BodyMismatch(Exception):
    """The body the server delivered does not match the length the gateway announced."""


class _RequestBody:
    """The client's body as an async iterator of chunks, read from ASGI ``receive``, counted
    against ``limit`` (0 = none) and, when ``length`` is given, against that length."""

    def __init__(self, receive: Receive, has_body: bool, *, limit: int = 0,
                 length: int | None = None) -> None:
        self._receive = receive
        self.done = not has_body
        self._limit = limit
        self._length = length
        self._prefix = bytearray()
        self.read = 0
        self.too_large = False

    async def _next(self) -> bytes:
        message = await self._receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        self.done = not message.get("more_body", False)
        chunk: bytes = message.get("body", b"")
        self.read += len(chunk)
        if self._limit and self.read > self._limit:
            self.too_large = True
            raise _BodyTooLarge()
        if self._length is not None and (
                self.read > self._length or (self.done and self.read != self._length)):
            raise _BodyMismatch()
        return chunk

    async def prefetch(self, size: int) -> bytes | None:
        """Read up to ``size`` bytes ahead: the whole body if it is that small (then returned),
        else None and what was read is sent first when the body streams."""
        while not self.done and len(self._prefix) < size:
            self._prefix += await self._next()
        return bytes(self._prefix) if self.done else None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self._prefix:
            prefix, self._prefix = bytes(self._prefix), bytearray()
            yield prefix
        while not self.done:
            chunk = await self._next()
            if chunk:
                yield chunk


async def _send_too_large(send: Send, own: list[tuple[bytes, bytes]], head: bool) -> None:
    """413, and the connection closed: the rest of the body is not worth reading."""
    await send_error(send, 413, "body_too_large", "The request body is too large.",
                     [*own, (b"connection", b"close")], head=head)


async def _acquire_within(slots: asyncio.Semaphore, timeout: float) -> bool:
    """A slot of ``slots``, waited for up to ``timeout`` (False then); at once when one is
    free, without a timer."""
    if not slots.locked():
        await slots.acquire()
        return True
    try:
        await asyncio.wait_for(slots.acquire(), timeout)
    except TimeoutError:
        return False
    return True


async def _wait_for_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class _ClientSlots:
    """``upstream.max_connections_per_client``: how many upstream connections one client
    address may hold. Past the bound a request waits, like for the pool itself, up to the
    connect timeout for one of its own client's requests to finish: a burst of quick requests
    from one client is served, a client holding its connections with slow uploads gets 429,
    and nobody else waits for it. 0 = no bound."""

    def __init__(self, bound: int) -> None:
        self._bound = bound
        # client -> (its slots, requests holding or waiting for one); dropped when unused.
        self._clients: dict[str, tuple[asyncio.Semaphore, list[int]]] = {}

    async def acquire(self, client: str, timeout: float) -> bool:
        if not self._bound:
            return True
        entry = self._clients.get(client)
        if entry is None:
            entry = self._clients[client] = (asyncio.Semaphore(self._bound), [0])
        slots, users = entry
        users[0] += 1
        try:
            acquired = await _acquire_within(slots, timeout)
        except BaseException:  # cancelled while waiting: the client went away
            self._leave(client, users)
            raise
        if not acquired:
            self._leave(client, users)
        return acquired

    def release(self, client: str) -> None:
        if not self._bound:
            return
        slots, users = self._clients[client]
        slots.release()
        self._leave(client, users)

    def _leave(self, client: str, users: list[int]) -> None:
        users[0] -= 1
        if not users[0]:
            del self._clients[client]


class Upstream:
    """The shared client toward the upstream app, and the forwarding of one request."""

    def __init__(self, settings: UpstreamSettings, own_cookies: OwnCookies | None = None, *,
                 max_body_bytes: int = 0, metrics: Metrics | None = None) -> None:
        self._own_cookies = own_cookies
        parts = urlsplit(settings.url)
        self._metrics = metrics
        self._origin = f"{parts.scheme}://{parts.netloc}"
        self._base_path = parts.path.rstrip("/")
        self._settings = settings
        self._max_body_bytes = max_body_bytes
        self._session: aiohttp.ClientSession | None = None
        self._slots: asyncio.Semaphore | None = None
        self._per_client = _ClientSlots(settings.max_connections_per_client)

    async def start(self) -> None:
        s = self._settings
        connector = aiohttp.TCPConnector(limit=s.max_connections, limit_per_host=0,
                                         enable_cleanup_closed=True)
        self._session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept", "Content-Type"),
            trust_env=False,
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=s.connect_timeout_s,
                                          sock_read=s.read_timeout_s),
            read_bufsize=CHUNK,
        )
        self._slots = asyncio.Semaphore(s.max_connections)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def url(self, path: str, query: bytes) -> URL:
        target = self._origin + self._base_path + path
        if query:
            target += "?" + _UNSAFE_QUERY_BYTE.sub(
                lambda m: b"%%%02X" % m.group(0)[0], query).decode("ascii")
        return URL(target, encoded=True)

    async def forward(
        self,
        request: Request,
        receive: Receive,
        send: Send,
        *,
        headers: CIMultiDict[str],
        extra_response_headers: Headers = (),
        relay: ResponseRelay | None = None,
        auth_endpoint: AuthEndpoint | None = None,
    ) -> None:
        """Send the request upstream with ``headers`` (:func:`upstream_headers`) and stream
        the answer back to the client, ``extra_response_headers`` added.

        ``relay`` takes over relaying the upstream's reply (login capture's:
        ``gateway/login.py``). ``auth_endpoint`` names an auth call made this way (login),
        also timed as one in the metrics."""
        head = request.method == "HEAD"
        own = [*extra_response_headers]
        # Framing toward the upstream is the gateway's own (docs/limits.md): a body announced
        # with one Content-Length is sent with that length, counted and cut off if it differs;
        # any other body is read ahead up to one chunk and, if it ends there, sent with its
        # exact length, else chunked.
        length = request.declared_length
        limit = self._max_body_bytes
        if limit and length is not None and length > limit:
            await _send_too_large(send, own, head)
            return
        body = _RequestBody(receive, request.has_body, limit=limit, length=length)
        whole: bytes | None = None
        if not body.done and (length is None or length <= _SMALL_BODY):
            try:
                whole = await body.prefetch(_SMALL_BODY)
            except _BodyTooLarge:
                await _send_too_large(send, own, head)
                return
            except (ClientDisconnect, _BodyMismatch):
                return
        assert self._session is not None and self._slots is not None, (
            "Upstream.start() was not awaited")
        client = request.client_ip
        if not await self._per_client.acquire(client, self._settings.connect_timeout_s):
            await send_error(send, 429, "too_many_connections",
                             "This client holds too many upstream connections; "
                             "try again shortly.",
                             [*own, (b"retry-after", b"1")], head=head)
            return
        try:
            pooled = await _acquire_within(self._slots, self._settings.connect_timeout_s)
        except BaseException:  # cancelled while waiting: the client went away
            self._per_client.release(client)
            raise
        if not pooled:
            self._per_client.release(client)
            await send_error(send, 503, "upstream_busy",
                             "The upstream connection pool is exhausted; try again shortly.",
                             [*own, (b"retry-after", b"1")], head=head)
            return
        if self._metrics is not None:
            self._metrics.upstream_in_use.inc()
        try:
            data: bytes | AsyncIterator[bytes] | None = whole
            if whole is None and not body.done:
                data = body.__aiter__()
                if length is not None:
                    headers["Content-Length"] = str(length)
            started = time.perf_counter()
            try:
                response = await self._session.request(
                    request.method,
                    self.url(request.path, request.query),
                    headers=headers,
                    data=data,
                    allow_redirects=False,
                    compress=None,
                )
            except ClientDisconnect:
                return
            except (aiohttp.ClientError, OSError) as exc:
                if body.too_large:  # the client's body, not the upstream, ended it
                    await _send_too_large(send, own, head)
                elif isinstance(exc, aiohttp.SocketTimeoutError):
                    self._timed(started, "timeout", auth_endpoint)
                    await send_error(send, 504, "upstream_timeout",
                                     "The upstream did not answer in time.", own, head=head)
                else:
                    self._timed(started, "network", auth_endpoint)
                    await send_error(send, 502, "upstream_unreachable",
                                     "The upstream could not be reached.", own, head=head)
                return
            except ValueError:  # aiohttp refuses a header with a control character
                await send_error(send, 502, "upstream_request_invalid",
                                 "The request could not be sent upstream.", own, head=head)
                return
            self._timed(started, call_outcome(response.status), auth_endpoint)
            try:
                drop = (self._own_cookies.response_filter(request.path)
                        if self._own_cookies is not None else frozenset())
                upstream = response_headers(response.raw_headers, drop)
                if relay is None or not await relay(response, send, upstream, own):
                    await self._relay(response, send, receive, body, [*upstream, *own], own)
            finally:
                response.close()
        finally:
            self._slots.release()
            self._per_client.release(client)
            if self._metrics is not None:
                self._metrics.upstream_in_use.dec()

    def _timed(self, started: float, outcome: CallOutcome, endpoint: AuthEndpoint | None
               ) -> None:
        """Record how long the upstream took to answer (its response head, or the failure)."""
        seconds = time.perf_counter() - started
        current_request().upstream_s = seconds
        if self._metrics is not None:
            self._metrics.upstream(outcome, seconds)
            if endpoint is not None:
                self._metrics.auth_call(endpoint, outcome, seconds)

    async def _relay(
        self,
        response: aiohttp.ClientResponse,
        send: Send,
        receive: Receive,
        body: _RequestBody,
        headers: list[tuple[bytes, bytes]],
        own: list[tuple[bytes, bytes]],
    ) -> None:
        length = response.content_length
        if length is not None and length <= _SMALL_BODY:
            try:
                payload = await response.read()
            except (aiohttp.ClientError, OSError, TimeoutError):
                await send_error(send, 502, "upstream_error",
                                 "The upstream response was cut short.", own)
                return
            await send({"type": "http.response.start", "status": response.status,
                        "headers": headers})
            await send({"type": "http.response.body", "body": payload})
            return
        await send({"type": "http.response.start", "status": response.status,
                    "headers": headers})
        if not body.done:  # the upstream answered before reading all of the request body
            await pump(response, send)
            return
        gone = anyio.Event()
        async with anyio.create_task_group() as group:

            async def watch() -> None:
                await _wait_for_disconnect(receive)
                # Cancellation alone is not enough: while the upstream keeps the buffer full,
                # reads complete without suspending and a cancel is never delivered; the pump
                # also checks this flag between chunks.
                gone.set()
                group.cancel_scope.cancel()

            group.start_soon(watch)
            await pump(response, send, gone)
            group.cancel_scope.cancel()


async def pump(response: aiohttp.ClientResponse, send: Send,
               gone: anyio.Event | None = None) -> None:
    """Stream the rest of ``response``'s body to the client, its head already sent."""
    try:
        async for chunk in response.content.iter_chunked(CHUNK):
            if gone is not None and gone.is_set():
                return
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    except (aiohttp.ClientError, OSError, TimeoutError):
        # Headers are gone already: end without completing the body, so the server
        # closes the connection and the client sees a truncated response, not a whole one.
        return
    await send({"type": "http.response.body", "body": b""})
