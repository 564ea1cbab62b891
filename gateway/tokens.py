"""Where tokens come from (docs/behaviour.md#tokens), and peeking at JWT claims without
trusting them."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping
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


class CookieJar(dict[str, str]):
    """A request's cookies by name. A name sent twice with different values is left out and
    listed in ``conflicts``: which copy is the real one cannot be told (a sibling subdomain
    can add a second ``userToken`` that the browser sends first), so neither is believed."""

    conflicts: frozenset[str] = frozenset()


def _pairs(header: bytes) -> list[tuple[str, str]]:
    pairs = []
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
        pairs.append((key, val))
    return pairs


def parse_cookies(header: bytes) -> dict[str, str]:
    """``Cookie`` header -> dict; pairs that do not parse are skipped (they may belong to
    another app on the same domain), the first occurrence of a name wins."""
    cookies: dict[str, str] = {}
    for key, val in _pairs(header):
        cookies.setdefault(key, val)
    return cookies


def request_cookies(headers: Headers) -> CookieJar:
    """Every ``Cookie`` header of the request; a name with two different values is a
    conflict (:class:`CookieJar`), the same value twice is just that value."""
    jar = CookieJar()
    conflicts: set[str] = set()
    for name, value in headers:
        if name == b"cookie":
            for key, val in _pairs(value):
                if jar.setdefault(key, val) != val:
                    conflicts.add(key)
    for key in conflicts:
        del jar[key]
    jar.conflicts = frozenset(conflicts)
    return jar


def token_schemes(scheme: str) -> frozenset[str]:
    """The ``Authorization`` schemes that carry a token: the configured one and Bearer."""
    return frozenset({"bearer", scheme.lower()})


_BEARER_ONLY = token_schemes("Bearer")


def has_token_header(authorizations: Iterable[bytes], schemes: frozenset[str]) -> bool:
    """Whether an ``Authorization`` header (its values: ``authorizations``) uses a token
    scheme: then the token comes from there, never from a cookie (:func:`find_token`)."""
    for value in authorizations:
        scheme = value.strip().partition(b" ")[0].decode("latin-1").lower()
        if scheme in schemes:
            return True
    return False


def find_token(
    headers: Headers, cookies: CookieSettings, jar: Mapping[str, str] | None = None,
    schemes: frozenset[str] = _BEARER_ONLY,
) -> FoundToken | None:
    """Authorization with a token scheme (``schemes``: :func:`token_schemes`), then the
    access cookie, then the guest cookie: :func:`header_token`, then :func:`cookie_token`
    (``jar``: the request's parsed cookies, if the caller has them already)."""
    found = header_token((v for n, v in headers if n == b"authorization"), schemes)
    if found is not None:
        return found
    return cookie_token(jar if jar is not None else request_cookies(headers), cookies)


def header_token(authorizations: Iterable[bytes], schemes: frozenset[str] = _BEARER_ONLY
                 ) -> FoundToken | None:
    """The token of the first ``Authorization`` header with a token scheme.

    Another scheme (``Basic``, ``Digest``, ``Negotiate``...) is not a token and not a
    credential of the gateway's: it is skipped, never sent to the validate endpoint (a
    browser also attaches cached Basic credentials to cross-site requests). Raises
    :class:`MalformedToken` when such a header holds no usable token."""
    for value in authorizations:
        try:
            text = value.decode("ascii")
        except UnicodeDecodeError:
            raise MalformedToken("authorization header is not ASCII") from None
        scheme, _, token = text.strip().partition(" ")
        if not scheme:
            raise MalformedToken("authorization header needs '<scheme> <token>'")
        if scheme.lower() not in schemes:
            continue
        if not token.strip():
            raise MalformedToken("authorization header needs '<scheme> <token>'")
        return FoundToken(_check(token.strip()), "header")
    return None


def cookie_token(jar: Mapping[str, str], cookies: CookieSettings) -> FoundToken | None:
    """The access cookie (with the refresh cookie beside it), else the guest cookie. Raises
    :class:`MalformedToken` when the one found is not a token, and when the access or guest
    cookie is sent twice with different values (:class:`CookieJar`)."""
    conflicts: frozenset[str] = getattr(jar, "conflicts", frozenset())
    if cookies.access in conflicts or cookies.guest in conflicts:
        raise MalformedToken("session cookie sent twice with different values")
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
