"""Validate a token: per-token cache, in-flight merge, backend call (docs/behaviour.md#validation).

The cache and the merge live in the state store (memory or Redis), so with Redis every worker
and replica shares them: a token is checked at the backend at most once per ``cache_ttl_s``
across the whole deployment.

What is kept per token is small on purpose (the memory store holds one entry per token,
100,000 by default; benchmarks/cache_memory.py measures it). A shared store gets JSON that
every replica, of every version, reads. The per-process memory store gets a compact entry
(:func:`_pack_local`): a mark byte, the deadline when there is one, and the user object's JSON
as the backend sent it; id, roles and the ``x-auth-user`` value are derived from it again
when the entry is read. Reads do not pay for that: the most recently used tokens' decoded
answers are remembered in front of the store (``_memo``), keyed by the entry's bytes, so a
cache hit is one store lookup and one dict lookup.
"""

from __future__ import annotations

import base64
import json
import math
import struct
import time
from collections import OrderedDict
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
# The compact entry's first byte: the token type, capitalised when a deadline follows.
_LOCAL_MARKS: dict[int, tuple[TokenType, bool]] = {
    ord("u"): ("user", False), ord("g"): ("guest", False),
    ord("U"): ("user", True), ord("G"): ("guest", True)}
_DEADLINE = struct.Struct(">d")


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
    """The entry for a shared store: JSON every replica reads (see :func:`_unpack`)."""
    if identity is None:
        return b""
    until = expires if math.isfinite(expires) else None
    return json.dumps({**identity.encode(), "until": until}).encode("utf-8")


def _pack_local(identity: Identity | None, expires: float) -> bytes:
    """The entry for this process's memory store: ``u``/``g`` (the token type) and the user
    object's JSON, or ``U``/``G``, the deadline (8 bytes) and the JSON. About a third of
    :func:`_pack`'s size: no id, roles or deadline spelled out, no base64."""
    if identity is None:
        return b""
    user = base64.urlsafe_b64decode(identity.user_b64 + b"=" * (-len(identity.user_b64) % 4))
    mark = b"g" if identity.token_type == "guest" else b"u"
    if not math.isfinite(expires):
        return mark + user
    return mark.upper() + _DEADLINE.pack(expires) + user


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
        self._local = not store.shared  # compact entries: only this process reads them
        # token hash -> (the store's bytes, the answer to a hit on them, valid until)
        # (insertion order: the oldest goes first, in O(1) on an OrderedDict)
        self._memo: OrderedDict[bytes, tuple[bytes, Validation, float]] = OrderedDict()

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
                memo = self._memo.get(key)
                if memo is None or memo[0] != cached:  # the same object: no byte compare
                    memo = self._remember(key, cached)
                until = memo[2]
                if until == math.inf or until >= time.time():
                    return memo[1]
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
        memo = self._memo.get(key)
        if memo is not None and memo[0] == packed:
            identity = memo[1].identity  # this process's own answer: decoded already
        else:
            identity, _ = self._unpack(packed)
        return Validation(identity, "merged" if merged else "miss")

    def _remember(self, key: bytes, packed: bytes) -> tuple[bytes, Validation, float]:
        """Decode a store entry once and remember the answer to a hit on it while the store
        holds the same bytes: a hit neither decodes nor allocates. The store stays the
        source of truth (shared across replicas with Redis): when its entry changes, so do
        the bytes."""
        identity, until = self._unpack(packed)
        return self._memorize(key, packed, identity, until)

    def _memorize(self, key: bytes, packed: bytes, identity: Identity | None, until: float
                  ) -> tuple[bytes, Validation, float]:
        memo = self._memo
        if key not in memo and len(memo) >= _MEMO_ENTRIES:
            memo.popitem(last=False)  # the oldest entry: hot tokens come back
        entry = memo[key] = (packed, Validation(identity, "hit"), until)
        return entry

    def _unpack(self, data: bytes) -> tuple[Identity | None, float]:
        """A store entry in either format: :func:`_pack_local`'s (this process wrote it) or
        :func:`_pack`'s JSON."""
        local = _LOCAL_MARKS.get(data[0]) if data else None
        if local is None:
            return _unpack(data)
        token_type, has_deadline = local
        start, until = 1, math.inf
        if has_deadline:
            until, = _DEADLINE.unpack_from(data, 1)
            start = 1 + _DEADLINE.size
        identity = identity_from_user(json.loads(data[start:]), id_field=self._id_field,
                                      roles_field=self._roles_field, token_type=token_type)
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
        packed = (_pack_local if self._local else _pack)(identity, expires)
        if identity is not None and self._ttl > 0:
            self._memorize(key, packed, identity, expires)
            await self._store.set(_CACHE + key, packed, self._ttl)
        elif identity is None and self._rejected_ttl > 0:
            await self._store.set(_CACHE + key, _REJECTED, self._rejected_ttl)
        return packed
