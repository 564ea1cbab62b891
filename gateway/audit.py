"""The audit stream: one JSON object per line per auth decision ([audit], gateway.toml.example).

It sits on every authenticated request, so it is built to cost little (benchmarks/README.md):

* A validation served from the cache (``auth.validated`` with ``cache: hit``) is counted in the
  metrics but not written, unless ``[audit] log_cache_hits = true``: it is most of the stream
  and says nothing a miss did not already say.
* A fixed-field renderer: ``event`` and ``timestamp`` first, then the fields in the order given,
  one ``json.dumps`` per line; the timestamp's seconds are formatted once per second.
* Redaction by key: a field named like a credential (``token``, ``password``, ``cookie``, ...)
  is replaced whatever it holds, at any depth. As a safety net for free text, a string value is
  scanned for a JWT or a ``Bearer <secret>`` only when it could hold one (it contains ``eyJ``, or
  a space and is long enough): the scan costs nothing on ids, paths and addresses. No raw token
  can be written either way.
* Buffered writes: lines are collected and written in one ``write`` every
  ``[audit] flush_interval_s`` (by a daemon thread, whatever the server runs on), when the
  buffer passes 64 KiB, and at shutdown (:meth:`AuditLog.close`, called from the ASGI lifespan
  that SIGTERM ends, and at interpreter exit as a last resort), so nothing is lost.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Literal

# Every event the gateway writes, as docs/audit.md lists them (tests/test_audit_events.py keeps
# the two equal): a misspelt name at an ``emit`` call is a type error, not a new event.
AuditEvent = Literal[
    "auth.validated", "auth.refreshed", "auth.refresh_failed", "auth.session_cleared",
    "auth.guest_issued", "auth.denied", "auth.login", "auth.login_failed", "auth.logout",
    "auth.backend_unavailable", "auth.csrf_refused",
    "state.suspect", "state.degraded", "state.recovered",
]

COMMON_FIELDS = ("request_id", "client_ip", "method", "path")

# Field names that may never carry a value into the stream (compared lower-cased, "-" as "_").
_SECRET_KEYS = frozenset({
    "token", "raw_token", "access", "access_token", "accesstoken", "refresh", "refresh_token",
    "refreshtoken", "password", "passwd", "secret", "cookie", "cookies", "set_cookie",
    "authorization", "credential", "credentials", "guest_token", "id_token",
})
_JWT_LIKE = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
_BEARER_LIKE = re.compile(r"(?i)\b(bearer|jwt|token)\s+[A-Za-z0-9._~+/=-]{16,}")
_BEARER_MIN_LEN = 20  # "jwt " + 16 secret characters: shorter text cannot match _BEARER_LIKE
REDACTED = "[redacted]"
_BUFFER_LIMIT = 64 * 1024  # characters held before a write that does not wait for the timer


def token_fp(token: str | bytes) -> str:
    """The first 12 hex digits of the token's SHA-256: safe to log, stable to correlate."""
    raw = token.encode("latin-1") if isinstance(token, str) else token
    return hashlib.sha256(raw).hexdigest()[:12]


def _scrub_text(value: str) -> str:
    """Free text with anything that looks like a JWT or a bearer secret replaced; the regular
    expressions only run on text that could hold one."""
    if "eyJ" not in value and (len(value) < _BEARER_MIN_LEN or not _has_space(value)):
        return value
    if _JWT_LIKE.search(value) or _BEARER_LIKE.search(value):
        value = _BEARER_LIKE.sub(lambda m: f"{m.group(1)} {REDACTED}", value)
        return _JWT_LIKE.sub(REDACTED, value)
    return value


def _has_space(value: str) -> bool:
    return " " in value or "\t" in value or "\n" in value or "\r" in value \
        or "\x0b" in value or "\x0c" in value or not value.isascii()


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return _scrub_text(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, dict):
        return {k: REDACTED if _is_secret_key(k) else _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    return _scrub_text(str(value))


def _is_secret_key(key: object) -> bool:
    return isinstance(key, str) and key.lower().replace("-", "_") in _SECRET_KEYS


class _Clock:
    """ISO 8601 UTC timestamps with milliseconds; the date and time are formatted once per
    second rather than on every line."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def stamp(self) -> str:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        return f"{self._prefix}.{int((now - second) * 1000):03d}Z"


def sink_problem(sink: str) -> str | None:
    """Why a file sink cannot be appended to, checked without creating it."""
    if sink in ("stdout", "stderr"):
        return None
    path = Path(sink)
    if path.exists():
        if not path.is_file():
            return f"{sink} is not a regular file"
        return None if os.access(path, os.W_OK) else f"{sink} is not writable"
    directory = path.parent
    if not directory.is_dir():
        return f"directory {directory} does not exist"
    return None if os.access(directory, os.W_OK) else f"directory {directory} is not writable"


class _Sink:
    """Where lines go: a file opened for appending (one ``write`` per batch of whole lines, so
    workers sharing the file never split each other's lines), or the process's stdout/stderr
    (never closed)."""

    def __init__(self, sink: str) -> None:
        self._fd: int | None = None
        self._stream: IO[str] | None = None
        if sink == "stdout":
            self._stream = sys.stdout
        elif sink == "stderr":
            self._stream = sys.stderr
        else:
            self._fd = os.open(sink, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, text: str) -> None:
        if self._fd is not None:
            data = text.encode("utf-8")
            while data:
                written = os.write(self._fd, data)
                data = data[written:]
        elif self._stream is not None:
            self._stream.write(text)
            self._stream.flush()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._stream = None


class AuditLog:
    """Writes audit events to the configured sink (``stdout``, ``stderr`` or a file path).

    ``flush_interval_s`` > 0 buffers lines for at most that long (the gateway's default, from
    ``[audit] flush_interval_s``); 0 writes each line as it is emitted.
    """

    def __init__(self, sink: str = "stdout",
                 on_event: Callable[[str, str], None] | None = None, *,
                 log_cache_hits: bool = True, flush_interval_s: float = 0.0) -> None:
        self._on_event = on_event
        self._log_cache_hits = log_cache_hits
        self._sink = _Sink(sink)
        self._clock = _Clock()
        self._lines: deque[str] = deque()  # append and popleft are atomic across threads
        self._size = 0
        self._write_lock = threading.Lock()  # one writer at a time: lines never interleave
        self._interval = flush_interval_s
        self._closed = threading.Event()
        self._flusher: threading.Thread | None = None
        if flush_interval_s > 0:
            self._flusher = threading.Thread(target=self._flush_every, name="audit-flush",
                                             daemon=True)
            self._flusher.start()
            atexit.register(self.close)

    @property
    def writes_cache_hits(self) -> bool:
        """``audit.log_cache_hits``: whether validations answered from the cache are written
        (else only counted: :meth:`count`)."""
        return self._log_cache_hits

    def count(self, event: AuditEvent, outcome: str) -> None:
        """Count an event in the metrics without writing it (a cache hit, by default): the
        caller skips building the fields nobody reads."""
        if self._on_event is not None:
            self._on_event(event, outcome)

    def emit(self, event: AuditEvent, **fields: Any) -> None:
        """Write one event; ``fields`` are the common ones plus the event's own."""
        if self._on_event is not None:
            self._on_event(event, str(fields.get("outcome", "")))
        if not self._log_cache_hits and fields.get("cache") == "hit" \
                and event == "auth.validated":
            return
        record: dict[str, Any] = {"event": event, "timestamp": self._clock.stamp()}
        for key, value in fields.items():
            if _is_secret_key(key):
                record[key] = REDACTED
            elif isinstance(value, str):
                record[key] = _scrub_text(value)
            else:
                record[key] = _scrub(value)
        line = json.dumps(record, default=str) + "\n"
        if self._flusher is None or self._closed.is_set():
            with self._write_lock:
                self._sink.write(line)
            return
        self._lines.append(line)  # no lock on the request path
        self._size += len(line)  # approximate under threads: only decides an early write
        if self._size >= _BUFFER_LIMIT:
            self.flush()

    def flush(self) -> None:
        """Write every buffered line now."""
        with self._write_lock:
            self._size = 0
            lines = self._lines
            batch = [lines.popleft() for _ in range(len(lines))]
            if batch:
                self._sink.write("".join(batch))

    def _flush_every(self) -> None:
        while not self._closed.wait(self._interval):
            self.flush()

    def close(self) -> None:
        """Write what is buffered, stop the timer and close a file sink (never stdout)."""
        if self._closed.is_set():
            return
        self._closed.set()
        if self._flusher is not None:
            atexit.unregister(self.close)
            if self._flusher is not threading.current_thread():
                self._flusher.join(timeout=5)
        self.flush()
        with self._write_lock:
            self._sink.close()
