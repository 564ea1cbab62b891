"""One HTTP request through the gateway: identify it, check it, answer or forward it."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol, cast
from urllib.parse import quote

from gateway.accesslog import current_request
from gateway.audit import AuditLog
from gateway.authclient import BackendUnavailable
from gateway.cors import CorsPolicy, is_preflight, without_upstream_cors
from gateway.csrf import SAFE_METHODS, CsrfGuard
from gateway.endpoints import Endpoints
from gateway.guest import GuestLimited
from gateway.limits import RequestLimits
from gateway.login import LoginCapture, Logout
from gateway.metrics import AccessLevel
from gateway.owncookies import OwnCookies
from gateway.proxy import TrustedProxies, Upstream, upstream_request_headers
from gateway.requestid import new_request_id
from gateway.responses import send_empty, send_error, send_redirect
from gateway.routes import (
    Decision,
    EncodedSeparator,
    InvalidPath,
    Route,
    Router,
    decide,
    is_browser_navigation,
    login_location,
    read_path,
    unauthenticated_answer,
)
from gateway.session import RequestInfo, Session, Sessions
from gateway.settings import Settings
from gateway.tokens import has_token_header, token_schemes
from gateway.types import Headers, Message, Receive, Scope, Send
from gateway.websocket import WebSocketRelay, as_handshake_answer


class Forward(Protocol):
    """The last step of an allowed request: the HTTP forwarder or the WebSocket relay."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send, *, path: str,
                       headers: Headers, extra_response_headers: Headers = ()) -> None: ...


OutcomeKind = Literal["allow", "unauthenticated", "forbidden", "csrf", "unavailable",
                      "limited"]
WWW_AUTHENTICATE = (b"www-authenticate", b'Bearer realm="gateway"')


@dataclass(slots=True)
class Outcome:
    """What the gateway decided about one request, before any answer: ``allow`` (with the
    session to forward, or none on a public route without credentials), ``unauthenticated``
    (``location``: the login redirect of a browser navigation), ``forbidden``, ``csrf`` (a
    cross-site request carrying the cookie session), ``unavailable``
    (the auth backend gave no verdict) or ``limited`` (guest issuance). ``response_headers``
    are owed to the client whatever the answer: cookie changes, ``x-refreshed-token``."""

    kind: OutcomeKind
    session: Session | None = None
    response_headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    retry_after: int = 0
    detail: str = ""
    location: str | None = None


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
        own_cookies: OwnCookies,
        csrf: CsrfGuard,
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
        self._schemes = token_schemes(settings.auth.scheme)
        self._own_cookies = own_cookies
        self._csrf = csrf
        self._login = settings.login
        self._limits = RequestLimits(settings.server)
        self._allow_encoded_slash = settings.server.allow_encoded_slash

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
        record = current_request()
        record.request_id = request_id
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
            path, decoded = read_path(_raw_path(scope),
                                      allow_encoded_slash=self._allow_encoded_slash)
        except EncodedSeparator:
            await send_error(send, 400, "invalid_path",
                             "An encoded slash or backslash (%2F, %5C) is not allowed in the "
                             "path.", head=head)
            return
        except InvalidPath:
            await send_error(send, 400, "invalid_path", "The request path is not acceptable.",
                             head=head)
            return
        record.path = path
        own = self._endpoints.owns(path, scope)
        refusal = self._limits.refusal(scope, own_endpoint=own)
        if refusal is not None:  # head too large, too many headers, bad Host: docs/limits.md
            await send_error(send, refusal.status, refusal.error, refusal.detail,
                             [(b"connection", b"close")], head=head)
            return
        if own:
            record.access = "gateway"
            await self._endpoints.handle(scope, send, path)
            return
        peer = scope["client"][0] if scope.get("client") else ""
        client_ip = self._trusted.client_ip(peer, _header(headers, b"x-forwarded-for"))
        record.client_ip = client_ip
        if is_preflight(method, headers):  # never needs a token
            record.access = "public"
            await self._preflight(scope, receive, send, path, origin, client_ip, request_id)
            return
        info = RequestInfo(request_id, client_ip, method, path)
        if method == "POST" and path in (self._login_capture.path, self._logout.path):
            record.access = "public"  # reachable without a session whatever the routes say
            # Every login capture and logout is refused cross-site, cookie or not: a forged
            # login puts the attacker's session in the victim's browser.
            cross_site = self._cross_site(scope, info)
            if cross_site is not None:
                await _refuse(send, cross_site, head=head)
                return
            if path == self._logout.path:
                await self._logout.handle(headers, send, info)
                return
            # The login endpoint is reachable without a session whatever the routes say, and
            # asked for an uncompressed reply: the gateway must read the tokens in it.
            forwarded = [(k, v) for k, v in self._own_cookies.request_headers(
                upstream_request_headers(scope, client_ip=client_ip, request_id=request_id,
                                         trusted=self._trusted), path=path, token=None)
                if k != b"accept-encoding"]
            forwarded.append((b"accept-encoding", b"identity"))
            attempt = self._login_capture.begin(info)
            await self._upstream.forward(scope, receive, send, path=path, headers=forwarded,
                                         rewrite=attempt.rewrite, auth_endpoint="login")
            await attempt.finish(record.status)
            return
        route = self._router.match(method, path, decoded)
        record.access = cast(AccessLevel, route.access)
        forwarded = upstream_request_headers(scope, client_ip=client_ip, request_id=request_id,
                                             trusted=self._trusted)
        outcome = await self.check(scope, route, headers, info, scope.get("query_string", b""))
        session = outcome.session
        if outcome.kind == "allow":
            if session is None:  # public, and no credential to check
                await forward(scope, receive, send, path=path, headers=forwarded)
                return
            forwarded = self._own_cookies.request_headers(forwarded, path=path,
                                                          token=session.token)
            forwarded.extend(identity_headers(session, self._scheme))
            await forward(scope, receive, send, path=path, headers=forwarded,
                          extra_response_headers=session.response_headers)
            return
        await _refuse(send, outcome, head=head)

    async def check(self, scope: Scope, route: Route, headers: Headers, info: RequestInfo,
                    query: bytes) -> Outcome:
        """The gateway's decision on one request: refuse it cross-site (gateway/csrf.py),
        resolve its session (validation, refresh, guest issuance) and apply ``route``. Emits
        the audit events of a refusal; answers nothing. The proxy path forwards or refuses on
        it, and forward-auth (``gateway/forward_auth.py``) reports it to the proxy in front
        (``scope`` is then the proxy's subrequest, which carries the client's headers)."""
        if ((info.method not in SAFE_METHODS or scope["type"] == "websocket")
                and self._own_cookies.present(headers)
                and not has_token_header(headers, self._schemes)):
            refusal = self._cross_site(scope, info)
            if refusal is not None:
                return refusal
        if route.access == "public" and not any(n in _CREDENTIAL_HEADERS for n, _ in headers):
            return Outcome("allow")
        session: Session | None = None  # kept when guest issuance fails: it may clear cookies
        try:
            session = await self._sessions.resolve(headers, info)
            if (session.identity is None and route.access == "guest"
                    and self._sessions.issues_guests):
                session = await self._sessions.issue_guest(session, info)
        except GuestLimited as exc:
            self._audit.emit("auth.denied", **info.fields(), outcome="limited",
                             reason="guest_rate_limited")
            return Outcome("limited", session,
                           [*(session.response_headers if session else ())],
                           retry_after=exc.retry_after)
        except BackendUnavailable as exc:
            self._audit.emit("auth.backend_unavailable", **info.fields(), outcome="unavailable",
                             reason=exc.reason, token_fp=self._sessions.fingerprint(headers))
            owed = [*exc.headers, *(session.response_headers if session else ())]
            return Outcome("unavailable", session, owed, retry_after=5)

        identity = session.identity
        current_request().user_id = identity.user_id if identity else None
        decision = decide(route, identity.token_type if identity else None,
                          identity.roles if identity else ())
        if decision is Decision.ALLOW:
            return Outcome("allow", session, session.response_headers)
        if decision is Decision.FORBIDDEN:
            assert identity is not None
            self._audit.emit("auth.denied", **info.fields(), outcome="forbidden",
                             reason="missing_role", user_id=identity.user_id,
                             token_fp=session.token_fp)
            return Outcome("forbidden", session, session.response_headers)
        return self._unauthenticated(headers, query, route, session, info)

    async def _preflight(self, scope: Scope, receive: Receive, send: Send, path: str,
                         origin: bytes | None, client_ip: str, request_id: str) -> None:
        if self._cors is None:
            # Forwarded for the app to answer, but with no credential of any kind (and, being
            # a preflight, no body): a token is never needed, so none is passed on.
            forwarded = self._own_cookies.request_headers(
                upstream_request_headers(scope, client_ip=client_ip, request_id=request_id,
                                         trusted=self._trusted),
                path=path, token=None, keep_none=True)
            await self._upstream.forward(scope, receive, send, path=path, headers=forwarded)
            return
        allowed = self._cors.preflight(origin, scope["headers"])
        if allowed is None:
            await send_error(send, 403, "cors_forbidden",
                             "This origin, method or header is not allowed.")
            return
        await send_empty(send, 204, allowed)

    def _cross_site(self, scope: Scope, info: RequestInfo) -> Outcome | None:
        """A ``csrf`` refusal (403) when the browser says the request comes from another site
        (gateway/csrf.py), else None."""
        if not self._csrf.enabled:
            return None
        reason = self._csrf.refusal(scope)
        if reason is None:
            return None
        headers = scope["headers"]
        origin = _header(headers, b"origin")
        site = _header(headers, b"sec-fetch-site")
        self._audit.emit("auth.csrf_refused", **info.fields(), outcome="refused",
                         reason=reason,
                         origin=origin.decode("latin-1")[:200] if origin is not None else None,
                         sec_fetch_site=site.decode("latin-1")[:40] if site is not None else None,
                         token_fp=self._sessions.fingerprint(headers))
        return Outcome("csrf", detail="Cross-site request refused: this request must come "
                                      "from the site itself.")

    def _unauthenticated(self, headers: Headers, query: bytes, route: Route, session: Session,
                         info: RequestInfo) -> Outcome:
        reason = "guest_token" if session.identity is not None else session.reason
        browser = is_browser_navigation(info.method, headers)
        answer = unauthenticated_answer(route, browser)
        self._audit.emit("auth.denied", **info.fields(), outcome="unauthenticated",
                         reason=reason, answer=answer, token_fp=session.token_fp,
                         user_id=session.identity.user_id if session.identity else None)
        location = None
        if answer == "redirect":
            location = login_location(self._login.url, self._login.return_param, info.path,
                                      query)
        return Outcome("unauthenticated", session, session.response_headers,
                       detail=_DETAIL.get(reason, _DETAIL["no_token"]), location=location)


async def _refuse(send: Send, outcome: Outcome, *, head: bool) -> None:
    """The proxy's answer to a request it does not forward."""
    owed = outcome.response_headers
    if outcome.kind == "limited":
        await send_error(send, 429, "too_many_requests",
                         "Too many new guest sessions; try again shortly.",
                         [(b"retry-after", str(outcome.retry_after).encode("ascii")), *owed],
                         head=head)
    elif outcome.kind == "unavailable":
        await send_error(send, 503, "auth_unavailable",
                         "The authentication service is unavailable; try again shortly.",
                         [(b"retry-after", str(outcome.retry_after).encode("ascii")), *owed],
                         head=head)
    elif outcome.kind == "forbidden":
        await send_error(send, 403, "forbidden", "You are not allowed to do this.", owed,
                         head=head)
    elif outcome.kind == "csrf":
        await send_error(send, 403, "csrf", outcome.detail, owed, head=head)
    elif outcome.location is not None:
        await send_redirect(send, outcome.location, owed)
    else:
        await send_error(send, 401, "unauthenticated", outcome.detail,
                         [WWW_AUTHENTICATE, *owed], head=head)
