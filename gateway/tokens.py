"""Where tokens come from (CONTRACT.md §3.1), and peeking at JWT claims without trusting them."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal, TypeGuard

from gateway.settings import CookieSettings
from gateway.types import Headers

Source = Literal["header", "cookie", "guest_cookie"]
MAX_TOKEN_LENGTH = 8192
# RFC 6750 b64token plus what JWTs and opaque session ids use; no spaces, no controls.
_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/=:]+")


class MalformedToken(ValueError):
    """A credential that is present but cannot be a token (never sent to the backend)."""


_UNPARSED: Any = object()


@dataclass(frozen=True, slots=True)
class FoundToken:
    value: str
    source: Source
    refresh: str | None = None  # the refresh cookie, when the token came from cookies
    # Cache and single-flight key: a hash of the token, never the token itself. Hashed once
    # per request: ``fp`` (the audit's token_fp) is the first 12 hex digits of the same hash.
    key: bytes = field(init=False, repr=False, compare=False)
    _claims: dict[str, Any] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", token_key(self.value))
        object.__setattr__(self, "_claims", _UNPARSED)

    @property
    def fp(self) -> str:
        """``token_fp`` of the token (gateway/audit.py), from the hash already taken."""
        return self.key.hex()[:12]

    def claims(self) -> dict[str, Any] | None:
        """:func:`jwt_claims` of the token, decoded at most once per request."""
        if self._claims is _UNPARSED:
            object.__setattr__(self, "_claims", jwt_claims(self.value))
        return self._claims


def token_key(token: str) -> bytes:
    return hashlib.sha256(token.encode("ascii")).digest()


def is_token(value: object) -> TypeGuard[str]:
    """Whether ``value`` is a token the gateway can carry: in a cookie (no ``;``, ``,``,
    spaces, quotes) and in ``Authorization``, and accept back on the next request."""
    return (isinstance(value, str) and 0 < len(value) <= MAX_TOKEN_LENGTH
            and _TOKEN.fullmatch(value) is not None)


def _check(token: str) -> str:
    if not is_token(token):
        raise MalformedToken("token has an invalid shape")
    return token


def parse_cookies(header: bytes) -> dict[str, str]:
    """``Cookie`` header -> dict; pairs that do not parse are skipped (they may belong to
    another app on the same domain), the first occurrence of a name wins."""
    cookies: dict[str, str] = {}
    for part in header.split(b";"):
        name, sep, value = part.partition(b"=")
        if not sep:
            continue
        try:
            key = name.strip().decode("ascii")
            val = value.strip().decode("ascii")
        except UnicodeDecodeError:
            continue
        if len(val) >= 2 and val[0] == val[-1] == '"':
            val = val[1:-1]
        cookies.setdefault(key, val)
    return cookies


def request_cookies(headers: Headers) -> dict[str, str]:
    cookies: dict[str, str] = {}
    for name, value in headers:
        if name == b"cookie":
            for key, val in parse_cookies(value).items():
                cookies.setdefault(key, val)
    return cookies


def find_token(
    headers: Headers, cookies: CookieSettings, jar: dict[str, str] | None = None
) -> FoundToken | None:
    """Authorization (any scheme), then the access cookie, then the guest cookie.

    ``jar`` is the request's parsed cookies, if the caller has them already. Raises
    :class:`MalformedToken` when the credential found first is not a token."""
    for name, value in headers:
        if name == b"authorization":
            try:
                text = value.decode("ascii")
            except UnicodeDecodeError:
                raise MalformedToken("authorization header is not ASCII") from None
            scheme, _, token = text.strip().partition(" ")
            if not scheme or not token.strip():
                raise MalformedToken("authorization header needs '<scheme> <token>'")
            return FoundToken(_check(token.strip()), "header")
    if jar is None:
        jar = request_cookies(headers)
    access = jar.get(cookies.access)
    if access:
        refresh = jar.get(cookies.refresh) or None
        return FoundToken(_check(access), "cookie", refresh)
    guest = jar.get(cookies.guest)
    if guest:
        return FoundToken(_check(guest), "guest_cookie")
    return None


def jwt_claims(token: str) -> dict[str, Any] | None:
    """The payload of a JWT-shaped token, unverified (for ``exp`` peeking only), else None."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1]
    try:
        data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (binascii.Error, ValueError, RecursionError):  # RecursionError: [[[[...]]]]
        return None
    return data if isinstance(data, dict) else None


def claims_exp(claims: dict[str, Any] | None) -> float | None:
    """``exp`` as a finite float; anything else (absent, a string, 10**400, NaN) is None."""
    exp = claims.get("exp") if claims else None
    if not isinstance(exp, int | float) or isinstance(exp, bool):
        return None
    try:
        value = float(exp)
    except OverflowError:
        return None
    return value if math.isfinite(value) else None


def jwt_exp(token: str) -> float | None:
    return claims_exp(jwt_claims(token))
