"""Guest tokens for anonymous visitors of ``guest`` routes (docs/behaviour.md#guests).

* ``backend`` mode: ``POST <auth.url><guest.path>`` mints the token. An anonymous flood must not
  become a backend flood, so issuance is bounded three ways: at most ``guest.max_concurrent``
  calls in flight, ``guest.per_client_per_minute`` per client address, and ``guest.per_minute``
  in all (a flood from many addresses). Over a bound the client gets 429 with ``Retry-After``
  at once; nothing queues. The bounds are per process.
* ``local`` mode: the gateway signs an HS256 JWT (``sub = "guest:<uuid4>"``, ``typ = "guest"``)
  with the key from ``$<guest.secret_env>`` and validates it itself; no backend call at all.
"""

from __future__ import annotations

import base64
import json
import math
import os
import time
import uuid
from dataclasses import dataclass

from gateway.authclient import AuthClient, BackendUnavailable, dig
from gateway.settings import Settings, SettingsError
from gateway.state import Store
from gateway.state.ttlcache import TTLCache
from gateway.tokens import is_token, jwt_claims, token_key
from gateway.validation import GUEST_MARK, Identity

MIN_SECRET_BYTES = 32
_VERIFIED_ENTRIES = 4096  # local guest tokens remembered as verified (the most recent)
_WINDOW_S = 60.0


class GuestLimited(Exception):
    """Too many guest issuances right now; answer 429 with ``retry_after``."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"guest issuance limited; retry after {retry_after}s")
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class Guest:
    token: str
    identity: Identity
    forward_token: bool  # backend mode: the token goes upstream as Authorization


def guest_identity(guest_id: str) -> Identity:
    user = json.dumps({"id": guest_id, "type": "guest"}, separators=(",", ":")).encode("ascii")
    return Identity(guest_id, "guest", (), base64.urlsafe_b64encode(user).rstrip(b"="))


def guest_secret(settings: Settings) -> bytes:
    name = settings.guest.secret_env
    value = os.environ.get(name, "")
    if len(value.encode("utf-8")) < MIN_SECRET_BYTES:
        state = "is not set" if not value else f"is shorter than {MIN_SECRET_BYTES} bytes"
        raise SettingsError([
            f"guest.secret_env: environment variable {name} {state} "
            f'(guest.mode = "local" signs guest tokens with it)'])
    return value.encode("utf-8")


def _retry_after(now: float, window_start: float) -> int:
    return max(1, int(_WINDOW_S - (now - window_start)) + 1)


class GuestIssuer:
    def __init__(self, settings: Settings, client: AuthClient, store: Store) -> None:
        g = settings.guest
        self.enabled = g.enabled
        self.local = g.mode == "local"
        self._settings = g
        self._client = client
        self._store = store
        self._mark_ttl = max(g.ttl_s, settings.cookies.guest_max_age_s)
        self._secret = guest_secret(settings) if g.enabled and self.local else b""
        self._password = os.environ.get(g.password_env, "") if g.password_env else ""
        self._in_flight = 0
        self._per_client: TTLCache[str, tuple[float, int]] = TTLCache(100_000)
        self._everyone: tuple[float, int] = (time.monotonic(), 0)  # window start, issued
        # token hash -> (identity, exp) of local guest tokens whose signature checked out
        self._verified: dict[bytes, tuple[Identity, float]] = {}

    # ---------------------------------------------------------------- local tokens

    def validate_local(self, token: str) -> Identity | None:
        """A local guest token's identity, or None if forged, expired or not a guest token.

        A guest comes back with the same cookie on every request: a token that passed is
        remembered (by its hash, like the validation cache) until its ``exp``, so the
        signature is checked and the identity built once, not per request."""
        key = token_key(token)
        seen = self._verified.get(key)
        if seen is not None and time.time() < seen[1]:
            return seen[0]
        import jwt  # only local mode needs PyJWT (and, through it, cryptography: ~15 MB RSS)

        try:
            claims = jwt.decode(token, self._secret, algorithms=["HS256"],
                                options={"require": ["exp", "iat", "sub"]})
        except jwt.PyJWTError:
            return None
        sub = claims.get("sub")
        if claims.get("typ") != "guest" or not isinstance(sub, str) or \
                not sub.startswith("guest:"):
            return None
        identity = guest_identity(sub)
        if len(self._verified) >= _VERIFIED_ENTRIES:
            del self._verified[next(iter(self._verified))]  # the oldest
        self._verified[key] = (identity, float(claims["exp"]))
        return identity

    def _sign(self) -> Guest:
        import jwt

        now = int(time.time())
        # Whole seconds (PyJWT truncates), ttl rounded up: a 0.5 s ttl must not be born dead.
        guest_id = f"guest:{uuid.uuid4()}"
        token = jwt.encode({"sub": guest_id, "typ": "guest", "iat": now,
                            "exp": now + math.ceil(self._settings.ttl_s)}, self._secret,
                           algorithm="HS256")
        return Guest(token, guest_identity(guest_id), forward_token=False)

    # ---------------------------------------------------------------- issuance

    async def issue(self, client_ip: str) -> Guest:
        """Raises :class:`GuestLimited` or :class:`BackendUnavailable`."""
        if self.local:
            return self._sign()
        self._admit(client_ip)
        self._in_flight += 1
        try:
            return await self._from_backend()
        finally:
            self._in_flight -= 1

    def _admit(self, client_ip: str) -> None:
        if self._in_flight >= self._settings.max_concurrent:
            raise GuestLimited(1)
        now = time.monotonic()
        start, count = self._per_client.get(client_ip) or (now, 0)
        if now - start >= _WINDOW_S:
            start, count = now, 0
        if count >= self._settings.per_client_per_minute:
            raise GuestLimited(_retry_after(now, start))
        every_start, every_count = self._everyone
        if now - every_start >= _WINDOW_S:
            every_start, every_count = now, 0
        if every_count >= self._settings.per_minute:
            raise GuestLimited(_retry_after(now, every_start))
        self._per_client.set(client_ip, (start, count + 1), _WINDOW_S)
        self._everyone = (every_start, every_count + 1)

    async def _from_backend(self) -> Guest:
        body = None
        if self._settings.username:
            body = {"username": self._settings.username, "password": self._password}
        reply = await self._client.call("POST", self._settings.path, json_body=body,
                                        endpoint="guest")
        token = dig(reply.body, self._settings.token_path) if reply.ok else None
        if not is_token(token):
            raise BackendUnavailable("backend_error", f"guest endpoint answered {reply.status}"
                                     + (" without a usable token" if reply.ok else ""))
        claims = jwt_claims(token) or {}
        sub = claims.get("sub")
        guest_id = sub if isinstance(sub, str) and sub else f"guest:{uuid.uuid4()}"
        if not guest_id.startswith("guest:"):
            guest_id = f"guest:{guest_id}"
        # Remember it as a guest token: presented later in Authorization, where the backend's
        # /auth/me may not say "guest", it must still never pass for a user.
        await self._store.set(GUEST_MARK + token_key(token), b"1", self._mark_ttl,
                              durable=True)
        return Guest(token, guest_identity(guest_id), forward_token=True)
