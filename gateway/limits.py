"""What one request may be, checked by the app itself so that it holds under any ASGI server.

The request head's size and header count (431) and its ``Host`` (400) are checked here from the
ASGI scope; the body size (413) is counted as the body streams (``gateway/proxy.py``). Limits
that only a server can enforce (refusing an oversized head before buffering it, timeouts for
slow clients) live in ``gateway/server.py``. See ``docs/limits.md``.
"""

from __future__ import annotations

import re

from gateway.responses import Refusal
from gateway.settings import ServerSettings
from gateway.types import Scope

# A Host header: a registered name (letters, digits, -, _; dot-separated; one trailing dot
# allowed), an IPv4 address, or an IPv6 literal in brackets, then an optional port. Anything
# else (userinfo ``a@b``, spaces, paths, several values) is not a host.
_HOST = re.compile(rb"(?P<name>[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*\.?|\[[0-9A-Fa-f:.]+\])"
                   rb"(?::(?P<port>[0-9]{1,5}))?")


TOO_MANY_HEADERS = Refusal(431, "too_many_headers", "The request has too many header fields.")
HEAD_TOO_LARGE = Refusal(431, "headers_too_large", "The request head is too large.")
BAD_HOST = Refusal(400, "invalid_host", "The Host header is missing a valid host name.")
HOST_NOT_ALLOWED = Refusal(400, "invalid_host", "This host is not served here.")


def head_size(scope: Scope) -> int:
    """The bytes of the request head as received, near enough: target, header names, values
    and their separators."""
    size = len(scope.get("raw_path") or b"") + len(scope.get("query_string", b"")) + 16
    return size + sum(len(name) + len(value) + 4 for name, value in scope["headers"])


class RequestLimits:
    """``server.max_headers``, ``server.max_head_bytes`` and ``server.allowed_hosts``."""

    def __init__(self, settings: ServerSettings) -> None:
        self._max_headers = settings.max_headers
        self._max_head_bytes = settings.max_head_bytes
        self._exact: set[tuple[bytes, bytes | None]] = set()
        self._suffixes: list[bytes] = []
        for host in settings.allowed_hosts:
            pattern = host.lower().encode("ascii")
            wildcard = pattern.startswith(b"*.")
            match = _HOST.fullmatch(pattern[2:] if wildcard else pattern)
            if match is None:  # the settings loader refuses such a value
                continue
            name = match["name"].rstrip(b".")
            if wildcard:
                self._suffixes.append(b"." + name)
            else:
                self._exact.add((name, match["port"]))

    def refusal(self, scope: Scope, *, own_endpoint: bool = False) -> Refusal | None:
        """Why this request head is refused, or None. The gateway's own endpoints (health
        checks come with whatever Host the orchestrator uses) skip ``allowed_hosts`` but not
        the other checks."""
        headers = scope["headers"]
        if len(headers) > self._max_headers:
            return TOO_MANY_HEADERS
        if head_size(scope) > self._max_head_bytes:
            return HEAD_TOO_LARGE
        hosts = [value for name, value in headers if name == b"host"]
        if len(hosts) > 1:
            return BAD_HOST
        if not hosts:
            # HTTP/1.0 may omit it; HTTP/1.1 servers refuse that themselves.
            return None
        match = _HOST.fullmatch(hosts[0])
        if match is None or (match["port"] is not None and int(match["port"]) > 65535):
            return BAD_HOST
        if own_endpoint or not (self._exact or self._suffixes):
            return None
        name = match["name"].lower().rstrip(b".")
        port = match["port"]
        if (name, None) in self._exact or (name, port) in self._exact:
            return None
        if any(name.endswith(suffix) for suffix in self._suffixes):
            return None
        return HOST_NOT_ALLOWED
