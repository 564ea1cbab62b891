"""Login capture and logout (docs/behaviour.md#login-and-logout).

* Login: ``POST <auth.login.path>`` is forwarded; a 2xx JSON reply carrying the tokens has them
  put in HttpOnly cookies (and, with ``strip_tokens``, removed from the body the browser sees),
  and the guest cookie removed. Other replies pass through unchanged; a reply that is not 2xx
  is audited as ``auth.login_failed``. The new access token is then validated once, so that
  ``auth.login`` names the user the way every other event does (the login replies of backends
  differ, and SimpleJWT's has no user at all) and the browser's next request finds the
  validation cached (docs/audit.md#authlogin).
* Logout: ``POST <auth.logout.path>`` is answered by the gateway: it asks the backend to revoke
  the session (a failure is logged, not shown), clears all three cookies and forgets the tokens.
"""

from __future__ import annotations

import json
import zlib
from typing import Any

import aiohttp

from gateway.accesslog import current_request
from gateway.audit import AuditLog, token_fp
from gateway.authclient import AuthClient, BackendUnavailable, dig
from gateway.cookies import CookiePolicy
from gateway.proxy import CHUNK, pump
from gateway.redirects import is_browser_navigation
from gateway.refresh import Refresher
from gateway.request import Request
from gateway.responses import send_empty, send_error, send_redirect
from gateway.settings import Settings
from gateway.tokens import (
    FoundToken,
    MalformedToken,
    is_token,
    token_schemes,
)
from gateway.types import Send
from gateway.validation import Validator


def _drop(document: Any, dotted: str) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        if not isinstance(document, dict):
            return
        document = document.get(part)
    if isinstance(document, dict):
        document.pop(last, None)


class LoginAttempt:
    """One login request: :meth:`relay` is the ``relay`` hook of
    :meth:`gateway.proxy.Upstream.forward` (it sees the backend's reply before the client
    does, so the audit event is written before the answer leaves), then :meth:`finish` with
    the status the client got covers replies the rewrite never saw (a 502 from the gateway,
    a reply too large to read)."""

    def __init__(self, capture: LoginCapture, request: Request) -> None:
        self._capture = capture
        self._info = request
        self._reported = False

    async def relay(self, response: aiohttp.ClientResponse, send: Send,
                    upstream: list[tuple[bytes, bytes]], own: list[tuple[bytes, bytes]]
                    ) -> bool:
        """The backend's reply to the login, read whole (with or without Content-Length and
        whatever its content type, decoded from gzip or deflate) if it is at most 1 MiB both
        as sent and decoded, and sent on with the tokens moved into cookies
        (:meth:`rewrite`). False for a larger or undecodable reply: the proxy relays it as it
        came (:meth:`finish` still reports its status)."""
        if not _rewritable(response):
            return False
        buffer = bytearray()
        try:
            async for chunk in response.content.iter_chunked(CHUNK):
                buffer += chunk
                if len(buffer) > _REWRITE_LIMIT:  # too big to be a login reply: pass it on
                    await send({"type": "http.response.start", "status": response.status,
                                "headers": [*upstream, *own]})
                    await send({"type": "http.response.body", "body": bytes(buffer),
                                "more_body": True})
                    await pump(response, send)
                    return True
        except (aiohttp.ClientError, OSError, TimeoutError):
            await send_error(send, 502, "upstream_error",
                             "The upstream response was cut short.", own)
            return True
        raw = bytes(buffer)
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        decoded = raw if encoding == "identity" else _decompressed(raw, encoding)
        added, payload = (await self.rewrite(response.status, decoded) if decoded is not None
                          else ([], raw))
        if not added:  # not a login reply with tokens: the upstream's bytes, untouched
            await send({"type": "http.response.start", "status": response.status,
                        "headers": [*upstream, *own]})
            await send({"type": "http.response.body", "body": raw})
            return True
        headers = [(k, v) for k, v in upstream
                   if k not in (b"content-length", b"content-encoding")]
        headers.append((b"content-length", str(len(payload)).encode("latin-1")))
        headers.extend(own)
        headers.extend(added)
        await send({"type": "http.response.start", "status": response.status,
                    "headers": headers})
        await send({"type": "http.response.body", "body": payload})
        return True

    async def rewrite(self, status: int, body: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
        if not 200 <= status < 300:
            self._failed(status)
            return [], body
        capture, settings = self._capture, self._capture.settings
        try:
            document = json.loads(body)
        except (ValueError, RecursionError):  # not JSON, or nested deeper than parsable
            return [], body
        access = dig(document, settings.access_path)
        if not isinstance(access, str) or not access:
            return [], body
        refresh = dig(document, settings.refresh_path) if settings.refresh_path else None
        self._reported = True
        if not is_token(access) or (refresh and not is_token(refresh)):
            # "a; Domain=evil" would add cookie attributes: no cookie from such a value.
            capture.audit.emit("auth.login", **self._info.fields(), outcome="refused",
                               reason="unusable_token")
            return [], body
        added = [capture.cookies.set("access", access)]
        if isinstance(refresh, str) and refresh:
            added.append(capture.cookies.set("refresh", refresh))
        added.append(capture.cookies.clear("guest"))
        user_id = await capture.user_id(access)
        current_request().user_id = user_id
        capture.audit.emit("auth.login", **self._info.fields(), outcome="ok",
                           token_fp=token_fp(access), user_id=user_id)
        if settings.strip_tokens:
            _drop(document, settings.access_path)
            if settings.refresh_path:
                _drop(document, settings.refresh_path)
            body = json.dumps(document, separators=(",", ":")).encode("utf-8")
        return added, body

    async def finish(self, status: int) -> None:
        if status and not 200 <= status < 300:  # 0: the client left before any answer
            self._failed(status)

    def _failed(self, status: int) -> None:
        if not self._reported:
            self._reported = True
            self._capture.audit.emit("auth.login_failed", **self._info.fields(),
                                     outcome="rejected" if status < 500 else "error",
                                     status=status)


class LoginCapture:
    def __init__(self, settings: Settings, cookies: CookiePolicy, audit: AuditLog,
                 validator: Validator | None = None) -> None:
        self.path = settings.auth.login.path
        self.settings = settings.auth.login
        self.cookies = cookies
        self.audit = audit
        self._validator = validator

    def begin(self, request: Request) -> LoginAttempt:
        return LoginAttempt(self, request)

    async def user_id(self, access: str) -> str | None:
        """Who logged in, as validation says (and cached for the next request); None when
        the backend cannot say right now: the login itself has succeeded either way."""
        if self._validator is None:
            return None
        try:
            identity = (await self._validator.validate(FoundToken(access, "cookie"))).identity
        except BackendUnavailable:
            return None
        return identity.user_id if identity is not None else None


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

    async def handle(self, request: Request, send: Send) -> None:
        jar = request.cookies()
        try:
            found = request.token(self._cookie_settings, self._schemes)
        except MalformedToken:
            found = None
        access = found.value if found is not None and found.source != "guest_cookie" else None
        refresh = jar.get(self._cookie_settings.refresh) or None
        revoked = await self._revoke(access, refresh, request)
        for token in (access, refresh):
            if token:
                await self._validator.forget(token)
                await self._refresher.forget(token)
        self._audit.emit("auth.logout", **request.fields(), outcome="ok", revoked=revoked,
                         token_fp=token_fp(access) if access else None)
        cleared = self._cookies.clear_all()
        # A logout form POST is a navigation too: judge it by its headers as a GET would be.
        if is_browser_navigation("GET", request.headers):
            await send_redirect(send, "/", cleared)
        else:
            await send_empty(send, 204, cleared)

    async def _revoke(self, access: str | None, refresh: str | None, request: Request) -> str:
        send = self._settings.send
        credential = access if send == "access_header" else refresh
        if not credential:
            return "skipped"
        try:
            reply = await self._client.post_credential(
                self._backend_path, credential, send=send, scheme=self._scheme,
                body_field=self._settings.body_field, cookie=self._cookie_settings.refresh,
                endpoint="logout")
        except BackendUnavailable as exc:
            self._audit.emit("auth.backend_unavailable", **request.fields(),
                             outcome="revoke_failed", reason=exc.reason)
            return "failed"
        return "ok" if reply.ok else f"status_{reply.status}"


# -- reading a login reply: bounded, decompressed ------------------------------------------

_REWRITE_LIMIT = 1024 * 1024
# zlib wbits: gzip only, or zlib-wrapped deflate ("deflate" as most servers send it).
_DECODERS = {"gzip": 31, "x-gzip": 31, "deflate": 15}


def _rewritable(response: aiohttp.ClientResponse) -> bool:
    """Small enough to hold, and in an encoding the gateway can read. The content type is not
    trusted: a login reply labelled text/plain still carries tokens to keep from scripts."""
    length = response.content_length
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    return (length is None or length <= _REWRITE_LIMIT) and (
        encoding == "identity" or encoding in _DECODERS)


def _decompressed(raw: bytes, encoding: str) -> bytes | None:
    """The whole decoded body if it is at most ``_REWRITE_LIMIT`` bytes (no zip bombs), else
    None. "deflate" is read with its zlib wrapper or, as some servers send it, without."""
    wbits = _DECODERS.get(encoding)
    if wbits is None:
        return None
    out = _inflate(raw, wbits)
    if out is None and wbits == 15:
        out = _inflate(raw, -15)
    return out


def _inflate(raw: bytes, wbits: int) -> bytes | None:
    """Every gzip member (a gzip body may hold several) or the one deflate stream, never
    more than ``_REWRITE_LIMIT`` bytes of output; None if truncated, too big or trailed by
    anything else."""
    out = bytearray()
    rest = raw
    while True:
        decoder = zlib.decompressobj(wbits)
        try:
            # max_length 0 would mean no limit: the room left is always at least 1 here.
            out += decoder.decompress(rest, _REWRITE_LIMIT + 1 - len(out))
        except zlib.error:
            return None
        if len(out) > _REWRITE_LIMIT or not decoder.eof:
            return None
        rest = decoder.unused_data
        if not rest:
            return bytes(out)
        if wbits != 31:
            return None
