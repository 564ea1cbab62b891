"""One HTTP request through the gateway: identify it, check it, answer or forward it."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Protocol
from urllib.parse import quote

from gateway.audit import AuditLog
from gateway.authclient import BackendUnavailable
from gateway.cors import CorsPolicy, is_preflight, without_upstream_cors
from gateway.endpoints import Endpoints
from gateway.guest import GuestLimited
from gateway.login import LoginCapture, Logout
from gateway.proxy import TrustedProxies, Upstream, upstream_request_headers
from gateway.requestid import new_request_id
from gateway.responses import send_empty, send_error, send_redirect
from gateway.routes import (
    Decision,
    InvalidPath,
    Route,
    Router,
    decide,
    is_browser_navigation,
    login_location,
    normalize_path,
    unauthenticated_answer,
)
from gateway.session import RequestInfo, Session, Sessions
from gateway.settings import Settings
from gateway.types import Headers, Message, Receive, Scope, Send
from gateway.websocket import WebSocketRelay, as_handshake_answer


class Forward(Protocol):
    """The last step of an allowed request: the HTTP forwarder or the WebSocket relay."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send, *, path: str,
                       headers: Headers, extra_response_headers: Headers = ()) -> None: ...


_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:@/+=-]{1,128}")
_CREDENTIAL_HEADERS = (b"authorization", b"cookie")
_DETAIL = {
    "no_token": "Authentication is required.",
    "malformed_token": "The credentials are malformed.",
    "invalid_token": "The session is not valid; please log in again.",
    "session_expired": "The session has ended; please log in again.",
    "guest_token": "This needs a logged-in user; a guest session is not enough.",
}


def request_id_of(scope: Scope) -> str:
    """The client's ``x-request-id`` if it is a sane one, else a new one."""
    for name, value in scope["headers"]:
        if name == b"x-request-id" and _REQUEST_ID.fullmatch(value):
            return str(value.decode("ascii"))
    return new_request_id()


def _decorate(send: Send, added: list[tuple[bytes, bytes]], count: Callable[[int], None],
              own_cors: bool) -> Send:
    """Every response carries ``x-request-id`` (and, for an allowed origin, the gateway's CORS
    headers instead of any the upstream sent), and is counted by status."""

    async def wrapped(message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start" or kind == "websocket.accept":
            headers = message.get("headers", ())
            if own_cors:
                headers = without_upstream_cors(headers)
            message["headers"] = [*headers, *added]
            count(message.get("status", 101))
        await send(message)

    return wrapped


def _raw_path(scope: Scope) -> bytes:
    raw: bytes | None = scope.get("raw_path")
    if raw is not None:
        return raw
    # A server without raw_path gives the decoded path: encode it back.
    return quote(scope["path"], safe="/!$&'()*+,;=:@~").encode("ascii")


def _header(headers: Headers, name: bytes) -> bytes | None:
    for key, value in headers:
        if key == name:
            return value
    return None


_CONTROL = re.compile(r"[\x00-\x1f\x7f%]")


def _header_safe(value: str) -> bytes:
    """A backend-chosen id as a header value: UTF-8, with control characters (and ``%``)
    percent-encoded so that no id can split or end a header line."""
    if _CONTROL.search(value):
        value = _CONTROL.sub(lambda m: f"%{ord(m.group()):02X}", value)
    return value.encode("utf-8")


def identity_headers(session: Session, scheme: str) -> list[tuple[bytes, bytes]]:
    """What the upstream learns of the session: the token (unless the backend could not
    verify it: a local guest token) and who it is."""
    identity = session.identity
    if identity is None:
        return []
    headers = [
        (b"x-auth-user-id", _header_safe(identity.user_id)),
        (b"x-auth-token-type", identity.token_type.encode("ascii")),
        (b"x-auth-user", identity.user_b64),
        *session.upstream_headers,
    ]
    if session.token is not None:
        headers.append((b"authorization", f"{scheme} {session.token}".encode("ascii")))
    return headers


def _without_stale_tokens(headers: list[tuple[bytes, bytes]], names: tuple[bytes, ...],
                          token: str | None) -> list[tuple[bytes, bytes]]:
    """Drop the gateway's token cookies (access, guest) that do not hold the token being
    forwarded: an invalid or replaced token is not sent on (3.3), in a cookie no more than
    in ``Authorization``. Other cookies pass byte for byte."""
    keep = token.encode("ascii") if token is not None else None
    out: list[tuple[bytes, bytes]] = []
    for name, value in headers:
        if name == b"cookie" and any(n in value for n in names):
            pieces = [p for p in value.split(b";") if not _stale(p, names, keep)]
            if not pieces:
                continue
            value = b";".join(pieces).lstrip(b" ")
        out.append((name, value))
    return out


def _stale(piece: bytes, names: tuple[bytes, ...], keep: bytes | None) -> bool:
    name, _, value = piece.partition(b"=")
    return name.strip() in names and value.strip() != keep


class HTTPHandler:
    def __init__(
        self,
        settings: Settings,
        *,
        upstream: Upstream,
        endpoints: Endpoints,
        trusted: TrustedProxies,
        router: Router,
        sessions: Sessions,
        login: LoginCapture,
        logout: Logout,
        audit: AuditLog,
        count: Callable[[int], None],
        websockets: WebSocketRelay,
        cors: CorsPolicy | None = None,
    ) -> None:
        self._upstream = upstream
        self._websockets = websockets
        self._endpoints = endpoints
        self._trusted = trusted
        self._router = router
        self._sessions = sessions
        self._audit = audit
        self._count = count
        self._cors = cors
        self._login_capture = login
        self._logout = logout
        self._scheme = settings.auth.scheme
        self._token_cookies = (settings.cookies.access.encode("latin-1"),
                               settings.cookies.guest.encode("latin-1"))
        self._login = settings.login

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._handle(scope, receive, send, self._upstream.forward)

    async def websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A WebSocket handshake is checked like a GET; refusals are its HTTP answer."""
        if (await receive())["type"] != "websocket.connect":
            return
        await self._handle({**scope, "method": "GET"}, receive,
                           as_handshake_answer(send, scope), self._websockets.forward)

    async def _handle(self, scope: Scope, receive: Receive, send: Send, forward: Forward
                      ) -> None:
        request_id = request_id_of(scope)
        headers: Headers = scope["headers"]
        added = [(b"x-request-id", request_id.encode("ascii"))]
        origin = _header(headers, b"origin") if self._cors is not None else None
        if self._cors is not None and self._cors.allows(origin):
            assert origin is not None
            added.extend(self._cors.response_headers(origin))
        send = _decorate(send, added, self._count, own_cors=self._cors is not None)
        method: str = scope["method"]
        head = method == "HEAD"
        try:
            path = normalize_path(_raw_path(scope))
        except InvalidPath:
            await send_error(send, 400, "invalid_path", "The request path is not acceptable.",
                             head=head)
            return
        if self._endpoints.owns(path):
            await self._endpoints.handle(scope, send, path)
            return
        peer = scope["client"][0] if scope.get("client") else ""
        client_ip = self._trusted.client_ip(peer, _header(headers, b"x-forwarded-for"))
        if is_preflight(method, headers):  # never needs a token
            await self._preflight(scope, receive, send, path, origin, client_ip, request_id)
            return
        if method == "POST" and path in (self._login_capture.path, self._logout.path):
            info = RequestInfo(request_id, client_ip, method, path)
            if path == self._logout.path:
                await self._logout.handle(headers, send, info)
                return
            # The login endpoint is reachable without a session whatever the routes say, and
            # asked for an uncompressed reply: the gateway must read the tokens in it.
            forwarded = [(k, v) for k, v in upstream_request_headers(
                scope, client_ip=client_ip, request_id=request_id, trusted=self._trusted)
                if k != b"accept-encoding"]
            forwarded.append((b"accept-encoding", b"identity"))
            await self._upstream.forward(scope, receive, send, path=path, headers=forwarded,
                                         rewrite=self._login_capture.rewriter(info))
            return
        route = self._router.match(method, path)
        forwarded = upstream_request_headers(scope, client_ip=client_ip, request_id=request_id,
                                             trusted=self._trusted)
        if route.access == "public" and not any(n in _CREDENTIAL_HEADERS for n, _ in headers):
            await forward(scope, receive, send, path=path, headers=forwarded)
            return

        info = RequestInfo(request_id, client_ip, method, path)
        session: Session | None = None  # kept when guest issuance fails: it may clear cookies
        try:
            session = await self._sessions.resolve(headers, info)
            if (session.identity is None and route.access == "guest"
                    and self._sessions.issues_guests):
                session = await self._sessions.issue_guest(session, info)
        except GuestLimited as exc:
            self._audit.emit("auth.denied", **info.fields(), outcome="limited",
                             reason="guest_rate_limited")
            await send_error(send, 429, "too_many_requests",
                             "Too many new guest sessions; try again shortly.",
                             [(b"retry-after", str(exc.retry_after).encode("ascii")),
                              *(session.response_headers if session else ())], head=head)
            return
        except BackendUnavailable as exc:
            self._audit.emit("auth.backend_unavailable", **info.fields(), outcome="unavailable",
                             reason=exc.reason, token_fp=self._sessions.fingerprint(headers))
            owed = [*exc.headers, *(session.response_headers if session else ())]
            await send_error(send, 503, "auth_unavailable",
                             "The authentication service is unavailable; try again shortly.",
                             [(b"retry-after", b"5"), *owed], head=head)
            return

        identity = session.identity
        decision = decide(route, identity.token_type if identity else None,
                          identity.roles if identity else ())
        if decision is Decision.ALLOW:
            forwarded = _without_stale_tokens(forwarded, self._token_cookies, session.token)
            forwarded.extend(identity_headers(session, self._scheme))
            await forward(scope, receive, send, path=path, headers=forwarded,
                          extra_response_headers=session.response_headers)
            return
        if decision is Decision.FORBIDDEN:
            assert identity is not None
            self._audit.emit("auth.denied", **info.fields(), outcome="forbidden",
                             reason="missing_role", user_id=identity.user_id,
                             token_fp=session.token_fp)
            await send_error(send, 403, "forbidden", "You are not allowed to do this.",
                             session.response_headers, head=head)
            return
        await self._unauthenticated(scope, send, route, session, info, head=head)

    async def _preflight(self, scope: Scope, receive: Receive, send: Send, path: str,
                         origin: bytes | None, client_ip: str, request_id: str) -> None:
        if self._cors is None:
            forwarded = upstream_request_headers(scope, client_ip=client_ip,
                                                 request_id=request_id, trusted=self._trusted)
            await self._upstream.forward(scope, receive, send, path=path, headers=forwarded)
            return
        allowed = self._cors.preflight(origin, scope["headers"])
        if allowed is None:
            await send_error(send, 403, "cors_forbidden",
                             "This origin, method or header is not allowed.")
            return
        await send_empty(send, 204, allowed)

    async def _unauthenticated(self, scope: Scope, send: Send, route: Route, session: Session,
                               info: RequestInfo, *, head: bool) -> None:
        reason = "guest_token" if session.identity is not None else session.reason
        browser = is_browser_navigation(info.method, scope["headers"])
        answer = unauthenticated_answer(route, browser)
        self._audit.emit("auth.denied", **info.fields(), outcome="unauthenticated",
                         reason=reason, answer=answer, token_fp=session.token_fp,
                         user_id=session.identity.user_id if session.identity else None)
        if answer == "redirect":
            location = login_location(self._login.url, self._login.return_param, info.path,
                                      scope.get("query_string", b""))
            await send_redirect(send, location, session.response_headers)
            return
        await send_error(send, 401, "unauthenticated", _DETAIL.get(reason, _DETAIL["no_token"]),
                         [(b"www-authenticate", b'Bearer realm="gateway"'),
                          *session.response_headers], head=head)
