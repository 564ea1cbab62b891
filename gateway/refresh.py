"""Refresh a session: one backend call per credential, rotation grace, retries
(docs/behaviour.md#refresh).

* Single-flight per refresh credential (the same :class:`SingleFlight` as validation):
  concurrent requests holding one expired session cause exactly one backend refresh.
* Rotation grace: for ``grace_s`` after a refresh, the old credential maps to the same new
  tokens without a backend call, so browser tabs that raced a rotation stay logged in. Keys are
  hashes of the credential; the new tokens are held no longer than the window.
* A rejection is remembered for ``proactive_s + clock_skew_s``: a still-valid token whose early
  refresh was refused is not re-refreshed on every request, nor is a dead credential that a
  client keeps sending after its cookies were cleared.
* A network error or 5xx is retried by :class:`AuthClient` and then surfaces as
  :class:`BackendUnavailable` (503, cookies untouched); only a 400/401/403 is a rejection.
* A rejection ends the session only when it cannot be the echo of another replica's rotation
  (a rotating backend refuses a credential that was just used): the grace entry is read once
  more, and if the shared state failed during this refresh, is not yet trusted again, or any
  replica had trouble with it within ``[state] settle_s``, the answer is 503 (cookies
  untouched) instead. See docs/shared-state.md.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any, Literal

from gateway.authclient import AuthClient, AuthReply, BackendUnavailable, dig
from gateway.settings import Settings
from gateway.singleflight import SharedFlight
from gateway.state import Store
from gateway.state.base import StateUnavailable
from gateway.tokens import FoundToken, is_token, jwt_exp, token_key
from gateway.validation import Identity, Validator

REJECTED_STATUSES = frozenset({400, 401, 403})
_GRACE = b"grace:"
_GRACE_OF = b"grace-of:"  # new token -> the credential whose grace handed it out
_REJECTED = b"refresh-rejected:"  # credential -> the status the backend refused it with
#: An undecidable rejection looks for a grace entry this long before answering 503: about
#: the time other processes take to come back from an outage and write theirs back.
_UNSETTLED_WAIT_S = 3.0


@dataclass(frozen=True, slots=True)
class Refreshed:
    """A successful refresh: the new tokens and who they belong to."""

    access: str
    refresh: str | None  # a rotated refresh token, else None
    identity: Identity | None  # None: the new token could not be checked (backend trouble)
    set_cookies: tuple[str, ...] = ()  # relayed from the backend with send = "refresh_cookie"

    def pack(self) -> bytes:
        return json.dumps({"access": self.access, "refresh": self.refresh,
                           "identity": self.identity.encode() if self.identity else None,
                           "cookies": list(self.set_cookies)}).encode("utf-8")

    @classmethod
    def unpack(cls, data: dict[str, Any]) -> Refreshed:
        identity = Identity.decode(data["identity"]) if data["identity"] else None
        return cls(data["access"], data["refresh"], identity, tuple(data["cookies"]))


@dataclass(frozen=True, slots=True)
class RefreshResult:
    refreshed: Refreshed | None  # None: the backend rejected the credential
    via: Literal["backend", "merged", "grace", "remembered"]
    status: int = 200


class Refresher:
    def __init__(self, settings: Settings, client: AuthClient, validator: Validator,
                 store: Store) -> None:
        r = settings.auth.refresh
        self._client = client
        self._validator = validator
        self._store = store
        self._settings = r
        self._scheme = settings.auth.scheme
        self._refresh_cookie = settings.cookies.refresh
        # Waiting replicas read the winner's result (new tokens) from the store: keep it no
        # longer than the grace window (a second when there is none: long enough to be read).
        self._flights = SharedFlight(store, b"refresh",
                                     result_ttl_s=min(5.0, r.grace_s) if r.grace_s > 0 else 1.0)
        self._remember_s = r.proactive_s + r.clock_skew_s

    @property
    def uses_refresh_token(self) -> bool:
        """False with ``send = "access_header"``: the access token is the credential."""
        return self._settings.send != "access_header"

    def due(self, access_token: str) -> bool:
        """Proactive refresh: a JWT whose ``exp`` is within ``proactive_s + clock_skew_s``."""
        if self._settings.proactive_s <= 0:
            return False
        exp = jwt_exp(access_token)
        margin = self._settings.proactive_s + self._settings.clock_skew_s
        return exp is not None and exp - time.time() <= margin

    async def refresh(self, credential: str) -> RefreshResult:
        """Raises :class:`BackendUnavailable` when the backend gives no verdict."""
        key = token_key(credential)
        mark = self._store.incidents  # any store failure from here on taints a rejection
        known = await self._known(key)
        if known is not None:
            data = json.loads(known)
            if "rejected" in data:
                return RefreshResult(None, "remembered", data["rejected"])
            return RefreshResult(Refreshed.unpack(data), "grace")
        try:
            packed, merged = await self._flights.run(
                key, lambda: self._call(credential, key, mark), recheck=lambda: self._known(key))
        except StateUnavailable as exc:
            raise BackendUnavailable("state_unavailable", str(exc)) from None
        data = json.loads(packed)
        if "rejected" in data:
            return RefreshResult(None, "merged" if merged else "backend", data["rejected"])
        return RefreshResult(Refreshed.unpack(data), "merged" if merged else "backend")

    async def _known(self, key: bytes) -> bytes | None:
        """The outcome of a recent refresh of this credential: its grace entry (new tokens)
        or a remembered rejection."""
        if self._settings.grace_s > 0:
            recent = await self._store.get(_GRACE + key)
            if recent is not None:
                return recent
        return await self._store.get(_REJECTED + key)

    async def forget(self, token: str) -> None:
        """Logout: end the grace of ``token`` as an old credential, and the grace that
        ``token`` (a new access or refresh token) was handed out by."""
        key = token_key(token)
        origin = await self._store.get(_GRACE_OF + key)
        await self._store.delete(_GRACE + key)
        if origin is not None:
            await self._store.delete(_GRACE + origin)
            await self._store.delete(_GRACE_OF + key)

    async def _call(self, credential: str, key: bytes, mark: int) -> bytes:
        reply = await self._send(credential)
        if reply.status in REJECTED_STATUSES:
            return await self._rejected(key, reply.status, mark)
        if not reply.ok:  # 404, 429, ...: not a verdict on the session
            raise BackendUnavailable("backend_error", f"refresh answered {reply.status}")
        access = dig(reply.body, self._settings.access_path)
        rotated = dig(reply.body, self._settings.refresh_path) if self._settings.refresh_path \
            else None
        if not is_token(access) or (rotated and not is_token(rotated)):
            raise BackendUnavailable("backend_error", "refresh reply has no usable token")
        # The backend has rotated (and may have blacklisted) the old credential: from here on
        # the new tokens must reach the client and the grace entry whatever happens, or a
        # blip on the validate endpoint would log the user out.
        try:
            identity = (await self._validator.validate(FoundToken(access, "cookie"))).identity
        except BackendUnavailable:
            identity = None
        refreshed = Refreshed(
            access=access,
            refresh=rotated if isinstance(rotated, str) and rotated else None,
            identity=identity,
            set_cookies=reply.set_cookies if self._settings.send == "refresh_cookie" else (),
        )
        packed = refreshed.pack()
        grace = self._settings.grace_s
        await self._store.set(_GRACE + key, packed, grace, durable=True)
        for token in (refreshed.access, refreshed.refresh):  # so logout can end the grace
            if token and grace > 0:
                await self._store.set(_GRACE_OF + token_key(token), key, grace, durable=True)
        return packed

    async def _rejected(self, key: bytes, status: int, mark: int) -> bytes:
        """The backend refused the credential: the end of the session, unless another
        process may have just rotated it. Look for its grace entry once more (written while
        this refresh was on its way); then refuse to decide (503) while the shared store
        cannot vouch for the whole of this refresh. Only a decided rejection is remembered
        and published to waiting processes."""
        store = self._store
        recent = await self._grace(key)
        if recent is not None:
            return recent
        if store.incidents != mark or not store.trusted or await store.unsettled():
            # Another process may have rotated this credential and be writing its grace
            # entry back right now (its recovery is jittered): look a little longer.
            deadline = time.monotonic() + _UNSETTLED_WAIT_S
            while time.monotonic() < deadline:
                await asyncio.sleep(0.2)
                recent = await self._grace(key)
                if recent is not None:
                    return recent
            raise BackendUnavailable(
                "state_unavailable", f"refresh answered {status} while the shared state could "
                "not rule out another replica's rotation")
        rejected = json.dumps({"rejected": status}).encode("utf-8")
        await store.set(_REJECTED + key, rejected, self._remember_s, durable=True)
        return rejected

    async def _grace(self, key: bytes) -> bytes | None:
        return await self._store.get(_GRACE + key) if self._settings.grace_s > 0 else None

    async def _send(self, credential: str) -> AuthReply:
        r = self._settings
        return await self._client.post_credential(
            r.path, credential, send=r.send, scheme=self._scheme, body_field=r.body_field,
            cookie=self._refresh_cookie, endpoint="refresh")
