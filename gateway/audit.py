"""The audit stream: one JSON object per line, for every auth decision (CONTRACT.md §3.9).

Built on structlog with a private processor chain (never the global configuration, so two
gateways in one process keep two sinks). The chain ends in :func:`_redact_secrets`, which makes
it impossible to log a raw token by accident: fields named like a credential, and any value that
looks like a JWT or a long bearer secret, are replaced before rendering.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import threading
from collections.abc import Callable, MutableMapping
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, TextIO

import structlog

COMMON_FIELDS = ("request_id", "client_ip", "method", "path")

# Field names that may never carry a value into the stream (compared lower-cased, "-" as "_").
_SECRET_KEYS = frozenset({
    "token", "raw_token", "access", "access_token", "accesstoken", "refresh", "refresh_token",
    "refreshtoken", "password", "passwd", "secret", "cookie", "cookies", "set_cookie",
    "authorization", "credential", "credentials", "guest_token", "id_token",
})
_JWT_LIKE = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
_BEARER_LIKE = re.compile(r"(?i)\b(bearer|jwt|token)\s+[A-Za-z0-9._~+/=-]{16,}")
REDACTED = "[redacted]"


def token_fp(token: str | bytes) -> str:
    """The first 12 hex digits of the token's SHA-256: safe to log, stable to correlate."""
    raw = token.encode("latin-1") if isinstance(token, str) else token
    return hashlib.sha256(raw).hexdigest()[:12]


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        if _JWT_LIKE.search(value) or _BEARER_LIKE.search(value):
            value = _BEARER_LIKE.sub(lambda m: f"{m.group(1)} {REDACTED}", value)
            return _JWT_LIKE.sub(REDACTED, value)
        return value
    if isinstance(value, dict):
        return {k: REDACTED if _is_secret_key(k) else _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    return value


def _is_secret_key(key: object) -> bool:
    return isinstance(key, str) and key.lower().replace("-", "_") in _SECRET_KEYS


def _redact_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key in list(event_dict):
        if _is_secret_key(key):
            event_dict[key] = REDACTED
        else:
            event_dict[key] = _scrub(event_dict[key])
    return event_dict


def _timestamp(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    now = datetime.now(UTC)
    stamp = now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"
    # event and timestamp first: easier to read in a terminal, same JSON for a pipeline.
    return {"event": event_dict.pop("event", None), "timestamp": stamp, **event_dict}


class _LineWriter:
    """A structlog logger writing whole lines; one lock so lines never interleave."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def msg(self, message: str) -> None:
        with self._lock:
            self._stream.write(message + "\n")
            self._stream.flush()

    info = warning = error = msg


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



def _open_sink(sink: str) -> tuple[TextIO, bool]:
    if sink == "stdout":
        return sys.stdout, False
    if sink == "stderr":
        return sys.stderr, False
    return open(sink, "a", encoding="utf-8", buffering=1), True


class AuditLog:
    """Writes audit events to the configured sink (``stdout``, ``stderr`` or a file path)."""

    def __init__(self, sink: str = "stdout",
                 on_event: Callable[[str, str], None] | None = None) -> None:
        self._on_event = on_event
        self._stream, self._owned = _open_sink(sink)
        self._logger = structlog.wrap_logger(
            _LineWriter(self._stream),
            processors=[_timestamp, _redact_secrets, structlog.processors.JSONRenderer()],
            cache_logger_on_first_use=True,
        )

    def emit(self, event: str, **fields: Any) -> None:
        """Write one event; ``fields`` are the common ones plus the event's own."""
        self._logger.info(event, **fields)
        if self._on_event is not None:
            self._on_event(event, str(fields.get("outcome", "")))

    def close(self) -> None:
        if self._owned:
            self._stream.close()
