"""Cross-site request refusal (docs/behaviour.md#cross-site-requests, SECURITY.md).

``SameSite=Lax`` keeps the session cookie off most cross-site requests, but not all (a
same-site sibling, ``SameSite=None`` deployments, browsers that ignore it), and the login form
needs no cookie at all to be abused. So the gateway refuses, before the backend sees them:

* a state-changing request (any method but GET, HEAD, OPTIONS) or a WebSocket handshake that
  carries the session in a cookie, and
* every login capture and logout,

when the browser says it comes from another site. Browsers say so in two headers a page
cannot forge: ``Sec-Fetch-Site`` and ``Origin``. The verdict, in order:

1. ``Origin`` listed in ``[cors] allow_origins`` or ``[csrf] trusted_origins``: allowed (a
   partner site the operator named, which is cross-site by definition).
2. ``Sec-Fetch-Site: cross-site``: refused. ``Sec-Fetch-Site: same-origin``: allowed (the
   browser vouches for it, whatever proxies did to ``Host``).
3. Otherwise (``same-site``, ``none``, or no ``Sec-Fetch-Site`` from an older browser) an
   ``Origin`` that is not the request's own origin (``null`` included) is refused.
4. No ``Origin`` and no ``Sec-Fetch-Site``: allowed (not a browser, or one that sends
   neither; ``SameSite`` still applies).

The request's own origin is ``<scheme>://<host>`` with the default port dropped: the scheme
of the connection (``https`` when the gateway terminates TLS) and the ``Host`` header, or
``X-Forwarded-Proto`` and ``X-Forwarded-Host`` (their last value: the one the nearest proxy
wrote) when the peer is in ``server.trusted_proxies``; from anyone else those headers are
ignored. Requests whose token is in ``Authorization`` are never refused: a browser cannot add
that header to a cross-site request.
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from gateway.request import TrustedProxies
from gateway.settings import Settings
from gateway.types import Headers, Scope

Refusal = Literal["sec_fetch_site", "origin"]
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_DEFAULT_PORTS = {"http": 80, "https": 443}
_SCHEMES = {"http": "http", "https": "https", "ws": "http", "wss": "https"}


def canonical_origin(value: str) -> str | None:
    """``scheme://host[:port]`` lower-cased, default port dropped; None if it is not an
    http(s) origin (``null``, a path, garbage)."""
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname or parts.path not in ("", "/"):
        return None
    if parts.query or parts.fragment or parts.username is not None:
        return None
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    if port is None or port == _DEFAULT_PORTS[scheme]:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def _last(value: bytes) -> str:
    return value.decode("latin-1").split(",")[-1].strip()


class CsrfGuard:
    """Decides whether a request is a cross-site one to refuse (see the module docstring)."""

    def __init__(self, settings: Settings, trusted: TrustedProxies) -> None:
        self.enabled = settings.csrf.enabled
        listed = [*settings.csrf.trusted_origins,
                  *(settings.cors.allow_origins if settings.cors is not None else ())]
        self._allowed = frozenset(o for o in map(canonical_origin, listed) if o is not None)
        self._trusted = trusted

    def own_origin(self, scope: Scope) -> str | None:
        scheme = _SCHEMES.get(str(scope.get("scheme", "http")), "http")
        host = ""
        proxy = bool(scope.get("client")) and scope["client"][0] in self._trusted
        forwarded_proto = forwarded_host = ""
        for name, value in scope["headers"]:
            if name == b"host" and not host:
                host = value.decode("latin-1").strip()
            elif proxy and name == b"x-forwarded-proto":
                forwarded_proto = _last(value).lower()
            elif proxy and name == b"x-forwarded-host":
                forwarded_host = _last(value)
        if forwarded_proto in _DEFAULT_PORTS:
            scheme = forwarded_proto
        host = forwarded_host or host
        return canonical_origin(f"{scheme}://{host}") if host else None

    def refusal(self, scope: Scope) -> Refusal | None:
        """Why this request is to be refused as cross-site, or None."""
        headers: Headers = scope["headers"]
        origins = [v.decode("latin-1") for k, v in headers if k == b"origin"]
        sites = {v.strip().lower() for k, v in headers if k == b"sec-fetch-site"}
        canonical = [canonical_origin(o) for o in origins]
        if canonical and all(o is not None and o in self._allowed for o in canonical):
            return None
        if b"cross-site" in sites:
            return "sec_fetch_site"
        if sites == {b"same-origin"} or not origins:
            return None
        own = self.own_origin(scope)
        if own is None or any(o != own for o in canonical):
            return "origin"
        return None
