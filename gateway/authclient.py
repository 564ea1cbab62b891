"""Calls to the backend's auth endpoints, with the retry policy of ``[auth]``.

A network error, a timeout or a 5xx is not a verdict on a token: it is retried
``auth.retries`` times with exponential backoff and jitter, then reported as
:class:`BackendUnavailable`. Any other answer (2xx, 4xx) is returned as it is.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp

from gateway.metrics import AuthEndpoint, CallOutcome, Metrics, call_outcome
from gateway.settings import Settings
from gateway.vocabulary import SendStyle


class BackendUnavailable(Exception):
    """The auth backend could not give an answer (after retries)."""

    def __init__(self, reason: Literal["network", "backend_error", "state_unavailable"],
                 detail: str,
                 headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
        super().__init__(detail)
        self.reason = reason
        self.headers = tuple(headers)  # still owed to the client with the 503 (new cookies)


@dataclass(frozen=True, slots=True)
class AuthReply:
    status: int
    body: Any  # parsed JSON, or None when the body was not JSON
    set_cookies: tuple[str, ...] = field(default=())
    date: str = ""  # the reply's Date header: the backend's clock (gateway doctor reads it)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


_MAX_TRY_S = 10.0


def dig(document: Any, dotted: str) -> Any:
    """``dig({"data": {"a": 1}}, "data.a") == 1``; ``""`` is the whole document; None if absent."""
    if not dotted:
        return document
    for part in dotted.split("."):
        if not isinstance(document, dict) or part not in document:
            return None
        document = document[part]
    return document


class AuthClient:
    def __init__(self, settings: Settings, *, metrics: Metrics | None = None) -> None:
        self._base = settings.auth_url
        self._metrics = metrics
        self._retries = settings.auth.retries
        self._backoff = settings.auth.retry_backoff_s
        # The contract has no auth timeout key: an auth call is a small JSON exchange, so each
        # try is bounded by the upstream timeouts but never more than _MAX_TRY_S in all; a hung
        # validate endpoint costs (1 + retries) x that before the 503, not minutes.
        self._timeout = aiohttp.ClientTimeout(
            total=min(_MAX_TRY_S, settings.upstream.connect_timeout_s
                      + settings.upstream.read_timeout_s),
            sock_connect=settings.upstream.connect_timeout_s,
            sock_read=min(_MAX_TRY_S, settings.upstream.read_timeout_s),
        )
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent",),
            timeout=self._timeout,
            connector=aiohttp.TCPConnector(limit=256, limit_per_host=0),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def call(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        json_body: Any = None,
        endpoint: AuthEndpoint = "other",
    ) -> AuthReply:
        """One auth call with retries; raises :class:`BackendUnavailable`. Each try is timed
        in the metrics under ``endpoint``."""
        assert self._session is not None, "AuthClient.start() was not awaited"
        url = self._base + path
        attempt = 0
        while True:
            started = time.perf_counter()
            try:
                reply = await self._once(method, url, headers, json_body)
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                self._timed(endpoint, started, "timeout" if isinstance(exc, TimeoutError)
                            else "network")
                failure = BackendUnavailable("network", type(exc).__name__)
            else:
                self._timed(endpoint, started, call_outcome(reply.status))
                if reply.status < 500:
                    return reply
                failure = BackendUnavailable("backend_error", f"status {reply.status}")
            if attempt >= self._retries:
                raise failure
            delay = self._backoff * (2**attempt)
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))
            attempt += 1

    def _timed(self, endpoint: AuthEndpoint, started: float, outcome: CallOutcome) -> None:
        if self._metrics is not None:
            self._metrics.auth_call(endpoint, outcome, time.perf_counter() - started)

    async def post_credential(self, path: str, credential: str, *, send: SendStyle, scheme: str,
                              body_field: str, cookie: str, endpoint: AuthEndpoint = "other"
                              ) -> AuthReply:
        """POST a session credential the way ``send`` says (``auth.refresh.send`` and
        ``auth.logout.send``): ``access_header``, ``refresh_body`` or ``refresh_cookie``."""
        if send == "access_header":
            return await self.call("POST", path, endpoint=endpoint,
                                   headers={"authorization": f"{scheme} {credential}"})
        if send == "refresh_body":
            return await self.call("POST", path, json_body={body_field: credential},
                                   endpoint=endpoint)
        return await self.call("POST", path, headers={"cookie": f"{cookie}={credential}"},
                               endpoint=endpoint)

    async def probe(self, path: str) -> bool:
        """Whether the auth backend answers at all (any status below 500), without retries."""
        assert self._session is not None, "AuthClient.start() was not awaited"
        started = time.perf_counter()
        try:
            async with self._session.get(self._base + path, allow_redirects=False,
                                         timeout=aiohttp.ClientTimeout(total=2.0)) as resp:
                self._timed("probe", started, call_outcome(resp.status))
                return resp.status < 500
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            self._timed("probe", started,
                        "timeout" if isinstance(exc, TimeoutError) else "network")
            return False

    async def _once(
        self, method: str, url: str, headers: Mapping[str, str] | None, json_body: Any
    ) -> AuthReply:
        assert self._session is not None
        kwargs: dict[str, Any] = {"headers": dict(headers or {})}
        if json_body is not None:
            kwargs["data"] = json.dumps(json_body).encode("utf-8")
            kwargs["headers"]["content-type"] = "application/json"
        kwargs["headers"].setdefault("accept", "application/json")
        async with self._session.request(method, url, allow_redirects=False, **kwargs) as resp:
            raw = await resp.read()
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = None
            return AuthReply(resp.status, body, tuple(resp.headers.getall("set-cookie", ())),
                             resp.headers.get("date", ""))
