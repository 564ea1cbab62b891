"""An httpx transport on top of aiohttp, fixed for use in a reverse proxy.

``httpx_aiohttp.AiohttpTransport`` (0.2.0) works, but benchmarks/transports.py found four
problems for a proxy:

* connection refused and "server closed without a response" are raised as
  ``httpx.ConnectTimeout`` (its exception map picks the most specific *httpx* class, so
  ``ClientConnectionError -> ConnectTimeout`` wins over ``ClientConnectorError -> ConnectError``);
* pool exhaustion is raised as ``httpx.ConnectTimeout`` (aiohttp has no pool timeout), and the
  whole TCP connect is capped by the *pool* timeout;
* the URL goes through yarl re-quoting (``%7E`` -> ``~``, ``%2f`` -> ``/``);
* the body is read in 16 KiB pieces, which halves 1 MiB throughput.

This transport fixes all four: it waits for a pool slot on its own semaphore (so
``httpx.PoolTimeout`` is distinct), maps aiohttp errors onto the httpx classes httpx's own
transport would raise, passes the URL with ``encoded=True`` and yields chunks as they arrive.
It is a benchmark candidate; the gateway can copy it verbatim.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator

import aiohttp
import httpx
import yarl


@contextlib.contextmanager
def map_aiohttp_errors(request: httpx.Request) -> Iterator[None]:
    try:
        yield
    except httpx.HTTPError:
        raise
    except aiohttp.ConnectionTimeoutError as exc:  # sock_connect elapsed (before ServerTimeout)
        raise httpx.ConnectTimeout(str(exc) or "connect timeout", request=request) from exc
    except aiohttp.ServerTimeoutError as exc:  # SocketTimeoutError: sock_read elapsed
        raise httpx.ReadTimeout(str(exc) or "read timeout", request=request) from exc
    except aiohttp.ClientConnectorError as exc:  # refused, unreachable, DNS, TLS
        raise httpx.ConnectError(str(exc), request=request) from exc
    except aiohttp.ServerDisconnectedError as exc:  # closed before/while sending the head
        raise httpx.RemoteProtocolError(str(exc), request=request) from exc
    except aiohttp.ClientPayloadError as exc:  # body cut short / bad chunked encoding
        raise httpx.RemoteProtocolError(str(exc), request=request) from exc
    except aiohttp.ClientResponseError as exc:  # unparsable status line / headers
        raise httpx.RemoteProtocolError(str(exc), request=request) from exc
    except aiohttp.ClientOSError as exc:  # reset while reading/writing
        raise httpx.ReadError(str(exc), request=request) from exc
    except aiohttp.InvalidURL as exc:
        raise httpx.UnsupportedProtocol(str(exc), request=request) from exc
    except aiohttp.ClientError as exc:
        raise httpx.TransportError(str(exc), request=request) from exc
    except TimeoutError as exc:
        raise httpx.TimeoutException(str(exc) or "timeout", request=request) from exc


class _ResponseStream(httpx.AsyncByteStream):
    def __init__(
        self, response: aiohttp.ClientResponse, request: httpx.Request, release: Callable[[], None]
    ) -> None:
        self._response = response
        self._request = request
        self._release = release

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with map_aiohttp_errors(self._request):
            async for chunk in self._response.content.iter_any():
                yield chunk

    async def aclose(self) -> None:
        # An unfinished body makes aiohttp close the socket instead of reusing it.
        try:
            self._response.release()
        finally:
            self._release()


class ProxyAiohttpTransport(httpx.AsyncBaseTransport):
    """httpx transport over one aiohttp.ClientSession; for proxies (no extras, raw bytes)."""

    def __init__(self, *, max_connections: int = 100, keepalive_expiry: float = 30.0) -> None:
        self._max_connections = max_connections
        self._keepalive_expiry = keepalive_expiry
        self._slots = asyncio.Semaphore(max_connections)
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        # created lazily: aiohttp wants a running event loop
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=self._max_connections,
                    limit_per_host=0,
                    keepalive_timeout=self._keepalive_expiry,
                ),
                cookie_jar=aiohttp.DummyCookieJar(),
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
                auto_decompress=False,
                trust_env=False,
            )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        session = self._get_session()
        t = request.extensions.get("timeout", {})
        if self._slots.locked():  # only pay for a timer when we actually have to wait
            try:
                async with asyncio.timeout(t.get("pool")):
                    await self._slots.acquire()
            except TimeoutError as exc:
                raise httpx.PoolTimeout("no free upstream connection", request=request) from exc
        else:
            await self._slots.acquire()
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._slots.release()

        try:
            data: bytes | httpx.AsyncByteStream | None
            try:
                data = request.content or None
            except httpx.RequestNotRead:
                data = request.stream  # type: ignore[assignment]
                request.headers.pop("transfer-encoding", None)  # aiohttp does the framing
            with map_aiohttp_errors(request):
                response = await session.request(
                    request.method,
                    yarl.URL(str(request.url), encoded=True),
                    headers=request.headers.multi_items(),
                    data=data,
                    allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(
                        total=None,
                        sock_connect=t.get("connect"),
                        connect=None,
                        sock_read=t.get("read"),
                    ),
                )
        except BaseException:
            release()
            raise
        extensions = {"http_version": b"HTTP/1.1"}
        if response.reason:
            extensions["reason_phrase"] = response.reason.encode()
        return httpx.Response(
            status_code=response.status,
            headers=response.raw_headers,
            stream=_ResponseStream(response, request, release),
            request=request,
            extensions=extensions,
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
