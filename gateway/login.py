"""Login capture and logout (CONTRACT.md §3.6).

* Login: ``POST <auth.login.path>`` is forwarded; a 2xx JSON reply carrying the tokens has them
  put in HttpOnly cookies (and, with ``strip_tokens``, removed from the body the browser sees),
  and the guest cookie removed. Other replies pass through unchanged.
* Logout: ``POST <auth.logout.path>`` is answered by the gateway: it asks the backend to revoke
  the session (a failure is logged, not shown), clears all three cookies and forgets the tokens.
"""

from __future__ import annotations

import json
from typing import Any

from gateway.audit import AuditLog, token_fp
from gateway.authclient import AuthClient, BackendUnavailable, dig
from gateway.cookies import CookiePolicy
from gateway.refresh import Refresher
from gateway.responses import send_empty, send_redirect
from gateway.routes import is_browser_navigation
from gateway.session import RequestInfo
from gateway.settings import Settings
from gateway.tokens import MalformedToken, find_token, is_token, request_cookies, token_schemes
from gateway.types import Headers, Send
from gateway.validation import Validator


def _drop(document: Any, dotted: str) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        if not isinstance(document, dict):
            return
        document = document.get(part)
    if isinstance(document, dict):
        document.pop(last, None)


class LoginCapture:
    def __init__(self, settings: Settings, cookies: CookiePolicy, audit: AuditLog) -> None:
        self.path = settings.auth.login.path
        self._settings = settings.auth.login
        self._cookies = cookies
        self._audit = audit

    def rewriter(self, info: RequestInfo) -> Any:
        """The ``rewrite`` callback for :meth:`gateway.proxy.Upstream.forward`."""

        def rewrite(status: int, body: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
            if not 200 <= status < 300:
                return [], body
            try:
                document = json.loads(body)
            except (ValueError, RecursionError):  # not JSON, or nested deeper than parsable
                return [], body
            access = dig(document, self._settings.access_path)
            if not isinstance(access, str) or not access:
                return [], body
            refresh = (dig(document, self._settings.refresh_path)
                       if self._settings.refresh_path else None)
            if not is_token(access) or (refresh and not is_token(refresh)):
                # "a; Domain=evil" would add cookie attributes: no cookie from such a value.
                self._audit.emit("auth.login", **info.fields(), outcome="refused",
                                 reason="unusable_token")
                return [], body
            added = [self._cookies.set("access", access)]
            if isinstance(refresh, str) and refresh:
                added.append(self._cookies.set("refresh", refresh))
            added.append(self._cookies.clear("guest"))
            self._audit.emit("auth.login", **info.fields(), outcome="ok",
                             token_fp=token_fp(access))
            if self._settings.strip_tokens:
                _drop(document, self._settings.access_path)
                if self._settings.refresh_path:
                    _drop(document, self._settings.refresh_path)
                body = json.dumps(document, separators=(",", ":")).encode("utf-8")
            return added, body

        return rewrite


class Logout:
    def __init__(self, settings: Settings, client: AuthClient, validator: Validator,
                 refresher: Refresher, cookies: CookiePolicy, audit: AuditLog) -> None:
        self.path = settings.auth.logout.path
        self._settings = settings.auth.logout
        self._backend_path = settings.auth.logout.backend_path or settings.auth.logout.path
        self._cookie_settings = settings.cookies
        self._scheme = settings.auth.scheme
        self._schemes = token_schemes(settings.auth.scheme)
        self._client = client
        self._validator = validator
        self._refresher = refresher
        self._cookies = cookies
        self._audit = audit

    async def handle(self, headers: Headers, send: Send, info: RequestInfo) -> None:
        jar = request_cookies(headers)
        try:
            found = find_token(headers, self._cookie_settings, jar, self._schemes)
        except MalformedToken:
            found = None
        access = found.value if found is not None and found.source != "guest_cookie" else None
        refresh = jar.get(self._cookie_settings.refresh) or None
        revoked = await self._revoke(access, refresh, info)
        for token in (access, refresh):
            if token:
                await self._validator.forget(token)
                await self._refresher.forget(token)
        self._audit.emit("auth.logout", **info.fields(), outcome="ok", revoked=revoked,
                         token_fp=token_fp(access) if access else None)
        cleared = self._cookies.clear_all()
        # A logout form POST is a navigation too: judge it by its headers as a GET would be.
        if is_browser_navigation("GET", headers):
            await send_redirect(send, "/", cleared)
        else:
            await send_empty(send, 204, cleared)

    async def _revoke(self, access: str | None, refresh: str | None, info: RequestInfo) -> str:
        send = self._settings.send
        credential = access if send == "access_header" else refresh
        if not credential:
            return "skipped"
        try:
            reply = await self._client.post_credential(
                self._backend_path, credential, send=send, scheme=self._scheme,
                body_field=self._settings.body_field, cookie=self._cookie_settings.refresh)
        except BackendUnavailable as exc:
            self._audit.emit("auth.backend_unavailable", **info.fields(), outcome="revoke_failed",
                             reason=exc.reason)
            return "failed"
        return "ok" if reply.ok else f"status_{reply.status}"
