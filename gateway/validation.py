"""Validate a token: per-token cache, in-flight merge, backend call (CONTRACT.md §3.2)."""

from __future__ import annotations

import base64
import json
import math
import time
from dataclasses import dataclass
from typing import Any, Literal

from cachetools import TTLCache

from gateway.authclient import AuthClient, dig
from gateway.settings import Settings
from gateway.singleflight import SingleFlight
from gateway.tokens import FoundToken, jwt_claims, token_key

TokenType = Literal["user", "guest"]
CacheState = Literal["hit", "miss", "merged"]


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a valid token belongs to, as the backend described them."""

    user_id: str
    token_type: TokenType
    roles: tuple[str, ...]
    user_b64: bytes  # base64url (unpadded) of the user object's JSON, for x-auth-user


@dataclass(frozen=True, slots=True)
class Validation:
    identity: Identity | None  # None: the token is not valid
    cache: CacheState
    local: bool = False  # decided by the gateway alone (an expired JWT), no backend call


def identity_from_user(user: Any, *, id_field: str, roles_field: str,
                       token_type: TokenType) -> Identity | None:
    """Map a backend user object to an :class:`Identity`; None if it has no usable id."""
    if not isinstance(user, dict):
        return None
    user_id = dig(user, id_field)
    if isinstance(user_id, bool) or not isinstance(user_id, str | int) or user_id == "":
        return None
    raw_roles = dig(user, roles_field)
    if isinstance(raw_roles, str):
        roles: tuple[str, ...] = (raw_roles,)
    elif isinstance(raw_roles, list):
        roles = tuple(r for r in raw_roles if isinstance(r, str))
    else:
        roles = ()
    if user.get("type") == "guest" or str(user_id).startswith("guest:"):
        token_type = "guest"
    encoded = json.dumps(user, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    return Identity(str(user_id), token_type, roles,
                    base64.urlsafe_b64encode(encoded).rstrip(b"="))


class Validator:
    """Answers "who is this token?" at most once per token per ``cache_ttl_s``."""

    def __init__(self, settings: Settings, client: AuthClient) -> None:
        auth = settings.auth
        self._client = client
        self._method = auth.validate.method.upper()
        self._path = auth.validate.path
        self._user_path = auth.validate.user_path
        self._id_field = auth.validate.id_field
        self._roles_field = auth.validate.roles_field
        self._scheme = auth.scheme
        self._skew = auth.refresh.clock_skew_s
        self._cache: TTLCache[bytes, tuple[Identity, float]] | None = (
            TTLCache(maxsize=auth.cache_max_entries, ttl=auth.cache_ttl_s)
            if auth.cache_ttl_s > 0 else None
        )
        self._flights: SingleFlight[bytes, Identity | None] = SingleFlight()

    @property
    def cache_size(self) -> int:
        return len(self._cache) if self._cache is not None else 0

    async def validate(self, token: FoundToken) -> Validation:
        """Raises :class:`gateway.authclient.BackendUnavailable` when no verdict can be had."""
        key = token.key
        if self._cache is not None:
            cached = self._cache.get(key)
            if cached is not None:
                known, until = cached
                if until >= time.time():
                    return Validation(known, "hit")
                del self._cache[key]  # the token expired within the cache window
        claims = jwt_claims(token.value)
        expires = self._expires(claims)
        if expires < time.time():
            return Validation(None, "miss", local=True)
        guest = token.source == "guest_cookie" or bool(claims and claims.get("typ") == "guest")
        identity, merged = await self._flights.run(
            key, lambda: self._ask_backend(token.value, key, guest, expires))
        return Validation(identity, "merged" if merged else "miss")

    def _expires(self, claims: dict[str, Any] | None) -> float:
        """When a token stops being usable: its JWT ``exp`` plus the allowed clock skew."""
        exp = claims.get("exp") if claims else None
        if isinstance(exp, int | float) and not isinstance(exp, bool):
            return float(exp) + self._skew
        return math.inf


    def forget(self, token: str) -> None:
        if self._cache is not None:
            self._cache.pop(token_key(token), None)

    async def _ask_backend(self, token: str, key: bytes, guest: bool, expires: float
                           ) -> Identity | None:
        reply = await self._client.call(
            self._method, self._path, headers={"authorization": f"{self._scheme} {token}"})
        if not reply.ok:
            return None  # 401/403 (or another 4xx): not a valid token
        identity = identity_from_user(
            dig(reply.body, self._user_path), id_field=self._id_field,
            roles_field=self._roles_field, token_type="guest" if guest else "user")
        if identity is not None and self._cache is not None:
            self._cache[key] = (identity, expires)
        return identity
