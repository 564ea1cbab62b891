"""The demo backend's users, options and in-memory state (tokens, blacklist, counters, faults).

Every endpoint module reads and changes one `DemoState`; the control API (``control.py``)
is the only other way in.
"""

from __future__ import annotations

import math
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal

import jwt

ALGORITHM = "HS256"
TokenType = Literal["access", "refresh", "guest"]
TOKEN_TYPES: tuple[TokenType, ...] = ("access", "refresh", "guest")
REFRESH_COOKIE = "refreshToken"

#: Keys of the control API's ``/__demo/stats`` ``calls`` and of ``/__demo/faults``.
ENDPOINT_KEYS: tuple[str, ...] = (
    # next-api-layer style
    "login",
    "me",
    "refresh",
    "guest",
    "logout",
    # DRF / SimpleJWT / Djoser style
    "jwt_create",
    "users_me",
    "jwt_refresh",
    "jwt_blacklist",
    "django_open",
    "django_private",
    # Express style
    "express_login",
    "express_me",
    "refresh_token",
    "express_logout",
    # application endpoints
    "hello",
    "items",
    "admin_stats",
    "echo",
    "upload",
    "dashboard",
)


@dataclass(frozen=True)
class BackendOptions:
    access_ttl_s: float = 900
    refresh_ttl_s: float = 7 * 24 * 3600
    guest_ttl_s: float = 3600
    #: Rotate refresh credentials and blacklist the used ones (reuse -> 401).
    rotate_refresh: bool = True
    #: HS256 secret; a random one is generated per app when empty.
    secret: str = ""
    #: When set, ``POST /auth/guest`` requires ``{"username", "password"}`` equal to these.
    guest_username: str = ""
    guest_password: str = ""
    #: The backend's clock runs this many seconds ahead of the machine's (negative: behind).
    #: Token ``iat``/``exp``, their checks and the ``Date`` header use it, so a test can
    #: simulate a backend with a skewed clock.
    clock_offset_s: float = 0.0
    #: The gateway's audit stream (a JSON-lines file) that the demo app's activity log reads;
    #: empty: the activity log says it has no audit file.
    audit_log: str = ""
    #: Serve the proxy probes (``/api/echo``, ``/test/*``, ``/ws/echo``). They reflect request
    #: headers, ``Authorization`` included, so ``gateway demo`` turns them off: no page script
    #: may ever read a token.
    probes: bool = True


@dataclass(frozen=True)
class DemoUser:
    id: int
    email: str
    username: str
    password: str
    roles: tuple[str, ...]
    #: Shown by the demo pages only (not part of the auth replies the tests compare).
    name: str = ""

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "email": self.email,
            "username": self.username,
            "roles": list(self.roles),
        }


DEMO_USERS: tuple[DemoUser, ...] = (
    DemoUser(1, "demo@example.com", "demo", "demo-password", ("user",), "Dana Demo"),
    DemoUser(2, "admin@example.com", "admin", "admin-password", ("admin", "user"), "Ada Admin"),
)


def user_by_login(login: object, password: object) -> DemoUser | None:
    if not isinstance(login, str) or not isinstance(password, str):
        return None
    for user in DEMO_USERS:
        if login in (user.email, user.username) and secrets.compare_digest(
            password.encode(), user.password.encode()
        ):
            return user
    return None


def user_by_id(sub: str) -> DemoUser | None:
    for user in DEMO_USERS:
        if str(user.id) == sub:
            return user
    return None


@dataclass(frozen=True)
class Claims:
    sub: str
    typ: str
    jti: str
    iat: float
    exp: float

    @property
    def is_guest(self) -> bool:
        return self.typ == "guest"


@dataclass
class Fault:
    status: int
    remaining: int  # -1 means "until reset"
    delay_s: float

    def describe(self) -> dict[str, Any]:
        return {"status": self.status, "count": self.remaining, "delay_s": self.delay_s}


class TokenError(Exception):
    def __init__(self, reason: str, *, blacklisted: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.blacklisted = blacklisted


class DemoState:
    """In-memory state of one backend app (tokens, blacklist, counters, faults)."""

    def __init__(self, options: BackendOptions) -> None:
        self.initial_options = options
        self.options = options
        self.blacklist: set[str] = set()
        self.refreshed_access: set[str] = set()
        self.calls: dict[str, int] = dict.fromkeys(ENDPOINT_KEYS, 0)
        self.refresh_ok = 0
        self.refresh_rejected = 0
        self.faults: dict[str, Fault] = {}

    @property
    def secret(self) -> str:
        return self.options.secret

    def now(self) -> float:
        """The backend's clock: the machine's plus ``clock_offset_s``."""
        return time.time() + self.options.clock_offset_s

    def reset(self) -> None:
        """Zero counters, clear faults and restore the initial options; keep tokens."""
        self.options = self.initial_options
        self.calls = dict.fromkeys(ENDPOINT_KEYS, 0)
        self.refresh_ok = 0
        self.refresh_rejected = 0
        self.faults.clear()

    def stats(self) -> dict[str, Any]:
        return {
            "calls": dict(self.calls),
            "refresh_ok": self.refresh_ok,
            "refresh_rejected": self.refresh_rejected,
            "blacklisted": len(self.blacklist),
            "faults": {key: fault.describe() for key, fault in self.faults.items()},
        }

    def config(self) -> dict[str, Any]:
        return {
            "access_ttl_s": self.options.access_ttl_s,
            "refresh_ttl_s": self.options.refresh_ttl_s,
            "guest_ttl_s": self.options.guest_ttl_s,
            "rotate_refresh": self.options.rotate_refresh,
            "clock_offset_s": self.options.clock_offset_s,
        }

    # -- faults ---------------------------------------------------------------------------

    def take_fault(self, key: str) -> Fault | None:
        fault = self.faults.get(key)
        if fault is None:
            return None
        if fault.remaining > 0:
            fault.remaining -= 1
            if fault.remaining == 0:
                del self.faults[key]
        return fault

    # -- tokens ---------------------------------------------------------------------------

    def issue(
        self, sub: str, typ: TokenType, ttl_s: float | None = None, age_s: float = 0.0
    ) -> str:
        if ttl_s is None:
            ttl_s = self._ttl(typ)
        now = self.now()
        claims = {
            "sub": sub,
            "typ": typ,
            "jti": uuid.uuid4().hex,
            "iat": now - age_s,
            "exp": now + ttl_s,
        }
        return jwt.encode(claims, self.secret, algorithm=ALGORITHM)

    def issue_pair(self, sub: str) -> tuple[str, str]:
        return self.issue(sub, "access"), self.issue(sub, "refresh")

    def decode(
        self,
        token: str,
        typs: tuple[str, ...],
        *,
        allow_expired: bool = False,
        check_blacklist: bool = True,
    ) -> Claims:
        """Verify `token`; raise `TokenError` when it must not be accepted.

        With `allow_expired` an expired token still passes as long as it was issued less
        than ``refresh_ttl_s`` ago (used by the access-token refresh flow and logout).
        Times are checked here against `now` (PyJWT would use the machine's clock).
        """
        try:
            payload = jwt.decode(
                token,
                self.secret,
                algorithms=[ALGORITHM],
                options={
                    "require": ["sub", "typ", "jti", "iat", "exp"],
                    "verify_exp": False,
                    "verify_iat": False,
                },
            )
        except jwt.InvalidTokenError as exc:
            raise TokenError("token invalid") from exc
        try:
            claims = Claims(
                sub=str(payload["sub"]),
                typ=str(payload["typ"]),
                jti=str(payload["jti"]),
                iat=float(payload["iat"]),
                exp=float(payload["exp"]),
            )
        except (TypeError, ValueError) as exc:
            raise TokenError("token invalid") from exc
        if not (math.isfinite(claims.iat) and math.isfinite(claims.exp)):
            raise TokenError("token invalid")
        now = self.now()
        if not allow_expired and claims.exp <= now:
            raise TokenError("token expired")
        if claims.typ not in typs:
            raise TokenError("wrong token type")
        if check_blacklist and claims.jti in self.blacklist:
            raise TokenError("token blacklisted", blacklisted=True)
        if allow_expired and now - claims.iat > self.options.refresh_ttl_s:
            raise TokenError("token expired")
        if not claims.is_guest and user_by_id(claims.sub) is None:
            raise TokenError("unknown user")
        return claims

    def consume_refresh(self, token: str) -> Claims:
        """Validate a refresh token; blacklist it when rotating."""
        claims = self.decode(token, ("refresh",))
        if self.options.rotate_refresh:
            self.blacklist.add(claims.jti)
        return claims

    def consume_access_for_refresh(self, token: str) -> Claims:
        """Validate an (possibly expired) access token presented to ``/auth/refresh``."""
        claims = self.decode(token, ("access",), allow_expired=True)
        if claims.jti in self.refreshed_access:
            raise TokenError("token already used", blacklisted=True)
        if self.options.rotate_refresh:
            self.refreshed_access.add(claims.jti)
        return claims

    def revoke(self, token: str) -> bool:
        """Blacklist any correctly signed token, expired or not."""
        try:
            payload = jwt.decode(
                token,
                self.secret,
                algorithms=[ALGORITHM],
                options={"require": ["jti"], "verify_exp": False, "verify_iat": False},
            )
        except jwt.InvalidTokenError:
            return False
        self.blacklist.add(str(payload["jti"]))
        return True

    def _ttl(self, typ: TokenType) -> float:
        if typ == "access":
            return self.options.access_ttl_s
        if typ == "refresh":
            return self.options.refresh_ttl_s
        return self.options.guest_ttl_s
