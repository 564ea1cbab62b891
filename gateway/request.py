"""One request as the gateway reads it: :class:`Request`, built from the ASGI scope in one pass.

The way uvicorn's cycle object or mitmproxy's flow carry a request, every part of the gateway
that needs something of the request (its id, the client's address, the credentials, the body's
framing, the audit's common fields) reads it here instead of walking ``scope["headers"]``
again. The headers are walked once, when the request arrives; the cookies are parsed only when
a part asks for them (a request with a ``Bearer`` token and a cached validation never needs
them). ``docs/behaviour.md`` says what each of these means on the wire.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from urllib.parse import quote

from gateway.requestid import new_request_id
from gateway.settings import CookieSettings
from gateway.tokens import CookieJar, FoundToken, cookie_token, header_token, request_cookies
from gateway.types import Headers, Scope

# A client's own x-request-id is kept only if it is this sane (no spaces, no controls).
_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:@/+=-]{1,128}")


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


def connection_listed(values: Iterable[bytes]) -> frozenset[bytes]:
    """The header names ``Connection`` header values list (lower-cased): hop-by-hop headers
    of that one connection, never passed on, in either direction."""
    return frozenset(name.strip().lower() for value in values for name in value.split(b",")
                     if name.strip())


def _raw_path(scope: Scope) -> bytes:
    raw: bytes | None = scope.get("raw_path")
    if raw is not None:
        return raw
    # A server without raw_path gives the decoded path: encode it back.
    return quote(scope["path"], safe="/!$&'()*+,;=:@~").encode("ascii")


class Request:
    """What the gateway knows of one request. ``method`` and ``path`` are the request's own
    on the proxy path; forward-auth sets them to the original request's it is asked about.
    ``path`` is the normalized path (``gateway/paths.py``), empty until it has been read."""

    __slots__ = (
        "_cookie_headers",
        "_jar",
        "authorizations",
        "chunked",
        "client_ip",
        "connection_listed",
        "content_length",
        "headers",
        "method",
        "origin",
        "path",
        "peer",
        "peer_trusted",
        "query",
        "raw_path",
        "request_id",
        "scope",
        "sec_fetch_site",
    )

    def __init__(self, scope: Scope, trusted: TrustedProxies) -> None:
        self.scope = scope
        headers: Headers = scope["headers"]
        self.headers = headers
        self.method: str = scope["method"]
        self.raw_path = _raw_path(scope)
        self.query: bytes = scope.get("query_string", b"")
        self.path = ""
        request_id: bytes | None = None
        authorizations: list[bytes] = []
        origin: bytes | None = None
        site: bytes | None = None
        forwarded_for: bytes | None = None
        lengths: list[bytes] = []
        chunked = False
        cookies: list[bytes] = []
        listed: list[bytes] = []
        for name, value in headers:
            if name == b"cookie":
                cookies.append(value)
            elif name == b"authorization":
                authorizations.append(value)
            elif name == b"content-length":
                lengths.append(value)
            elif name == b"transfer-encoding":
                chunked = True
            elif name == b"origin":
                if origin is None:
                    origin = value
            elif name == b"sec-fetch-site":
                if site is None:
                    site = value
            elif name == b"x-forwarded-for":
                if forwarded_for is None:
                    forwarded_for = value
            elif name == b"x-request-id":
                if request_id is None:
                    request_id = value
            elif name == b"connection":
                listed.append(value)
        self.request_id = (request_id.decode("ascii")
                           if request_id is not None and _REQUEST_ID.fullmatch(request_id)
                           else new_request_id())
        client = scope.get("client")
        self.peer: str = client[0] if client else ""
        # Whether the peer's X-Forwarded-* are believed (decided once, used when forwarding).
        self.peer_trusted = self.peer in trusted
        self.client_ip = trusted.client_ip(self.peer, forwarded_for)
        # Headers the client's ``Connection`` names: hop-by-hop, never forwarded.
        self.connection_listed = connection_listed(listed)
        self.authorizations = authorizations
        self.origin = origin
        self.sec_fetch_site = site
        self.chunked = chunked
        # The body length the client announced, if its framing is unambiguous: exactly one
        # Content-Length of digits and no Transfer-Encoding (with both, the server framed the
        # body by the latter and the length means nothing). -1: none that can be believed.
        self.content_length = -1
        if not chunked and len(lengths) == 1 and lengths[0].strip().isdigit():
            self.content_length = int(lengths[0])
        elif not chunked and not lengths:
            self.content_length = 0
        self._cookie_headers = cookies
        self._jar: CookieJar | None = None

    @property
    def has_body(self) -> bool:
        """Whether a body follows the head (``Transfer-Encoding``, or a length that is not
        zero: an unparsable one counts, the server framed it somehow)."""
        return self.chunked or self.content_length != 0

    @property
    def declared_length(self) -> int | None:
        """The announced body length when it can be believed (see ``content_length``)."""
        return None if self.chunked or self.content_length < 0 else self.content_length

    @property
    def has_credentials(self) -> bool:
        """Whether the request carries anything that may be a credential: an
        ``Authorization`` header or cookies."""
        return bool(self.authorizations or self._cookie_headers)

    def token(self, cookies: CookieSettings, schemes: frozenset[str]) -> FoundToken | None:
        """The request's token (docs/behaviour.md#tokens): a token scheme's ``Authorization``
        header, else the access cookie, else the guest cookie. Raises
        :class:`~gateway.tokens.MalformedToken`."""
        found = header_token(self.authorizations, schemes)
        if found is not None:
            return found
        return cookie_token(self.cookies(), cookies)

    @property
    def has_cookies(self) -> bool:
        return bool(self._cookie_headers)

    def cookies(self) -> CookieJar:
        """The request's cookies (``gateway/tokens.py`` parses them), parsed on first use."""
        if self._jar is None:
            self._jar = request_cookies([(b"cookie", v) for v in self._cookie_headers])
        return self._jar

    def fields(self) -> dict[str, str]:
        """The audit stream's common fields (docs/audit.md)."""
        return {"request_id": self.request_id, "client_ip": self.client_ip,
                "method": self.method, "path": self.path}
