"""The live part of ``gateway doctor``: a test session driven through the gateway's own calls.

It logs the test account in, validates, refreshes, re-sends the used credential (to see
whether the backend blacklists it) and logs out, with the same :class:`AuthClient` (retries,
timeouts), the same ``send`` styles (:meth:`AuthClient.post_credential`), the same dotted
paths (:func:`dig`), user mapping (:func:`identity_from_user`) and token checks
(:func:`is_token`, :func:`jwt_claims`) the gateway uses on every request. Every token it
holds is added to ``secrets`` so the report redacts it (``gateway/doctor/report.py``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

from gateway.authclient import AuthClient, AuthReply, BackendUnavailable, dig
from gateway.doctor import shape
from gateway.doctor.report import Check, failed, names, passed, skipped, warned
from gateway.doctor.rules import ClockReading, least_offset
from gateway.refresh import REJECTED_STATUSES
from gateway.settings import Settings
from gateway.tokens import MAX_TOKEN_LENGTH, is_token, jwt_claims
from gateway.validation import Identity, identity_from_user

AUTO = "auto"  # --login-field default: the login name under both "email" and "username"
_SCHEMES = ("Bearer", "JWT", "Token")  # what backends put before the token, most common first
RefreshFrom = Literal["body", "cookie"]


@dataclass(slots=True)
class Session:
    """The test session's current tokens (never printed)."""

    access: str
    refresh: str | None
    refresh_from: RefreshFrom | None
    clock: ClockReading

    def credential(self, send: str) -> str | None:
        """What a refresh (or logout) presents with this ``send`` style."""
        return self.access if send == "access_header" else self.refresh


@dataclass(slots=True)
class Probe:
    settings: Settings
    client: AuthClient
    username: str
    password: str
    login_field: str = AUTO  # or the JSON key that carries the login name
    secrets: set[str] = field(default_factory=set)
    checks: list[Check] = field(default_factory=list)
    # what later checks read
    session: Session | None = None
    refreshed: Session | None = None
    rotated: bool | None = None

    def __post_init__(self) -> None:
        self.secrets.add(self.password)

    def _keep(self, *tokens: str | None) -> None:
        self.secrets.update(t for t in tokens if t)

    # ------------------------------------------------------------------ reachable

    async def reachable(self, upstream: AuthClient | None) -> bool:
        path = self.settings.auth.validate.path
        url = self.settings.auth_url
        try:
            reply = await self.client.call("GET", path)
        except BackendUnavailable as exc:
            what = "answers 5xx" if exc.reason == "backend_error" else "cannot be reached"
            self.checks.append(failed(
                "reachable", f"the auth backend at {url} {what} ({exc}) on GET {path}",
                "start the backend, or fix auth.url (or upstream.url when auth.url is empty); "
                f"from this host try: curl -i {url}{path}"))
            return False
        told = f"auth backend {url} answers (GET {path} without a token: {reply.status})"
        if upstream is not None and not await upstream.probe("/"):
            self.checks.append(failed(
                "reachable", f"{told}, but the upstream {self.settings.upstream.url} does not "
                "answer GET / (no reply or 5xx)",
                "start the app behind the gateway, or fix upstream.url"))
            return True
        if upstream is not None:
            told += f"; upstream {self.settings.upstream.url} answers"
        self.checks.append(passed("reachable", told))
        return True

    # ------------------------------------------------------------------ login

    def _bodies(self) -> list[dict[str, str]]:
        """Login bodies to try. ``auto``: the username under both ``email`` and ``username``
        (next-api-layer and Express read ``email``, SimpleJWT its USERNAME_FIELD, and they
        ignore the other), then, if that is refused as malformed, under the one key its shape
        suggests. An explicit ``--login-field`` is used alone."""
        p = self.password
        if self.login_field != AUTO:
            return [{self.login_field: self.username, "password": p}]
        guess = "email" if "@" in self.username else "username"
        return [{"email": self.username, "username": self.username, "password": p},
                {guess: self.username, "password": p}]

    async def login(self) -> None:
        lg = self.settings.auth.login
        if not lg.path:
            self.checks.append(failed(
                "login", "auth.login.path is empty: the doctor needs the backend's login "
                "endpoint to get a test session (the gateway uses it to capture logins)",
                'set [auth.login] path, e.g. "/auth/login" (next-api-layer), '
                '"/auth/jwt/create/" (SimpleJWT), "/api/auth/login" (Express)'))
            return
        reply: AuthReply | None = None
        sent_keys: list[str] = []
        sent_at = received_at = 0.0
        for body in self._bodies():
            sent_keys = sorted(body)
            sent_at = time.time()
            try:
                reply = await self.client.call("POST", lg.path, json_body=body)
            except BackendUnavailable as exc:
                self.checks.append(failed("login", f"POST {lg.path} got no answer ({exc})",
                                          "check that the backend runs and auth.login.path"))
                return
            received_at = time.time()
            if reply.status not in (400, 422):
                break
        assert reply is not None
        self._keep(*shape.token_values(reply.body))
        sent = f"POST {lg.path} with JSON keys {', '.join(sent_keys)}"
        if reply.status in (404, 405):
            self.checks.append(failed("login", f"{sent} answered {reply.status}: no login "
                                      "endpoint there", "fix auth.login.path"))
            return
        if reply.status in (401, 403):
            self.checks.append(failed(
                "login", f"{sent} answered {reply.status}: the test account was refused",
                "check --username and the password in the --password-env variable; if the "
                "backend reads the login under another key, pass --login-field NAME"))
            return
        if not reply.ok:
            self.checks.append(failed(
                "login", f"{sent} answered {reply.status}; reply keys: "
                f"{names(shape.key_paths(reply.body))}",
                "pass --login-field NAME with the key your login form sends (e.g. email)"))
            return
        access = dig(reply.body, lg.access_path)
        if not self._token_found("login", "auth.login.access_path", lg.access_path, access,
                                 reply, sent):
            return
        assert isinstance(access, str)
        refresh, refresh_from, where = self._login_refresh(reply)
        usable = refresh is None or is_token(refresh)
        # Validation, lifetimes and clocks still need only the access token: go on with it.
        self.session = Session(access, refresh if usable else None, refresh_from,
                               ClockReading(sent_at, received_at, reply.date,
                                            _iat(jwt_claims(access))))
        uses_refresh = self.settings.auth.refresh.send != "access_header"
        if refresh is None and uses_refresh:
            self.checks.append(self._no_refresh(reply, sent))
            return
        if not usable:
            self.checks.append(failed("login", f"{sent}: the refresh token {where} is not a "
                                      "token the gateway can keep in a cookie", _UNUSABLE))
            return
        found = f"access token at {lg.access_path}" + (f", refresh token {where}" if refresh
                                                       else "")
        self.checks.append(passed("login", f"{sent} answered {reply.status}; {found}"))

    def _login_refresh(self, reply: AuthReply) -> tuple[str | None, RefreshFrom | None, str]:
        lg = self.settings.auth.login
        if lg.refresh_path:
            value = dig(reply.body, lg.refresh_path)
            if isinstance(value, str) and value:
                return value, "body", f"at {lg.refresh_path}"
        cookie = self.settings.cookies.refresh
        value = shape.set_cookie_value(reply.set_cookies, cookie)
        if value:
            self._keep(value)
            return value, "cookie", f"in the backend's Set-Cookie {cookie}"
        return None, None, ""

    def _no_refresh(self, reply: AuthReply, sent: str) -> Check:
        lg = self.settings.auth.login
        send = self.settings.auth.refresh.send
        at = (f"nothing at auth.login.refresh_path = {lg.refresh_path!r}" if lg.refresh_path
              else "auth.login.refresh_path is empty")
        cookies = names(shape.set_cookie_names(reply.set_cookies))
        candidates = [p for p in shape.token_paths(reply.body) if p != lg.access_path]
        in_cookies = shape.token_cookie_names(reply.set_cookies)
        if candidates:
            fix = f"set auth.login.refresh_path = {candidates[0]!r}"
        elif in_cookies:
            fix = f"set cookies.refresh = {in_cookies[0]!r} (the backend's refresh cookie)"
        else:
            fix = ("set cookies.refresh to the name of the backend's refresh cookie, or "
                   "auth.login.refresh_path to where the reply carries it")
        return failed("login", f"{sent}: send = {send!r} needs a refresh token, but {at} and no "
                      f"Set-Cookie named {self.settings.cookies.refresh!r} (cookies set: "
                      f"{cookies}; token-like values at: {names(candidates)})", fix)

    def _token_found(self, check_id: Literal["login", "refresh"], key: str, path: str,
                     value: Any, reply: AuthReply, sent: str) -> bool:
        """Whether ``value`` (read at ``path``) is a usable token; else add a failed check
        naming the keys the reply did contain (never their values)."""
        if is_token(value):
            return True
        if isinstance(value, str) and value:
            self.checks.append(failed(check_id, f"{sent}: the value at {key} = {path!r} is not "
                                      "a token the gateway can keep in a cookie", _UNUSABLE))
            return False
        candidates = shape.token_paths(reply.body)
        fix = (f"set {key} = {candidates[0]!r}" if candidates else
               f"point {key} at the token in the reply")
        self.checks.append(failed(
            check_id, f"{sent} answered {reply.status}, but there is no token at {key} = "
            f"{path!r}; the reply has keys: {names(shape.key_paths(reply.body))}; token-like "
            f"values at: {names(candidates)}", fix))
        return False

    # ------------------------------------------------------------------ validate

    async def _identify(self, token: str, scheme: str | None = None
                        ) -> tuple[AuthReply, Identity | None]:
        """The gateway's validation call (``Validator._ask_backend``) without its cache."""
        v = self.settings.auth.validate
        reply = await self.client.call(
            v.method.upper(), v.path,
            headers={"authorization": f"{scheme or self.settings.auth.scheme} {token}"})
        identity = None
        if reply.ok and reply.body is not None:
            identity = identity_from_user(dig(reply.body, v.user_path), id_field=v.id_field,
                                          roles_field=v.roles_field, token_type="user")
        return reply, identity

    async def validate(self) -> None:
        if self.session is None:
            self.checks.append(skipped("validate", "needs a login"))
            return
        v = self.settings.auth.validate
        sent = f"{v.method.upper()} {v.path} with {self.settings.auth.scheme} <token>"
        try:
            reply, identity = await self._identify(self.session.access)
        except BackendUnavailable as exc:
            self.checks.append(failed("validate", f"{sent}: no answer ({exc}); the gateway "
                                      "would answer 503 to every request", _BACKEND))
            return
        if reply.status in (401, 403):
            self.checks.append(await self._refused(sent, reply.status))
            return
        if not reply.ok or reply.body is None:
            what = "without JSON" if reply.ok else ""
            self.checks.append(failed(
                "validate", f"{sent} answered {reply.status} {what}".rstrip() + " for a fresh "
                "login: the gateway reads that as no verdict (503)",
                "fix auth.validate.path and method; it must answer 2xx JSON with the user"))
            return
        if identity is None:
            self.checks.append(self._no_user(sent, reply))
            return
        roles = f"roles {list(identity.roles)}" if identity.roles else (
            f"no roles at roles_field = {v.roles_field!r}")
        needs_roles = any(r.roles for r in self.settings.routes)
        told = f"{sent} answered {reply.status}; user id at {v.id_field!r}, {roles}"
        if not identity.roles and needs_roles:
            user = dig(reply.body, v.user_path)
            self.checks.append(warned(
                "validate", f"{told}, but some routes require roles: this user gets 403 there "
                f"(user keys: {names(shape.key_paths(user))})",
                "point auth.validate.roles_field at the user's roles, or expose them"))
            return
        self.checks.append(passed("validate", told))

    async def _refused(self, sent: str, status: int) -> Check:
        assert self.session is not None
        for scheme in _SCHEMES:
            if scheme == self.settings.auth.scheme:
                continue
            try:
                reply, _ = await self._identify(self.session.access, scheme)
            except BackendUnavailable:
                break
            if reply.ok:
                return failed("validate", f"{sent} answered {status} for a fresh login, but "
                              f"{scheme} <token> is accepted", f"set auth.scheme = {scheme!r}")
        return failed("validate", f"{sent} answered {status} for the token login just "
                      f"issued{self._clock_hint()}",
                      "check auth.validate.path and auth.scheme (what the backend expects "
                      "before the token in Authorization)")

    def _clock_hint(self) -> str:
        """A refused fresh token may be the clocks' fault: say so when they disagree."""
        bounds = self.session.clock.from_iat() if self.session is not None else None
        if bounds is None or abs(least_offset(bounds)) <= self.settings.auth.refresh.clock_skew_s:
            return ""
        return " (the backend's clock is off: see clock_skew)"

    def _no_user(self, sent: str, reply: AuthReply) -> Check:
        v = self.settings.auth.validate
        user = dig(reply.body, v.user_path)
        if not isinstance(user, dict):
            objects = [p for p in shape.key_paths(reply.body)
                       if isinstance(dig(reply.body, p), dict)]
            return failed("validate", f"{sent}: no user object at user_path = {v.user_path!r}; "
                          f"the reply has keys: {names(shape.key_paths(reply.body))}",
                          f"set auth.validate.user_path = {objects[0]!r}" if objects else
                          'set auth.validate.user_path = "" (the whole body is the user)')
        return failed("validate", f"{sent}: the user object has no id at id_field = "
                      f"{v.id_field!r}; its keys: {names(shape.key_paths(user))}",
                      "set auth.validate.id_field to the key holding the user's id")

    # ------------------------------------------------------------------ refresh

    async def _send_refresh(self, credential: str) -> AuthReply:
        r = self.settings.auth.refresh
        return await self.client.post_credential(
            r.path, credential, send=r.send, scheme=self.settings.auth.scheme,
            body_field=r.body_field, cookie=self.settings.cookies.refresh)

    async def refresh(self) -> None:
        if self.session is None:
            self.checks.append(skipped("refresh", "needs a login"))
        if self.session is None or not await self._refresh(self.session):
            self.checks.append(skipped("rotation", "needs a working refresh"))
            self.checks.append(skipped("blacklisting", "needs a working refresh"))

    async def _refresh(self, session: Session) -> bool:
        """Refresh once; then rotation and blacklisting. False when the refresh failed."""
        r = self.settings.auth.refresh
        old = session.credential(r.send)
        if old is None:
            self.checks.append(skipped("refresh", f"send = {r.send!r} needs a refresh token, "
                                       "and the login gave none (see login)"))
            return False
        sent = f"POST {r.path} (send = {r.send!r})"
        try:
            reply = await self._send_refresh(old)
        except BackendUnavailable as exc:
            self.checks.append(failed("refresh", f"{sent}: no answer ({exc})", _BACKEND))
            return False
        self._keep(*shape.token_values(reply.body))
        if reply.status in REJECTED_STATUSES:
            self.checks.append(failed(
                "refresh", f"{sent} answered {reply.status} for the session login just "
                f"created: every refresh would log the user out; reply keys: "
                f"{names(shape.key_paths(reply.body))}{self._clock_hint()}", _SEND_FIX[r.send]))
            return False
        if not reply.ok:
            self.checks.append(failed("refresh", f"{sent} answered {reply.status}: the "
                                      "gateway reads that as an outage (503)",
                                      "fix auth.refresh.path"))
            return False
        access = dig(reply.body, r.access_path)
        if not self._token_found("refresh", "auth.refresh.access_path", r.access_path, access,
                                 reply, sent):
            return False
        assert isinstance(access, str)
        new_refresh, came = self._rotated(reply)
        if new_refresh is not None and not is_token(new_refresh):
            self.checks.append(failed("refresh", f"{sent}: the rotated refresh token {came} is "
                                      "not a token the gateway can keep in a cookie", _UNUSABLE))
            return False
        try:
            _, identity = await self._identify(access)
        except BackendUnavailable:
            identity = None
        if identity is None:
            self.checks.append(failed("refresh", f"{sent} answered {reply.status}, but the "
                                      "new access token is not accepted by validation",
                                      "check that auth.refresh.access_path points at the "
                                      "access token, not another one"))
            return False
        self.checks.append(passed("refresh", f"{sent} answered {reply.status}; new access "
                                  f"token at {r.access_path} is accepted by validation"))
        kept = session.refresh if new_refresh is None else new_refresh
        self.refreshed = Session(access, kept, session.refresh_from,
                                 session.clock)
        self.checks.append(self._rotation(old, new_refresh, came, reply))
        await self._blacklisting(old)
        return True

    def _rotated(self, reply: AuthReply) -> tuple[str | None, str]:
        """A rotated refresh token, where the gateway would look for it (body or cookie)."""
        r = self.settings.auth.refresh
        if r.refresh_path:
            value = dig(reply.body, r.refresh_path)
            if isinstance(value, str) and value:
                return value, f"at {r.refresh_path}"
        if r.send == "refresh_cookie":
            value = shape.set_cookie_value(reply.set_cookies, self.settings.cookies.refresh)
            if value:
                self._keep(value)
                return value, f"in Set-Cookie {self.settings.cookies.refresh}"
        return None, ""

    def _rotation(self, old: str, new: str | None, came: str, reply: AuthReply) -> Check:
        r = self.settings.auth.refresh
        if r.send == "access_header":
            self.rotated = True
            return passed("rotation", "on: the credential is the access token, a new one on "
                          "every refresh")
        if new is not None and new != old:
            self.rotated = True
            return passed("rotation", f"on: a new refresh token came back {came}")
        self.rotated = False
        others = [p for p in shape.token_paths(reply.body) if p != r.access_path]
        if not r.refresh_path and others:
            return warned("rotation", f"off as configured (auth.refresh.refresh_path is "
                          f"empty), but the reply also carries a token at {names(others)}: if "
                          "it is a rotated refresh token, the gateway keeps the old one and the "
                          "next refresh logs the user out",
                          f"set auth.refresh.refresh_path = {others[0]!r}")
        same = "the same refresh token came back" if new == old else "no new refresh token"
        return passed("rotation", f"off: {same}")

    async def _blacklisting(self, old: str) -> None:
        """Re-send the used credential: a backend that blacklists refuses it."""
        r = self.settings.auth.refresh
        sent = f"the used credential sent again to POST {r.path}"
        try:
            reply = await self._send_refresh(old)
        except BackendUnavailable as exc:
            self.checks.append(warned("blacklisting", f"{sent}: no answer ({exc})",
                                      "run the doctor again when the backend answers"))
            return
        self._keep(*shape.token_values(reply.body))
        if reply.ok:
            again = dig(reply.body, r.access_path)
            new_refresh, _ = self._rotated(reply)
            if is_token(again) and self.refreshed is not None:
                self.refreshed = Session(again, new_refresh or self.refreshed.refresh,
                                         self.refreshed.refresh_from, self.refreshed.clock)
            self.checks.append(passed("blacklisting", f"off: {sent} is accepted "
                                      f"({reply.status}); grace_s = {r.grace_s:g} is not "
                                      "needed for tabs that race a refresh"))
            return
        if reply.status not in REJECTED_STATUSES:
            self.checks.append(warned(
                "blacklisting", f"on, but {sent} answered {reply.status}: the gateway ends a "
                "session only on 400/401/403 and reads anything else as an outage, so a "
                "user holding a used token gets 503 until the cookie expires",
                "make the refresh endpoint answer 401 for a used or blacklisted token"))
            return
        told = f"on: {sent} is refused ({reply.status})"
        if self.rotated and r.grace_s <= 0:
            self.checks.append(failed(
                "blacklisting", f"{told}, with rotation and grace_s = 0: when two tabs or two "
                "requests refresh at once, the second presents the used token, is refused "
                "and the user is logged out", "set auth.refresh.grace_s = 30"))
            return
        self.checks.append(passed("blacklisting", f"{told}; grace_s = {r.grace_s:g} hands "
                                  "requests that raced a rotation the same new tokens"))

    # ------------------------------------------------------------------ logout

    async def logout(self) -> None:
        lo = self.settings.auth.logout
        current = self.refreshed or self.session
        if not lo.path:
            self.checks.append(skipped(
                "logout", "no auth.logout.path: the test session stays valid at the backend "
                "until its tokens expire", "set [auth.logout] path so the gateway revokes "
                "sessions at logout"))
            return
        if current is None:
            self.checks.append(skipped("logout", "needs a login"))
            return
        credential = current.credential(lo.send)
        path = lo.backend_path or lo.path
        if credential is None:
            self.checks.append(skipped("logout", f"auth.logout.send = {lo.send!r} needs a "
                                       "refresh token, and the login gave none (see login)"))
            return
        sent = f"POST {path} (send = {lo.send!r})"
        try:
            reply = await self.client.post_credential(
                path, credential, send=lo.send, scheme=self.settings.auth.scheme,
                body_field=lo.body_field, cookie=self.settings.cookies.refresh)
        except BackendUnavailable as exc:
            self.checks.append(warned("logout", f"{sent}: no answer ({exc}); the test "
                                      "session was not revoked", _BACKEND))
            return
        if not reply.ok:
            self.checks.append(warned(
                "logout", f"{sent} answered {reply.status}: sessions are not revoked at the "
                "backend at logout (the gateway still clears the cookies)",
                "fix auth.logout.backend_path (or path), send and body_field"))
            return
        await self._revoked(current, sent, reply.status)

    async def _revoked(self, current: Session, sent: str, status: int) -> None:
        """After logout, the session's refresh credential must be refused."""
        credential = current.credential(self.settings.auth.refresh.send)
        if credential is None:
            self.checks.append(passed("logout", f"{sent} answered {status}"))
            return
        try:
            reply = await self._send_refresh(credential)
        except BackendUnavailable:
            self.checks.append(passed("logout", f"{sent} answered {status} (revocation not "
                                      "verified: the refresh endpoint did not answer)"))
            return
        self._keep(*shape.token_values(reply.body))
        if reply.ok:
            self.checks.append(warned(
                "logout", f"{sent} answered {status}, but the session's refresh credential "
                "still works afterwards: a stolen cookie outlives the logout",
                "have the logout endpoint revoke the refresh credential the gateway sends "
                "(auth.logout.send, body_field, backend_path)"))
            return
        self.checks.append(passed("logout", f"{sent} answered {status}; the session's refresh "
                                  f"credential is refused afterwards ({reply.status})"))


def _iat(claims: dict[str, Any] | None) -> float | None:
    iat = claims.get("iat") if claims else None
    if isinstance(iat, int | float) and not isinstance(iat, bool):
        return float(iat)
    return None


_UNUSABLE = (f"tokens must be at most {MAX_TOKEN_LENGTH} characters of A-Z a-z 0-9 - . _ ~ "
             "+ / = : (no spaces, quotes, ; or ,); check that the path points at the token")
_BACKEND = "check that the backend runs and answers within the upstream timeouts"
_SEND_FIX = {
    "access_header": 'the backend did not take Authorization: <scheme> <access token>; if it '
                     'wants the refresh token, set auth.refresh.send = "refresh_body" (JSON) or '
                     '"refresh_cookie"',
    "refresh_body": "the backend did not take JSON {<body_field>: <refresh token>}: check "
                    'auth.refresh.body_field (SimpleJWT: "refresh"), or send = '
                    '"refresh_cookie" / "access_header"',
    "refresh_cookie": "the backend did not take Cookie: <cookies.refresh>=<refresh token>: "
                      "check cookies.refresh is the backend's refresh cookie name, or send = "
                      '"refresh_body"',
}
