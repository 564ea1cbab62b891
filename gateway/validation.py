"""Validate a token: per-token cache, in-flight merge, backend call (docs/behaviour.md#validation).

The cache and the merge live in the state store (memory or Redis), so with Redis every worker
and replica shares them: a token is checked at the backend at most once per ``cache_ttl_s``
across the whole deployment.
"""

from __future__ import annotations

import base64
import json
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from gateway.authclient import AuthClient, BackendUnavailable, dig
from gateway.settings import Settings
from gateway.singleflight import SharedFlight
from gateway.state import MemoryStore, Store
from gateway.state.base import StateUnavailable
from gateway.tokens import FoundToken, claims_exp, token_key

TokenType = Literal["user", "guest"]
CacheState = Literal["hit", "miss", "merged"]
_CACHE = b"validated:"
# Stored under the same key as a validation when the backend said the token is not valid
# (no JSON user can pack to this).
_REJECTED = b"!"
GUEST_MARK = b"guest-issued:"  # tokens the gateway obtained as guest tokens: never users
_MEMO_ENTRIES = 4096  # decoded identities held in front of the store (the most recent tokens)


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a valid token belongs to, as the backend described them."""

    user_id: str
    token_type: TokenType
    roles: tuple[str, ...]
    user_b64: bytes  # base64url (unpadded) of the user object's JSON, for x-auth-user

    def encode(self) -> dict[str, Any]:
        return {"id": self.user_id, "type": self.token_type, "roles": list(self.roles),
                "user": self.user_b64.decode("ascii")}

    @classmethod
    def decode(cls, data: dict[str, Any]) -> Identity:
        token_type: TokenType = "guest" if data["type"] == "guest" else "user"
        return cls(str(data["id"]), token_type, tuple(data["roles"]),
                   str(data["user"]).encode("ascii"))


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
    declared = user.get("type")
    if declared in ("user", "guest"):
        token_type = declared  # the backend said what the token is: that wins
    elif str(user_id).startswith("guest:"):
        token_type = "guest"
    encoded = json.dumps(user, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    return Identity(str(user_id), token_type, roles,
                    base64.urlsafe_b64encode(encoded).rstrip(b"="))


def _pack(identity: Identity | None, expires: float) -> bytes:
    if identity is None:
        return b""
    until = expires if math.isfinite(expires) else None
    return json.dumps({**identity.encode(), "until": until}).encode("utf-8")


def _unpack(data: bytes) -> tuple[Identity | None, float]:
    if not data or data == _REJECTED:
        return None, math.inf
    fields = json.loads(data)
    until = fields.get("until")
    return Identity.decode(fields), math.inf if until is None else float(until)


class Validator:
    """Answers "who is this token?" at most once per token per ``cache_ttl_s``."""

    def __init__(self, settings: Settings, client: AuthClient, store: Store) -> None:
        auth = settings.auth
        self._client = client
        self._store = store
        self._method = auth.validate.method.upper()
        self._path = auth.validate.path
        self._user_path = auth.validate.user_path
        self._id_field = auth.validate.id_field
        self._roles_field = auth.validate.roles_field
        self._scheme = auth.scheme
        self._skew = auth.refresh.clock_skew_s
        self._ttl = auth.cache_ttl_s
        # A rejected token is remembered too, never longer than a valid one: 20,000 requests
        # with one bogus token cost one backend call, not 20,000.
        self._rejected_ttl = min(auth.invalid_cache_ttl_s, auth.cache_ttl_s)
        self._flights = SharedFlight(store, b"validate")
        # token hash -> (the store's bytes, their decoded identity, valid until)
        self._memo: dict[bytes, tuple[bytes, Identity | None, float]] = {}

    @property
    def cache_size(self) -> int:
        """Entries held by a per-process store (a Redis store bounds itself)."""
        return len(self._store) if isinstance(self._store, MemoryStore) else 0

    async def validate(self, token: FoundToken) -> Validation:
        """Raises :class:`gateway.authclient.BackendUnavailable` when no verdict can be had."""
        key = token.key
        if self._ttl > 0:
            cached = await self._store.get(_CACHE + key)
            if cached:
                known, until = self._decoded(key, cached)
                if until >= time.time():
                    return Validation(known, "hit")
                await self._store.delete(_CACHE + key)  # the token expired in the window
        claims = token.claims()
        expires = self._expires(claims)
        if expires < time.time():
            return Validation(None, "miss", local=True)
        guest = (token.source == "guest_cookie" or bool(claims and claims.get("typ") == "guest")
                 or await self._store.get(GUEST_MARK + key) is not None)
        try:
            packed, merged = await self._flights.run(
                key, lambda: self._ask_backend(token.value, key, guest, expires),
                recheck=self._cached(key) if self._ttl > 0 else None)
        except StateUnavailable as exc:
            raise BackendUnavailable("state_unavailable", str(exc)) from None
        identity, _ = _unpack(packed)
        return Validation(identity, "merged" if merged else "miss")

    def _decoded(self, key: bytes, packed: bytes) -> tuple[Identity | None, float]:
        """:func:`_unpack`, remembered per token while the store holds the same bytes: a cache
        hit does not decode JSON and rebuild the identity. The store stays the source of
        truth (shared across replicas with Redis): when its entry changes, so do the bytes."""
        memo = self._memo.get(key)
        if memo is not None and memo[0] == packed:
            return memo[1], memo[2]
        identity, until = _unpack(packed)
        if len(self._memo) >= _MEMO_ENTRIES:
            del self._memo[next(iter(self._memo))]  # the oldest entry: hot tokens come back
        self._memo[key] = (packed, identity, until)
        return identity, until

    def _cached(self, key: bytes) -> Callable[[], Awaitable[bytes | None]]:
        async def lookup() -> bytes | None:
            return await self._store.get(_CACHE + key) or None

        return lookup

    def _expires(self, claims: dict[str, Any] | None) -> float:
        """When a token stops being usable: its JWT ``exp`` plus the allowed clock skew."""
        exp = claims_exp(claims)
        return math.inf if exp is None else exp + self._skew

    async def forget(self, token: str) -> None:
        await self._store.delete(_CACHE + token_key(token))

    async def _ask_backend(self, token: str, key: bytes, guest: bool, expires: float) -> bytes:
        reply = await self._client.call(
            self._method, self._path, headers={"authorization": f"{self._scheme} {token}"},
            endpoint="validate")
        if reply.status in (401, 403):  # the token is not valid
            if self._rejected_ttl > 0:
                await self._store.set(_CACHE + key, _REJECTED, self._rejected_ttl)
            return b""
        if not reply.ok:  # 404, 429, ...: no verdict on the token
            raise BackendUnavailable("backend_error", f"validate answered {reply.status}")
        if reply.body is None:
            # A 200 maintenance or load-balancer page is no verdict either: treating it as
            # "invalid" would refresh and, on a rejection, log the user out. (A JSON 2xx
            # without a usable user stays "invalid": some backends answer 200
            # {"success": false} for a bad token.)
            raise BackendUnavailable("backend_error", "validate answered 2xx without JSON")
        identity = identity_from_user(
            dig(reply.body, self._user_path), id_field=self._id_field,
            roles_field=self._roles_field, token_type="guest" if guest else "user")
        packed = _pack(identity, expires)
        if identity is not None and self._ttl > 0:
            await self._store.set(_CACHE + key, packed, self._ttl)
        elif identity is None and self._rejected_ttl > 0:
            await self._store.set(_CACHE + key, _REJECTED, self._rejected_ttl)
        return packed
