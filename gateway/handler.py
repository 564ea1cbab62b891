"""One HTTP request through the gateway: identify it, check it, answer or forward it.

:meth:`HTTPHandler._serve` is the whole sequence: read the path, screen the head, serve the
gateway's own endpoints, preflights, login and logout, then match the route, decide
(:meth:`HTTPHandler.check`) and either forward with the headers the upstream may see (built
once, after the decision) or answer the refusal the decision carries. Everything leaves
through one :class:`Reply`, and an unexpected error still gets a JSON answer with its
``x-request-id`` (docs/behaviour.md).
"""

from __future__ import annotations

import logging
import re
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

from multidict import CIMultiDict

from gateway.accesslog import RequestRecord, current_request
from gateway.audit import AuditLog
from gateway.authclient import BackendUnavailable
from gateway.cors import CorsPolicy, is_preflight, without_upstream_cors
from gateway.csrf import SAFE_METHODS, CsrfGuard
from gateway.endpoints import Endpoints
from gateway.guest import GuestLimited
from gateway.limits import RequestLimits
from gateway.login import LoginCapture, Logout
from gateway.owncookies import OwnCookies
from gateway.paths import EncodedSeparator, InvalidPath, read_path
from gateway.proxy import InvalidHeader, Upstream, upstream_headers
from gateway.redirects import is_browser_navigation, login_location, unauthenticated_answer
from gateway.request import Request, TrustedProxies
from gateway.responses import Refusal, send_empty, send_error, send_redirect
from gateway.routes import Decision, Route, Router, decide
from gateway.session import Session, Sessions
from gateway.settings import Settings
from gateway.tokens import has_token_header, token_schemes
from gateway.types import Headers, Message, Receive, Scope, Send
from gateway.websocket import WebSocketRelay, as_handshake_answer

_log = logging.getLogger("gateway")


class Forward(Protocol):
    """The last step of an allowed request: the HTTP forwarder or the WebSocket relay."""

    async def __call__(self, request: Request, receive: Receive, send: Send, *,
                       headers: CIMultiDict[str], extra_response_headers: Headers = ()
                       ) -> None: ...


OutcomeKind = Literal["allow", "unauthenticated", "forbidden", "csrf", "unavailable",
                      "limited"]
WWW_AUTHENTICATE = (b"www-authenticate", b'Bearer realm="gateway"')
ENCODED_SEPARATOR = Refusal(400, "invalid_path", "An encoded slash or backslash (%2F, %5C) is "
                                                 "not allowed in the path.")
INVALID_PATH = Refusal(400, "invalid_path", "The request path is not acceptable.")
INTERNAL_ERROR = Refusal(500, "internal_error", "The gateway failed to handle this request; "
                                                "it has been logged under its x-request-id.")
_CLOSE = [(b"connection", b"close")]


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

    def refusal(self) -> Refusal:
        """The JSON error a refused outcome answers with (the proxy's and forward-auth's)."""
        if self.kind == "unauthenticated" or self.kind == "csrf":
            return Refusal(401 if self.kind == "unauthenticated" else 403, self.kind,
                           self.detail)
        return _REFUSALS[self.kind]

    def refusal_headers(self, headers: Headers) -> list[tuple[bytes, bytes]]:
        """``headers`` with what the refusal itself owes: ``Retry-After`` on a 429 or 503,
        ``WWW-Authenticate`` on a 401."""
        if self.kind == "limited" or self.kind == "unavailable":
            return [(b"retry-after", str(self.retry_after).encode("ascii")), *headers]
        if self.kind == "unauthenticated":
            return [WWW_AUTHENTICATE, *headers]
        return [*headers]

    async def answer(self, send: Send, *, head: bool) -> None:
        """The proxy's answer to a request it does not forward (forward-auth words it its
        own way: ``gateway/forward_auth.py``)."""
        if self.location is not None:  # a browser navigation: to the login page
            await send_redirect(send, self.location, self.response_headers)
            return
        await self.refusal().send(send, self.refusal_headers(self.response_headers),
                                  head=head)


_REFUSALS: dict[OutcomeKind, Refusal] = {
    "limited": Refusal(429, "too_many_requests",
                       "Too many new guest sessions; try again shortly."),
    "unavailable": Refusal(503, "auth_unavailable",
                           "The authentication service is unavailable; try again shortly."),
    "forbidden": Refusal(403, "forbidden", "You are not allowed to do this."),
}

_DETAIL = {
    "no_token": "Authentication is required.",
    "malformed_token": "The credentials are malformed.",
    "invalid_token": "The session is not valid; please log in again.",
    "session_expired": "The session has ended; please log in again.",
    "guest_token": "This needs a logged-in user; a guest session is not enough.",
}


class Reply:
    """The one way out of a request: every response start gets ``x-request-id`` (and, for an
    origin ``[cors]`` allows, the gateway's CORS headers instead of any the upstream sent), is
    counted by status and noted in the request's record with the bytes that follow."""

    __slots__ = ("_added", "_count", "_own_cors", "_record", "_send", "started")

    def __init__(self, send: Send, added: list[tuple[bytes, bytes]],
                 count: Callable[[int], None], record: RequestRecord, *,
                 own_cors: bool = False) -> None:
        self._send = send
        self._added = added
        self._count = count
        self._own_cors = own_cors
        self._record = record
        self.started = False

    async def __call__(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.body":
            self._record.bytes_sent += len(message.get("body", b""))
        elif kind == "http.response.start" or kind == "websocket.accept":
            headers = message.get("headers", ())
            if self._own_cors:
                headers = without_upstream_cors(headers)
            message["headers"] = [*headers, *self._added]
            status = message.get("status", 101)
            self._record.status = status
            self._count(status)
            self.started = True
        await self._send(message)

    async def failed(self, exc: Exception, request_id: str, *, head: bool) -> None:
        """The catch-all's answer to an error nobody foresaw: logged (:func:`log_unexpected`),
        then a JSON 500 if nothing was sent yet; after that, too late for an answer: the error
        goes on and the server cuts the response short."""
        log_unexpected(exc, request_id)
        if self.started:
            raise exc
        await INTERNAL_ERROR.send(self, head=head)


def log_unexpected(exc: Exception, request_id: str) -> None:
    """An unexpected error, logged without its message: a message may quote a token or a
    cookie value, which never reach a log line. Where it happened is enough to find it."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = " <- ".join(f"{f.filename.rsplit('/', 2)[-1]}:{f.lineno} {f.name}"
                        for f in reversed(frames[-6:]))
    _log.error("unexpected %s handling request %s at %s", type(exc).__name__, request_id,
               where)


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
        self._open_paths = frozenset({login.path, logout.path})
        self._scheme = settings.auth.scheme
        self._schemes = token_schemes(settings.auth.scheme)
        self._own_cookies = own_cookies
        self._csrf = csrf
        self._login = settings.login
        self._limits = RequestLimits(settings.server)
        self._allow_encoded_slash = settings.server.allow_encoded_slash

    async def websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A WebSocket handshake is checked like a GET; refusals are its HTTP answer."""
        if (await receive())["type"] != "websocket.connect":
            return
        await self({**scope, "method": "GET"}, receive, as_handshake_answer(send, scope),
                   self._websockets.forward)

    async def __call__(self, scope: Scope, receive: Receive, send: Send,
                       forward: Forward | None = None) -> None:
        """One request, forwarded (when allowed) by ``forward``: the HTTP forwarder unless
        this is a WebSocket handshake."""
        request = Request(scope, self._trusted)
        record = current_request()
        record.request_id = request.request_id
        record.client_ip = request.client_ip
        added = [(b"x-request-id", request.request_id.encode("ascii"))]
        cors = self._cors
        if cors is not None and cors.allows(request.origin):
            assert request.origin is not None
            added.extend(cors.response_headers(request.origin))
        reply = Reply(send, added, self._count, record, own_cors=cors is not None)
        try:
            await self._serve(request, receive, reply, record,
                              forward or self._upstream.forward)
        except Exception as exc:
            await reply.failed(exc, request.request_id, head=request.method == "HEAD")

    async def _serve(self, request: Request, receive: Receive, send: Send,
                     record: RequestRecord, forward: Forward) -> None:
        head = request.method == "HEAD"
        try:
            request.path, decoded = read_path(request.raw_path,
                                              allow_encoded_slash=self._allow_encoded_slash)
        except EncodedSeparator:
            await ENCODED_SEPARATOR.send(send, head=head)
            return
        except InvalidPath:
            await INVALID_PATH.send(send, head=head)
            return
        record.path = request.path
        own = self._endpoints.owns(request.path, request.scope)
        refusal = self._limits.refusal(request.scope, own_endpoint=own)
        if refusal is not None:  # head too large, too many headers, bad Host: docs/limits.md
            await refusal.send(send, _CLOSE, head=head)
        elif own:
            record.access = "gateway"
            await self._endpoints.handle(request.scope, send, request.path)
        elif is_preflight(request.method, request.headers):  # never needs a token
            record.access = "public"
            await self._preflight(request, receive, send)
        elif request.method == "POST" and request.path in self._open_paths:
            record.access = "public"  # reachable without a session whatever the routes say
            await self._login_or_logout(request, receive, send)
        else:
            route = self._router.match(request.method, request.path, decoded)
            record.access = route.access
            outcome = await self.check(request, route)
            if outcome.kind != "allow":
                await outcome.answer(send, head=head)
                return
            # What the upstream may see of the request and of its session (none on a public
            # route without credentials), built now that it goes.
            session, owed = outcome.session, outcome.response_headers
            try:
                headers = upstream_headers(
                    request, own_cookies=self._own_cookies,
                    token=session.token if session is not None else None,
                    identity=identity_headers(session, self._scheme) if session else ())
            except InvalidHeader as exc:
                await send_error(send, 400, "invalid_header", str(exc), owed, head=head)
                return
            await forward(request, receive, send, headers=headers, extra_response_headers=owed)

    async def check(self, request: Request, route: Route) -> Outcome:
        """The gateway's decision on one request: refuse it cross-site (gateway/csrf.py),
        resolve its session (validation, refresh, guest issuance) and apply ``route``. Emits
        the audit events of a refusal; answers nothing. The proxy path forwards or refuses on
        it, and forward-auth (``gateway/forward_auth.py``) reports it to the proxy in front
        (``request`` then reads the proxy's subrequest, which carries the client's headers,
        with the original request's method, path and query)."""
        headers = request.headers
        if ((request.method not in SAFE_METHODS or request.scope["type"] == "websocket")
                and request.has_cookies and self._own_cookies.present(headers)
                and not has_token_header(request.authorizations, self._schemes)):
            refusal = self._cross_site(request)
            if refusal is not None:
                return refusal
        if route.access == "public" and not request.has_credentials:
            return Outcome("allow")
        session: Session | None = None  # kept when guest issuance fails: it may clear cookies
        try:
            session = await self._sessions.resolve(request)
            if (session.identity is None and route.access == "guest"
                    and self._sessions.issues_guests):
                session = await self._sessions.issue_guest(session, request)
        except GuestLimited as exc:
            self._audit.emit("auth.denied", **request.fields(), outcome="limited",
                             reason="guest_rate_limited")
            return Outcome("limited", session,
                           [*(session.response_headers if session else ())],
                           retry_after=exc.retry_after)
        except BackendUnavailable as exc:
            self._audit.emit("auth.backend_unavailable", **request.fields(),
                             outcome="unavailable", reason=exc.reason,
                             token_fp=self._sessions.fingerprint(request))
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
            self._audit.emit("auth.denied", **request.fields(), outcome="forbidden",
                             reason="missing_role", user_id=identity.user_id,
                             token_fp=session.token_fp)
            return Outcome("forbidden", session, session.response_headers)
        return self._unauthenticated(request, route, session)

    async def _preflight(self, request: Request, receive: Receive, send: Send) -> None:
        if self._cors is None:
            # Forwarded for the app to answer, but with no credential of any kind (and, being
            # a preflight, no body): a token is never needed, so none is passed on.
            try:
                headers = upstream_headers(request, own_cookies=self._own_cookies,
                                           token=None, keep_no_cookie=True)
            except InvalidHeader as exc:
                await send_error(send, 400, "invalid_header", str(exc))
                return
            await self._upstream.forward(request, receive, send, headers=headers)
            return
        allowed = self._cors.preflight(request.origin, request.headers)
        if allowed is None:
            await send_error(send, 403, "cors_forbidden",
                             "This origin, method or header is not allowed.")
            return
        await send_empty(send, 204, allowed)

    async def _login_or_logout(self, request: Request, receive: Receive, send: Send) -> None:
        # Every login capture and logout is refused cross-site, cookie or not: a forged
        # login puts the attacker's session in the victim's browser.
        cross_site = self._cross_site(request)
        if cross_site is not None:
            await cross_site.answer(send, head=False)
            return
        if request.path == self._logout.path:
            await self._logout.handle(request, send)
            return
        try:
            headers = upstream_headers(request, own_cookies=self._own_cookies, token=None)
        except InvalidHeader as exc:
            await send_error(send, 400, "invalid_header", str(exc))
            return
        # The gateway must read the tokens in the reply: asked for uncompressed.
        headers["accept-encoding"] = "identity"
        attempt = self._login_capture.begin(request)
        await self._upstream.forward(request, receive, send, headers=headers,
                                     relay=attempt.relay, auth_endpoint="login")
        await attempt.finish(current_request().status)

    def _cross_site(self, request: Request) -> Outcome | None:
        """A ``csrf`` refusal (403) when the browser says the request comes from another site
        (gateway/csrf.py), else None."""
        if not self._csrf.enabled:
            return None
        reason = self._csrf.refusal(request.scope)
        if reason is None:
            return None
        origin, site = request.origin, request.sec_fetch_site
        self._audit.emit("auth.csrf_refused", **request.fields(), outcome="refused",
                         reason=reason,
                         origin=origin.decode("latin-1")[:200] if origin is not None else None,
                         sec_fetch_site=site.decode("latin-1")[:40] if site is not None else None,
                         token_fp=self._sessions.fingerprint(request))
        return Outcome("csrf", detail="Cross-site request refused: this request must come "
                                      "from the site itself.")

    def _unauthenticated(self, request: Request, route: Route, session: Session) -> Outcome:
        reason = "guest_token" if session.identity is not None else session.reason
        browser = is_browser_navigation(request.method, request.headers)
        answer = unauthenticated_answer(route, browser)
        self._audit.emit("auth.denied", **request.fields(), outcome="unauthenticated",
                         reason=reason, answer=answer, token_fp=session.token_fp,
                         user_id=session.identity.user_id if session.identity else None)
        location = None
        if answer == "redirect":
            location = login_location(self._login.url, self._login.return_param, request.path,
                                      request.query)
        return Outcome("unauthenticated", session, session.response_headers,
                       detail=_DETAIL.get(reason, _DETAIL["no_token"]), location=location)
