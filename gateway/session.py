"""Resolve a request's session: find its token, validate it, refresh it when needed.

The result, :class:`Session`, is what the handler needs to decide and to forward: the
identity (or why there is none), the token to send upstream, the headers the upstream should
see and the headers to add to the response (cookies, ``x-refreshed-token``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.accesslog import current_request
from gateway.audit import AuditLog, token_fp
from gateway.authclient import BackendUnavailable
from gateway.cookies import CookiePolicy
from gateway.guest import GuestIssuer
from gateway.refresh import Refresher
from gateway.request import Request
from gateway.settings import Settings
from gateway.tokens import (
    FoundToken,
    MalformedToken,
    token_schemes,
)
from gateway.validation import Identity, Validation, Validator
from gateway.vocabulary import SessionReason


@dataclass(slots=True)
class Session:
    identity: Identity | None = None
    token: str | None = None  # the valid token to forward as Authorization
    token_fp: str | None = None
    # Why there is no identity: no_token, malformed_token, invalid_token, session_expired.
    reason: SessionReason = "no_token"
    response_headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    upstream_headers: list[tuple[bytes, bytes]] = field(default_factory=list)


class Sessions:
    def __init__(self, settings: Settings, validator: Validator, refresher: Refresher,
                 guests: GuestIssuer, cookies: CookiePolicy, audit: AuditLog) -> None:
        self._cookie_settings = settings.cookies
        self._schemes = token_schemes(settings.auth.scheme)
        self._validator = validator
        self._refresher = refresher
        self._guests = guests
        self._cookies = cookies
        self._audit = audit

    @property
    def issues_guests(self) -> bool:
        return self._guests.enabled

    async def issue_guest(self, session: Session, request: Request) -> Session:
        """Give an anonymous request on a guest route a new guest session (kept: the cookies
        a cleared session must still clear). Raises :class:`GuestLimited` or
        :class:`BackendUnavailable`."""
        guest = await self._guests.issue(request.client_ip)
        fp = token_fp(guest.token)
        self._audit.emit("auth.guest_issued", **request.fields(), outcome="issued",
                         user_id=guest.identity.user_id, token_fp=fp,
                         mode="local" if self._guests.local else "backend")
        return Session(identity=guest.identity,
                       token=guest.token if guest.forward_token else None,
                       token_fp=fp, reason="",
                       response_headers=[*session.response_headers,
                                         self._cookies.set("guest", guest.token)])

    async def resolve(self, request: Request) -> Session:
        """Raises :class:`BackendUnavailable` when the backend gives no verdict."""
        reason: SessionReason = "no_token"
        try:
            found = request.token(self._cookie_settings, self._schemes)
        except MalformedToken:
            found, reason = None, "malformed_token"
        current: Session | None = None
        if found is not None:
            current = await self._validate(found, request)
            if self._is_guest(found):
                return current  # guest tokens are reissued, never refreshed
            if current.identity is not None:
                if self._refresher.due(found.value):
                    credential = self._credential(found, request)
                    if credential:
                        return await self._refresh(credential, found, request, current)
                return current
        credential = self._credential(found, request)
        if credential is None:
            session = current or Session(reason=reason)
        else:
            session = await self._refresh(credential, found, request, None)
        if session.identity is None and found is not None and found.source != "guest_cookie":
            return await self._guest_cookie(session, request)
        return session

    async def _guest_cookie(self, session: Session, request: Request) -> Session:
        """A dead user token shadows the guest cookie (3.1's order): once it is known to be
        dead, a valid guest cookie is still the visitor's, to be reused rather than replaced
        on every request."""
        value = request.cookies().get(self._cookie_settings.guest)
        if not value:
            return session
        guest = await self._validate(FoundToken(value, "guest_cookie"), request)
        if guest.identity is None:
            return session
        return Session(identity=guest.identity, token=guest.token, token_fp=guest.token_fp,
                       reason="", response_headers=session.response_headers)

    def fingerprint(self, request: Request) -> str | None:
        """``token_fp`` of the request's token, for events raised before a session exists."""
        try:
            found = request.token(self._cookie_settings, self._schemes)
        except MalformedToken:
            return None
        return found.fp if found is not None else None

    def _credential(self, found: FoundToken | None, request: Request) -> str | None:
        if self._refresher.uses_refresh_token:
            return request.cookies().get(self._cookie_settings.refresh) or None
        return found.value if found is not None and not self._is_guest(found) else None

    def _is_guest(self, found: FoundToken) -> bool:
        """The guest cookie, or (local mode) a token that says it is a local guest token
        wherever it was sent: checked by the gateway alone, never refreshed."""
        if found.source == "guest_cookie":
            return True
        if not self._guests.local:
            return False
        claims = found.claims()
        return claims is not None and claims.get("typ") == "guest"

    async def _validate(self, found: FoundToken, request: Request) -> Session:
        fp = found.fp
        if self._guests.local and self._is_guest(found):
            result = Validation(self._guests.validate_local(found.value), "miss", local=True)
        else:
            result = await self._validator.validate(found)
        current_request().note_cache(result.cache)
        identity = result.identity
        outcome = "valid" if identity else "invalid"
        if result.cache == "hit" and not self._audit.writes_cache_hits:
            self._audit.count("auth.validated", outcome)  # most requests: counted, not written
        else:
            self._audit.emit(
                "auth.validated", **request.fields(), outcome=outcome,
                cache=result.cache, token_fp=fp,
                user_id=identity.user_id if identity else None,
                token_type=identity.token_type if identity else None,
                source=found.source, check="local" if result.local else "backend",
            )
        if identity is None:
            return Session(token_fp=fp, reason="invalid_token")
        forward = not (self._guests.local and identity.token_type == "guest")
        return Session(identity=identity, token=found.value if forward else None, token_fp=fp,
                       reason="")

    async def _identify(self, access: str, via: str) -> Identity | None:
        """Who a refreshed token belongs to when the refresh could not say: a grace entry
        written during a validate outage gets a second chance; the refresh that just failed
        to check it does not (its retries are spent)."""
        if via != "grace":
            return None
        try:
            return (await self._validator.validate(FoundToken(access, "cookie"))).identity
        except BackendUnavailable:
            return None

    async def _refresh(self, credential: str, found: FoundToken | None, request: Request,
                       current: Session | None) -> Session:
        """Refresh with ``credential``; ``current`` is the still-valid session when this is a
        proactive refresh, whose failure then costs nothing: the old token is forwarded."""
        old_fp = token_fp(credential)
        proactive = current is not None
        try:
            result = await self._refresher.refresh(credential)
        except BackendUnavailable as exc:
            self._audit.emit("auth.refresh_failed", **request.fields(), outcome="unavailable",
                             reason=exc.reason, token_fp=old_fp, proactive=proactive)
            if current is not None:
                return current
            raise
        refreshed = result.refreshed
        if refreshed is None:
            self._audit.emit("auth.refresh_failed", **request.fields(), outcome="rejected",
                             reason="rejected", status=result.status, token_fp=old_fp,
                             proactive=proactive)
            if current is not None:
                return current
            # token_fp is the refresh credential's; access_token_fp (when it differs) lets a
            # reader find who this was from earlier events of that access token (docs/audit.md).
            access_fp = found.fp if found is not None else None
            self._audit.emit("auth.session_cleared", **request.fields(), outcome="cleared",
                             reason="refresh_rejected", token_fp=old_fp,
                             access_token_fp=access_fp if access_fp != old_fp else None)
            return Session(token_fp=old_fp, reason="session_expired",
                           response_headers=self._cookies.clear_session())
        new_fp = token_fp(refreshed.access)
        response = [self._cookies.set("access", refreshed.access)]
        if refreshed.refresh is not None:
            response.append(self._cookies.set("refresh", refreshed.refresh))
        response.extend((b"set-cookie", c.encode("latin-1")) for c in refreshed.set_cookies)
        new_token = refreshed.access.encode("ascii")
        if found is not None and found.source == "header":
            response.append((b"x-refreshed-token", new_token))
        identity = refreshed.identity or await self._identify(refreshed.access, result.via)
        self._audit.emit("auth.refreshed", **request.fields(), outcome="refreshed",
                         via=result.via, proactive=proactive, token_fp=old_fp,
                         new_token_fp=new_fp, user_id=identity.user_id if identity else None,
                         rotated=refreshed.refresh is not None)
        if identity is None:
            # Refreshed, but the new token could not be checked: a 503 that still hands the
            # client its new tokens (the old credential may be spent), never a logout.
            raise BackendUnavailable("backend_error", "the refreshed token could not be checked",
                                     headers=response)
        return Session(identity=identity, token=refreshed.access, token_fp=new_fp,
                       reason="", response_headers=response,
                       upstream_headers=[(b"x-refreshed-token", new_token)])
