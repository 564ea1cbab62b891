"""``<reserved_prefix>/auth``: the gateway as the auth service of a proxy in front.

nginx ``auth_request``, Traefik ``forwardAuth``, Caddy ``forward_auth`` and Envoy ``ext_authz``
send the gateway a subrequest instead of the request itself; the gateway answers with its
decision and the proxy moves the bytes. The decision is :meth:`HTTPHandler.check`, the one
the proxy mode makes (same routes, cache, merge, refresh, grace, guests, audit, metrics);
this module only reads the original request out of the subrequest and writes the answer in
the form such proxies understand (docs/forward-auth.md, config/forward-auth/).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from gateway.accesslog import current_request
from gateway.cors import is_preflight
from gateway.handler import (
    HTTPHandler,
    Outcome,
    Reply,
    identity_headers,
)
from gateway.paths import EncodedSeparator, InvalidPath, read_path
from gateway.request import Request, TrustedProxies
from gateway.responses import send_empty, send_error
from gateway.routes import Router
from gateway.settings import Settings
from gateway.types import Headers, Receive, Scope, Send

# Which proxy's way of naming the original request a subrequest used.
Convention = Literal["nginx", "forwarded", "envoy"]

_NO_STORE = (b"cache-control", b"no-store")
_COOKIE_MIRROR = "x-auth-cookie-{}"


class _BadRequest(ValueError):
    """The subrequest does not say (usably) which request to check."""

    def __init__(self, detail: str, error: str = "invalid_request") -> None:
        super().__init__(detail)
        self.error = error
        self.detail = detail


@dataclass(frozen=True, slots=True)
class OriginalRequest:
    method: str
    path: str  # normalized, as the proxy mode would match it
    decoded: tuple[str, ...]  # its decoded readings, with server.allow_encoded_slash (routes.py)
    query: bytes
    convention: Convention


def _header(headers: Headers, name: bytes) -> bytes | None:
    for key, value in headers:
        if key == name:
            return value
    return None


def _target(raw: bytes) -> tuple[bytes, bytes]:
    """``/path?query`` (or an absolute-form URI, as ``$request_uri`` may hold) -> both parts."""
    if not raw.startswith(b"/") or raw.startswith(b"//"):
        try:
            parts = urlsplit(raw.decode("latin-1"))
        except ValueError:
            raise _BadRequest("the original URI is not a URI") from None
        if parts.scheme not in ("http", "https") or not parts.path.startswith("/"):
            raise _BadRequest("the original URI must be a path starting with /")
        raw = (parts.path + (f"?{parts.query}" if parts.query else "")).encode("latin-1")
    path, _, query = raw.partition(b"?")
    return path, query


def original_request(scope: Scope, prefix: bytes, *, allow_encoded_slash: bool = False
                     ) -> OriginalRequest:
    """The request the proxy asks about: ``X-Original-Method``/``-URI`` (nginx), else
    ``X-Forwarded-Method``/``-Uri`` (Traefik, Caddy), else the subrequest's own method and
    the path after ``prefix`` (Envoy ``ext_authz`` with a ``path_prefix``)."""
    headers: Headers = scope["headers"]
    method: bytes | None
    convention: Convention
    uri = _header(headers, b"x-original-uri")
    if uri is not None:
        convention, method = "nginx", _header(headers, b"x-original-method")
    else:
        uri = _header(headers, b"x-forwarded-uri")
        convention, method = "forwarded", _header(headers, b"x-forwarded-method")
    if uri is not None:
        path, query = _target(uri.strip())
    else:
        convention, method = "envoy", None
        raw: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
        path = raw[len(prefix):]
        query = scope.get("query_string", b"")
        if not path:
            raise _BadRequest(
                "Name the request to check: X-Original-URI (nginx), X-Forwarded-Uri (Traefik, "
                "Caddy) or the path after the endpoint (Envoy).")
    name = (method.strip().decode("latin-1").upper() if method else scope["method"])
    if not name.isalpha() or not name.isascii():
        raise _BadRequest("the original method is not an HTTP method")
    try:
        normalized, decoded = read_path(path, allow_encoded_slash=allow_encoded_slash)
    except EncodedSeparator:
        raise _BadRequest("An encoded slash or backslash (%2F, %5C) is not allowed in the "
                          "path.", "invalid_path") from None
    except InvalidPath:
        raise _BadRequest("The request path is not acceptable.", "invalid_path") from None
    return OriginalRequest(name, normalized, decoded, query, convention)


def answer_headers(outcome: Outcome, scheme: str) -> list[tuple[bytes, bytes]]:
    """What the proxy in front copies: the identity (``Authorization`` the upstream should get
    as ``X-Auth-Authorization``), ``X-Refreshed-Token``, and each cookie change both as its own
    ``Set-Cookie`` and as ``X-Auth-Cookie-<n>`` (nginx copies one header per name)."""
    out: list[tuple[bytes, bytes]] = []
    if outcome.kind == "allow" and outcome.session is not None:
        for name, value in identity_headers(outcome.session, scheme):
            out.append((b"x-auth-authorization" if name == b"authorization" else name, value))
    cookies = 0
    for name, value in outcome.response_headers:
        if name == b"set-cookie":
            cookies += 1
            out.append((name, value))
            out.append((_COOKIE_MIRROR.format(cookies).encode("ascii"), value))
        elif (name, value) not in out:  # x-refreshed-token: already there after a refresh
            out.append((name, value))
    return out


class ForwardAuth:
    """The endpoint. Dispatched to before the proxy path (``gateway/app.py``); answers only
    peers in ``forward_auth.trusted`` (anyone else gets the 404 of an unknown endpoint)."""

    def __init__(self, settings: Settings, *, handler: HTTPHandler, router: Router,
                 count: Callable[[int], None]) -> None:
        self._prefix = (settings.server.reserved_prefix + "/auth").encode("latin-1")
        self._askers = TrustedProxies(settings.forward_auth.trusted)
        # The client address of the original request: X-Forwarded-For as the proxy in front
        # (and any proxy in front of it) wrote it.
        self._hops = TrustedProxies([*settings.forward_auth.trusted,
                                     *settings.server.trusted_proxies])
        self._handler = handler
        self._allow_encoded_slash = settings.server.allow_encoded_slash
        self._router = router
        self._count = count
        self._scheme = settings.auth.scheme
        self._open_paths = frozenset(p for p in (settings.auth.login.path,
                                                 settings.auth.logout.path) if p)

    def owns(self, scope: Scope) -> bool:
        raw: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
        return raw == self._prefix or raw.startswith(self._prefix + b"/")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The client address of the original request: X-Forwarded-For as the proxies in front
        # wrote it.
        request = Request(scope, self._hops)
        record = current_request()
        record.request_id = request.request_id
        reply = Reply(send, [(b"x-request-id", request.request_id.encode("ascii"))],
                      self._count, record)
        try:
            await self._serve(request, reply)
        except Exception as exc:
            await reply.failed(exc, request.request_id, head=scope["method"] == "HEAD")

    async def _serve(self, request: Request, send: Send) -> None:
        scope = request.scope
        head = request.method == "HEAD"
        if request.peer not in self._askers:
            await send_error(send, 404, "not_found", "No such gateway endpoint.", head=head)
            return
        try:
            original = original_request(scope, self._prefix,
                                        allow_encoded_slash=self._allow_encoded_slash)
        except _BadRequest as exc:
            await send_error(send, 400, exc.error, exc.detail, head=head)
            return
        # The decision is about the original request: its method, path and query.
        request.method, request.path, request.query = (original.method, original.path,
                                                       original.query)
        if is_preflight(original.method, request.headers) or (
                original.method == "POST" and original.path in self._open_paths):
            # Preflights never need a token; login and logout are the gateway's proxy port's
            # (the shipped configs send them there) and open whatever the routes say.
            outcome = Outcome("allow")
        else:
            route = self._router.match(original.method, original.path, original.decoded)
            outcome = await self._handler.check(request, route)
        await self._answer(send, outcome, head=head)

    async def _answer(self, send: Send, outcome: Outcome, *, head: bool) -> None:
        extra = answer_headers(outcome, self._scheme)
        if outcome.kind == "allow":
            await send_empty(send, 200, [_NO_STORE, *extra])
            return
        if outcome.location is not None:  # the proxy in front redirects browsers there
            extra = [(b"location", outcome.location.encode("latin-1")), *extra]
        await outcome.refusal().send(send, outcome.refusal_headers(extra), head=head)
