"""One record per HTTP request: the request-duration metrics and the access log.

The parts that learn something about a request sit at different depths (the handler picks the
route, validation knows whether the cache answered, the forwarder times the upstream), so the
request's :class:`RequestRecord` travels in a context variable that each of them may fill in
(:func:`current`), and :func:`observed` closes it when the response is done: one histogram
observation, and one JSON line when ``[access_log] enabled``. The line holds the normalized
path and no query string, header or cookie value: see ``docs/deployment.md#access-log``.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Literal

from gateway.metrics import AccessLevel, Metrics
from gateway.types import Receive, Scope, Send

CacheOutcome = Literal["hit", "miss", "merged", "none"]
# A JWT in a path (/reset/<token>, /magic-login/<token>): written as the audit stream writes
# it, redacted (the same pattern as gateway/audit.py's).
_JWT_LIKE = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
REDACTED = "[redacted]"


@dataclass(slots=True)
class RequestRecord:
    method: str
    client_ip: str
    started: float  # time.perf_counter()
    path: str | None = None  # normalized; None while (or when) it cannot be
    request_id: str | None = None
    access: AccessLevel = "none"
    status: int = 0
    bytes_sent: int = 0
    upstream_s: float | None = None
    user_id: str | None = None
    cache: CacheOutcome = "none"

    def note_cache(self, cache: CacheOutcome) -> None:
        """The first validation of a request is the one its token got (a later one, of the
        guest cookie behind a dead token, does not replace it)."""
        if self.cache == "none":
            self.cache = cache


_current: ContextVar[RequestRecord | None] = ContextVar("gateway_request", default=None)


def current_request() -> RequestRecord:
    """The record of the request being handled in this task; outside one (a WebSocket, a
    direct call in a test) a throwaway record, so callers never need to check."""
    record = _current.get()
    return record if record is not None else RequestRecord("", "", 0.0)


def _timestamp() -> str:
    now = datetime.now(UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


class AccessLog:
    """Writes one JSON object per line to ``stdout``, ``stderr`` or a file (appended)."""

    def __init__(self, sink: str) -> None:
        self._owned = sink not in ("stdout", "stderr")
        self._stream: IO[str] = (sys.stdout if sink == "stdout" else sys.stderr if
                                 sink == "stderr" else open(sink, "a", encoding="utf-8"))  # noqa: SIM115
        self._lock = threading.Lock()

    def write(self, record: RequestRecord, seconds: float) -> None:
        line = json.dumps({
            "event": "access",
            "timestamp": _timestamp(),
            "request_id": record.request_id,
            "client_ip": record.client_ip,
            "method": record.method,
            "path": _JWT_LIKE.sub(REDACTED, record.path) if record.path else record.path,
            "status": record.status,
            "duration_ms": round(seconds * 1000, 3),
            "upstream_ms": (round(record.upstream_s * 1000, 3)
                            if record.upstream_s is not None else None),
            "bytes_sent": record.bytes_sent,
            "user_id": record.user_id,
            "cache": record.cache,
            "access": record.access,
        }, separators=(",", ":"), ensure_ascii=False)
        with self._lock:
            self._stream.write(line + "\n")
            self._stream.flush()

    def close(self) -> None:
        if self._owned:
            self._stream.close()


def observed(handle: Callable[[Scope, Receive, Send], Awaitable[None]], metrics: Metrics,
             access_log: AccessLog | None) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """``handle`` (one HTTP request) with its record opened, timed, counted and logged. The
    record's status and bytes are noted by the handler's way out (``gateway.handler.Reply``),
    which every answer passes through."""

    async def run(scope: Scope, receive: Receive, send: Send) -> None:
        client = scope.get("client")
        record = RequestRecord(method=scope["method"], client_ip=client[0] if client else "",
                               started=time.perf_counter())
        token = _current.set(record)
        metrics.in_flight.inc()
        try:
            await handle(scope, receive, send)
        except BaseException:
            if record.status == 0:
                record.status = 500  # what the server answers for an unhandled error
            raise
        finally:
            metrics.in_flight.dec()
            _current.reset(token)
            if record.status == 0:
                record.status = 499  # nothing was sent: the client went away first (nginx's 499)
            seconds = time.perf_counter() - record.started
            metrics.request(record.access, record.status, seconds)
            if access_log is not None:
                access_log.write(record, seconds)

    return run
