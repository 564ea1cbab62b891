"""Browsers on other origins (docs/behaviour.md#cors): preflights and CORS response headers.

With ``[cors]`` the gateway owns CORS: it answers preflights itself (they never need a token)
and puts the CORS headers on every response to an allowed origin, its own 401/403/503 included,
replacing any the upstream sent. Without ``[cors]`` preflights are forwarded to the app
without the gateway's cookies, without ``Authorization`` and without a body.
"""

from __future__ import annotations

from gateway.settings import CorsSettings
from gateway.types import Headers

_VARY = (b"vary", b"Origin")


def is_preflight(method: str, headers: Headers) -> bool:
    """``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method`` and no body. A
    browser's preflight never has one: an ``OPTIONS`` with a body is a request like any
    other, checked like one (else a "preflight" would carry a body past the session check)."""
    if method != "OPTIONS":
        return False
    names = set()
    for name, value in headers:
        if name == b"transfer-encoding" or (name == b"content-length"
                                            and value.strip() != b"0"):
            return False
        names.add(name)
    return b"origin" in names and b"access-control-request-method" in names


class CorsPolicy:
    def __init__(self, settings: CorsSettings) -> None:
        self._origins = frozenset(o.encode("latin-1") for o in settings.allow_origins)
        self._any = "*" in settings.allow_origins
        self._methods = frozenset(m.upper() for m in settings.allow_methods)
        self._headers = frozenset(h.lower() for h in settings.allow_headers)
        self._credentials = settings.allow_credentials
        common = []
        if settings.allow_credentials:
            common.append((b"access-control-allow-credentials", b"true"))
        self._common = common
        self._expose = ([(b"access-control-expose-headers",
                          ", ".join(settings.expose_headers).encode("latin-1"))]
                        if settings.expose_headers else [])
        self._preflight = [
            (b"access-control-allow-methods", ", ".join(settings.allow_methods).encode()),
            (b"access-control-allow-headers", ", ".join(settings.allow_headers).encode()),
            (b"access-control-max-age", str(settings.max_age_s).encode()),
        ]

    def allows(self, origin: bytes | None) -> bool:
        return origin is not None and (self._any or origin in self._origins)

    def _allow_origin(self, origin: bytes) -> tuple[bytes, bytes]:
        return (b"access-control-allow-origin",
                b"*" if self._any and not self._credentials else origin)

    def response_headers(self, origin: bytes) -> list[tuple[bytes, bytes]]:
        """For an allowed origin: the headers every response carries."""
        return [self._allow_origin(origin), *self._common, *self._expose, _VARY]

    def preflight(self, origin: bytes | None, headers: Headers) -> list[tuple[bytes, bytes]] | None:
        """The headers of a successful preflight answer, or None to refuse it (the
        per-response ones, :meth:`response_headers`, are added to every answer anyway)."""
        if origin is None or not self.allows(origin):
            return None
        method = b""
        requested: set[str] = set()
        for name, value in headers:
            if name == b"access-control-request-method":
                method = value.strip().upper()
            elif name == b"access-control-request-headers":
                requested.update(h.strip().lower() for h in value.decode("latin-1").split(",")
                                 if h.strip())
        if method.decode("latin-1") not in self._methods or not requested <= self._headers:
            return None
        return list(self._preflight)


_OWNED = frozenset({b"access-control-allow-origin", b"access-control-allow-credentials",
                    b"access-control-expose-headers"})


def without_upstream_cors(headers: Headers) -> list[tuple[bytes, bytes]]:
    """Drop the per-response CORS headers the gateway sets itself (no duplicates)."""
    return [(k, v) for k, v in headers if k.lower() not in _OWNED]
