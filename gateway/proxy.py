"""The streaming forwarder: request headers in, bodies both ways, upstream errors out.

One :class:`Upstream` (an aiohttp session with a bounded pool, no cookie jar, no headers of
its own, no decompression) is shared by every request. Bodies are streamed both ways; the
response to a client that goes away is abandoned and its upstream connection closed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from urllib.parse import urlsplit

import aiohttp
import anyio
from multidict import CIMultiDict
from yarl import URL

from gateway.accesslog import current_request
from gateway.metrics import AuthEndpoint, CallOutcome, Metrics, call_outcome
from gateway.owncookies import OwnCookies, without_set_cookies
from gateway.responses import send_error
from gateway.settings import UpstreamSettings
from gateway.types import Headers, Receive, Scope, Send

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
_CHUNK = 64 * 1024
# A body announced at no more than one chunk is read in one go (what streaming it would
# read anyway) and sent with its headers; anything larger streams.
_SMALL_BODY = _CHUNK
_REWRITE_LIMIT = 1024 * 1024
_UNSAFE_QUERY_BYTE = re.compile(rb"[^\x21-\x7e]")


# (status, body) -> (headers to add, new body): how login capture edits a reply.
Rewrite = Callable[[int, bytes], Awaitable[tuple[list[tuple[bytes, bytes]], bytes]]]


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


def _connection_listed(headers: Iterable[tuple[bytes, bytes]]) -> set[bytes]:
    listed: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            listed.update(v.strip().lower() for v in value.split(b",") if v.strip())
    return listed


class TrustedProxies:
    """Peers whose ``X-Forwarded-*`` headers are believed (``server.trusted_proxies``)."""

    def __init__(self, networks: Iterable[str]) -> None:
        self._networks = [ipaddress.ip_network(n, strict=False) for n in networks]

    def __contains__(self, address: str) -> bool:
        if not self._networks:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self._networks)

    def client_ip(self, peer: str, forwarded_for: bytes | None) -> str:
        """The address of the real client: walk ``X-Forwarded-For`` right to left past
        trusted hops; an untrusted peer's header is ignored."""
        if forwarded_for is None or peer not in self:
            return peer
        hops = [h.strip().decode("latin-1") for h in forwarded_for.split(b",") if h.strip()]
        for hop in reversed(hops):
            if hop not in self:
                return hop
        return hops[0] if hops else peer


def upstream_request_headers(
    scope: Scope, *, client_ip: str, request_id: str, trusted: TrustedProxies
) -> list[tuple[bytes, bytes]]:
    """The client's headers as the upstream may see them.

    Drops hop-by-hop headers and any named in ``Connection``, ``Host`` (the upstream's own is
    used), ``Authorization`` and the identity headers (only the gateway sets those, from its own
    validation), ``X-Forwarded-*``, ``X-Real-IP`` and the like unless the peer is trusted
    (``_`` spellings of them from anyone); then (re)builds
    ``X-Forwarded-For/-Proto/-Host`` and ``x-request-id``.
    """
    raw: list[tuple[bytes, bytes]] = scope["headers"]
    listed = _connection_listed(raw)
    peer = scope["client"][0] if scope.get("client") else ""
    peer_trusted = peer in trusted
    kept: list[tuple[bytes, bytes]] = []
    host = b""
    prior_for = b""
    proto = scope.get("scheme", "http").encode("latin-1")
    forwarded_host = b""
    for name, value in raw:
        if name == b"host":
            host = value
            continue
        if name in HOP_BY_HOP or name in listed or name in _GATEWAY_OWNED or name in _FRAMING:
            continue
        if b"_" in name and _underscored_spoof(name):
            continue
        if name in _PROXY_SET:
            if peer_trusted:
                kept.append((name, value))
            continue
        if name in _FORWARDED:
            if peer_trusted:
                if name == b"x-forwarded-for":
                    prior_for = value if not prior_for else prior_for + b", " + value
                elif name == b"x-forwarded-proto":
                    proto = value
                elif name == b"x-forwarded-host":
                    forwarded_host = value
            continue
        if is_identity_header(name):
            continue
        kept.append((name, value))
    xff = (prior_for + b", " + peer.encode("latin-1")) if prior_for else peer.encode("latin-1")
    kept.append((b"x-forwarded-for", xff))
    kept.append((b"x-forwarded-proto", proto))
    if forwarded_host or host:
        kept.append((b"x-forwarded-host", forwarded_host or host))
    kept.append((b"x-request-id", request_id.encode("latin-1")))
    return kept


def response_headers(raw: Iterable[tuple[bytes, bytes]],
                     drop_cookies: frozenset[bytes] = frozenset()) -> list[tuple[bytes, bytes]]:
    """Upstream response headers minus hop-by-hop ones and any ``Set-Cookie`` of a name in
    ``drop_cookies`` (the gateway's own: gateway/owncookies.py); each ``Set-Cookie`` stays
    its own header."""
    raw = list(raw)
    listed = _connection_listed(raw)
    out: list[tuple[bytes, bytes]] = []
    for name, value in raw:
        lower = name.lower()
        if lower in HOP_BY_HOP or lower in listed or lower in _SERVER_OWNED:
            continue
        if lower == b"x-request-id":
            continue
        out.append((lower, value))
    return without_set_cookies(out, drop_cookies)


def _has_body(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0"):
            return True
    return False


def declared_length(scope: Scope) -> int | None:
    """The body length the client announced, if its framing is unambiguous: exactly one
    ``Content-Length`` of digits and no ``Transfer-Encoding`` (with both, the server framed
    the body by the latter and the length means nothing)."""
    lengths = []
    for name, value in scope["headers"]:
        if name == b"transfer-encoding":
            return None
        if name == b"content-length":
            lengths.append(value.strip())
    if len(lengths) != 1 or not lengths[0].isdigit():
        return None
    return int(lengths[0])


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
        if not slots.locked():
            await slots.acquire()
            return True
        try:
            await asyncio.wait_for(slots.acquire(), timeout)
        except TimeoutError:
            self._leave(client, users)
            return False
        except BaseException:  # cancelled while waiting: the client went away
            self._leave(client, users)
            raise
        return True

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
                 max_body_bytes: int = 0, trusted: TrustedProxies | None = None,
                 metrics: Metrics | None = None) -> None:
        self._own_cookies = own_cookies
        parts = urlsplit(settings.url)
        self._metrics = metrics
        self._origin = f"{parts.scheme}://{parts.netloc}"
        self._base_path = parts.path.rstrip("/")
        self._settings = settings
        self._max_body_bytes = max_body_bytes
        self._trusted = trusted or TrustedProxies(())
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
            read_bufsize=_CHUNK,
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

    async def _acquire(self) -> bool:
        assert self._slots is not None, "Upstream.start() was not awaited"
        if not self._slots.locked():
            await self._slots.acquire()
            return True
        try:
            await asyncio.wait_for(self._slots.acquire(), self._settings.connect_timeout_s)
        except TimeoutError:
            return False
        return True

    def _client(self, scope: Scope) -> str:
        """The client address as the gateway computes it everywhere (trusted proxies)."""
        peer = scope["client"][0] if scope.get("client") else ""
        forwarded_for = None
        for name, value in scope["headers"]:
            if name == b"x-forwarded-for":
                forwarded_for = value
                break
        return self._trusted.client_ip(peer, forwarded_for)

    async def forward(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        *,
        path: str,
        headers: Headers,
        extra_response_headers: Headers = (),
        rewrite: Rewrite | None = None,
        auth_endpoint: AuthEndpoint | None = None,
    ) -> None:
        """Send the request upstream and stream the answer back to the client.

        ``rewrite`` (for the small JSON replies of login capture) gets the whole reply body,
        with or without Content-Length and whatever its content type, decoded from gzip or
        deflate, if it is at most 1 MiB both as sent and decoded; it returns the headers to add
        and the body to send instead (then sent uncompressed). Larger or undecodable replies,
        and replies it leaves alone, pass through unchanged. ``auth_endpoint`` names an auth
        call made this way (login), also timed as one in the metrics."""
        assert self._session is not None and self._slots is not None
        head = scope["method"] == "HEAD"
        own = [*extra_response_headers]
        # Framing toward the upstream is the gateway's own (docs/limits.md): a body announced
        # with one Content-Length is sent with that length, counted and cut off if it differs;
        # any other body is read ahead up to one chunk and, if it ends there, sent with its
        # exact length, else chunked.
        length = declared_length(scope)
        limit = self._max_body_bytes
        if limit and length is not None and length > limit:
            await _send_too_large(send, own, head)
            return
        body = _RequestBody(receive, _has_body(scope), limit=limit, length=length)
        whole: bytes | None = None
        if not body.done and (length is None or length <= _SMALL_BODY):
            try:
                whole = await body.prefetch(_SMALL_BODY)
            except _BodyTooLarge:
                await _send_too_large(send, own, head)
                return
            except (ClientDisconnect, _BodyMismatch):
                return
        client = self._client(scope)
        if not await self._per_client.acquire(client, self._settings.connect_timeout_s):
            await send_error(send, 429, "too_many_connections",
                             "This client holds too many upstream connections; "
                             "try again shortly.",
                             [*own, (b"retry-after", b"1")], head=head)
            return
        try:
            await self._forward_claimed(scope, receive, send, path=path, headers=headers,
                                        own=own, body=body, whole=whole, length=length,
                                        rewrite=rewrite, auth_endpoint=auth_endpoint)
        finally:
            self._per_client.release(client)

    async def _forward_claimed(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        *,
        path: str,
        headers: Headers,
        own: list[tuple[bytes, bytes]],
        body: _RequestBody,
        whole: bytes | None,
        length: int | None,
        rewrite: Rewrite | None,
        auth_endpoint: AuthEndpoint | None,
    ) -> None:
        assert self._session is not None and self._slots is not None
        head = scope["method"] == "HEAD"
        drop = (self._own_cookies.response_filter(path) if self._own_cookies is not None
                else frozenset())
        if not await self._acquire():
            await send_error(send, 503, "upstream_busy",
                             "The upstream connection pool is exhausted; try again shortly.",
                             [*own, (b"retry-after", b"1")], head=head)
            return
        if self._metrics is not None:
            self._metrics.upstream_in_use.inc()
        try:
            try:
                outgoing = header_strings(headers)
            except UnicodeDecodeError:
                await send_error(send, 400, "invalid_header",
                                 "A request header holds bytes that are not UTF-8.", own,
                                 head=head)
                return
            data: bytes | AsyncIterator[bytes] | None = whole
            if whole is None and not body.done:
                data = body.__aiter__()
                if length is not None:
                    outgoing["Content-Length"] = str(length)
            started = time.perf_counter()
            try:
                response = await self._session.request(
                    scope["method"],
                    self.url(path, scope.get("query_string", b"")),
                    headers=outgoing,
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
                if rewrite is not None and _rewritable(response):
                    await self._relay_rewritten(response, send, own, rewrite, drop)
                else:
                    await self._relay(response, send, receive, body, own, drop)
            finally:
                response.close()
        finally:
            self._slots.release()
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
        own: list[tuple[bytes, bytes]],
        drop: frozenset[bytes],
    ) -> None:
        headers = response_headers(response.raw_headers, drop)
        headers.extend(own)
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
            await self._pump(response, send)
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
            await self._pump(response, send, gone)
            group.cancel_scope.cancel()

    async def _relay_rewritten(
        self,
        response: aiohttp.ClientResponse,
        send: Send,
        own: list[tuple[bytes, bytes]],
        rewrite: Rewrite,
        drop: frozenset[bytes],
    ) -> None:
        buffer = bytearray()
        try:
            async for chunk in response.content.iter_chunked(_CHUNK):
                buffer += chunk
                if len(buffer) > _REWRITE_LIMIT:  # too big to be a login reply: pass it on
                    await send({"type": "http.response.start", "status": response.status,
                                "headers": [*response_headers(response.raw_headers, drop),
                                            *own]})
                    await send({"type": "http.response.body", "body": bytes(buffer),
                                "more_body": True})
                    await self._pump(response, send)
                    return
        except (aiohttp.ClientError, OSError, TimeoutError):
            await send_error(send, 502, "upstream_error",
                             "The upstream response was cut short.", own)
            return
        raw = bytes(buffer)
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        decoded = raw if encoding == "identity" else _decompressed(raw, encoding)
        added, payload = (await rewrite(response.status, decoded) if decoded is not None
                          else ([], raw))
        upstream_headers = response_headers(response.raw_headers, drop)
        if not added:  # not a login reply with tokens: the upstream's bytes, untouched
            await send({"type": "http.response.start", "status": response.status,
                        "headers": [*upstream_headers, *own]})
            await send({"type": "http.response.body", "body": raw})
            return
        headers = [(k, v) for k, v in upstream_headers
                   if k not in (b"content-length", b"content-encoding")]
        headers.append((b"content-length", str(len(payload)).encode("latin-1")))
        headers.extend(own)
        headers.extend(added)
        await send({"type": "http.response.start", "status": response.status,
                    "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    @staticmethod
    async def _pump(response: aiohttp.ClientResponse, send: Send,
                    gone: anyio.Event | None = None) -> None:
        try:
            async for chunk in response.content.iter_chunked(_CHUNK):
                if gone is not None and gone.is_set():
                    return
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except (aiohttp.ClientError, OSError, TimeoutError):
            # Headers are gone already: end without completing the body, so the server
            # closes the connection and the client sees a truncated response, not a whole one.
            return
        await send({"type": "http.response.body", "body": b""})


# zlib wbits: gzip only, or zlib-wrapped deflate ("deflate" as most servers send it).
_DECODERS = {"gzip": 31, "x-gzip": 31, "deflate": 15}


def _rewritable(response: aiohttp.ClientResponse) -> bool:
    """Small enough to hold, and in an encoding the gateway can read. The content type is not
    trusted: a login reply labelled text/plain still carries tokens to keep from scripts."""
    length = response.content_length
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    return (length is None or length <= _REWRITE_LIMIT) and (
        encoding == "identity" or encoding in _DECODERS)


def _decompressed(raw: bytes, encoding: str) -> bytes | None:
    """The whole decoded body if it is at most ``_REWRITE_LIMIT`` bytes (no zip bombs), else
    None. "deflate" is read with its zlib wrapper or, as some servers send it, without."""
    wbits = _DECODERS.get(encoding)
    if wbits is None:
        return None
    out = _inflate(raw, wbits)
    if out is None and wbits == 15:
        out = _inflate(raw, -15)
    return out


def _inflate(raw: bytes, wbits: int) -> bytes | None:
    """Every gzip member (a gzip body may hold several) or the one deflate stream, never
    more than ``_REWRITE_LIMIT`` bytes of output; None if truncated, too big or trailed by
    anything else."""
    out = bytearray()
    rest = raw
    while True:
        decoder = zlib.decompressobj(wbits)
        try:
            # max_length 0 would mean no limit: the room left is always at least 1 here.
            out += decoder.decompress(rest, _REWRITE_LIMIT + 1 - len(out))
        except zlib.error:
            return None
        if len(out) > _REWRITE_LIMIT or not decoder.eof:
            return None
        rest = decoder.unused_data
        if not rest:
            return bytes(out)
        if wbits != 31:
            return None


def header_strings(headers: Headers) -> CIMultiDict[str]:
    """aiohttp writes header strings as UTF-8: decoding the bytes as UTF-8 sends them on
    exactly. Bytes that are not UTF-8 raise UnicodeDecodeError (the caller answers 400)
    rather than reaching the upstream altered."""
    return CIMultiDict((k.decode("latin-1"), v.decode("utf-8")) for k, v in headers)
