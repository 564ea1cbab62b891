"""State shared by every worker and replica, on Redis (``[state] backend = "redis"``).

* Keys are an HMAC of the caller's key (itself a hash of a token), values are AES-GCM
  encrypted: a Redis dump holds no usable token and no way to test a guessed one.
* Redis slow or unreachable: a designed state machine (docs/shared-state.md), per process::

      healthy --op fails--> suspect --probe fails--> degraded --probe answers--> recovering
         ^                     |                                                   |
         |                     +--probe answers--> recovering --settle_s--> healthy+

  ``suspect``: an operation failed or timed out; a PING on a connection of its own confirms
  or clears it, so one event-loop stall or one exhausted pool is not an outage. ``degraded``:
  Redis confirmed gone; operations are served from a per-process :class:`MemoryStore` at
  once; a jittered probe looks for Redis every ``recheck_s``. Leaving either, the store first
  writes back its durable marks (grace entries, guest marks, remembered rejections: this
  process keeps a copy of each) and sets a shared "unsettled" marker with a Redis-side TTL of
  ``settle_s``; it is ``recovering`` (not ``trusted``) until that much time has passed here.
* While any of this is going on, a refresh rejection cannot be told apart from the echo of
  another replica's rotation: :mod:`gateway.refresh` answers it 503 instead of logging out.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import os
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from gateway.audit import AuditLog
from gateway.settings import Settings, SettingsError, sentinel_address
from gateway.state.base import Store, StoreState
from gateway.state.memory import MemoryStore

MIN_KEY_BYTES = 32
_PREFIX = b"gw:"
_UNSETTLED = b"state:unsettled"
_ALIVE = b"alive:"  # + owner: each process's liveness key (see _heartbeat)
_ALIVE_BEATS = 30  # the liveness key outlives this many missed heartbeats
_NONCE = 12
_POOL_SIZE = 64
_RESYNC_BATCH = 500
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""
_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
return 0
"""
_FAILURES = (RedisError, OSError, TimeoutError)
_T = TypeVar("_T")
_jitter = random.SystemRandom()


class RedisDataLost(Exception):
    """Redis answers, but without the keys this process wrote (restarted empty)."""


def state_key_material(settings: Settings) -> bytes:
    name = settings.state.key_env
    value = os.environ.get(name, "")
    if len(value.encode("utf-8")) < MIN_KEY_BYTES:
        state = "is not set" if not value else f"is shorter than {MIN_KEY_BYTES} bytes"
        raise SettingsError([f"state.key_env: environment variable {name} {state} "
                             f'(state.backend = "redis" encrypts tokens at rest with it)'])
    return value.encode("utf-8")


def redis_password(settings: Settings) -> str | None:
    """The Redis password from ``state.password_env`` (None when that key is not set)."""
    name = settings.state.password_env
    if not name:
        return None
    value = os.environ.get(name, "")
    if not value:
        raise SettingsError([f"state.password_env: environment variable {name} is not set"])
    return value


def _connection_options(settings: Settings) -> dict[str, Any]:
    state = settings.state
    options: dict[str, Any] = {
        "socket_timeout": state.timeout_s, "socket_connect_timeout": state.timeout_s,
        "health_check_interval": 0,
        # One immediate retry on a broken connection only (a pooled connection that died
        # with a Redis restart), never on a timeout: the state machine decides what a slow
        # Redis means.
        "retry": Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
    }
    password = redis_password(settings)
    if password is not None:
        options["password"] = password
    if state.tls_ca_file:
        options["ssl_ca_certs"] = state.tls_ca_file
    return options


def _clients(settings: Settings) -> tuple[aioredis.Redis, aioredis.Redis]:
    """The client for operations and the probe's own (a pool drained by a burst cannot fail
    the probe). With ``state.sentinels`` both find the master through the Sentinels and
    follow a failover; ``redis_url`` then only says TLS (``rediss://``) and the database."""
    state = settings.state
    options = _connection_options(settings)
    if state.sentinels:
        from redis.asyncio.sentinel import Sentinel

        parts = urlsplit(state.redis_url)
        options["db"] = int(parts.path.strip("/") or 0)
        if parts.scheme == "rediss":
            options["ssl"] = True
        addresses = [sentinel_address(a) for a in state.sentinels]
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            [a for a in addresses if a is not None],
            sentinel_kwargs={"socket_timeout": state.timeout_s,
                             "socket_connect_timeout": state.timeout_s},
            **options)
        return (sentinel.master_for(state.sentinel_service),
                sentinel.master_for(state.sentinel_service))
    # A burst of requests on one worker must queue for a pooled connection, not fail with
    # "too many connections": a blocking pool, waited on longer than one operation.
    pool = aioredis.BlockingConnectionPool.from_url(
        state.redis_url, max_connections=_POOL_SIZE, timeout=2 * state.timeout_s, **options)
    return (aioredis.Redis(connection_pool=pool),
            aioredis.Redis.from_url(state.redis_url, max_connections=2, **options))


class RedisStore(Store):
    shared = True

    def __init__(self, settings: Settings, audit: AuditLog,
                 fallback: MemoryStore | None = None) -> None:
        material = state_key_material(settings)
        self._aead = AESGCM(hashlib.sha256(b"gateway-state-enc\0" + material).digest())
        self._mac_key = hashlib.sha256(b"gateway-state-mac\0" + material).digest()
        state = settings.state
        self._timeout = state.timeout_s
        self._recheck = state.recheck_s
        self._settle = state.settle_s
        self._redis, self._probe_client = _clients(settings)
        self._release = self._redis.register_script(_RELEASE)
        self._renew = self._redis.register_script(_RENEW)
        self._fallback = fallback or MemoryStore(settings.auth.cache_max_entries)
        self._owner = uuid.uuid4().hex.encode("ascii")
        self._audit = audit
        self._state: StoreState = "healthy"
        self._settled_at = 0.0
        self._incidents = 0
        self._watcher: asyncio.Task[None] | None = None
        self._heart: asyncio.Task[None] | None = None
        # Our own liveness key: if it vanishes before its TTL, Redis lost its data (a restart
        # without persistence, a flush, a failover to an empty replica) and with it the
        # grace entries this process wrote; connection errors alone do not tell (redis-py
        # reconnects on its own).
        self._alive = _PREFIX + _ALIVE + self._owner  # a random name, no token in it
        self._alive_written = False

    # ------------------------------------------------------------ the state machine

    @property
    def state(self) -> StoreState:
        if self._state == "recovering" and time.monotonic() >= self._settled_at:
            self._state = "healthy"
        return self._state

    @property
    def incidents(self) -> int:
        return self._incidents

    async def start(self) -> None:
        await self.check()
        self._heart = asyncio.ensure_future(self._heartbeat())

    async def _heartbeat(self) -> None:
        """Every ``recheck_s`` (jittered): refresh our liveness key and notice when Redis
        has lost it, or is gone, even with no traffic."""
        ttl_ms = max(1000, int(self._recheck * 1000 * _ALIVE_BEATS))
        first = True
        while True:
            if not first:
                await asyncio.sleep(self._recheck * _jitter.uniform(0.5, 1.5))
            first = False
            if self.state not in ("healthy", "recovering"):
                continue
            try:
                before = await asyncio.wait_for(
                    self._probe_client.set(self._alive, self._seal(b"1"), px=ttl_ms, get=True),
                    self._timeout)
            except _FAILURES as exc:
                self._failed(exc)
                continue
            if before is None and self._alive_written:
                self._failed(RedisDataLost("Redis lost this process's keys"))
            self._alive_written = True

    async def check(self) -> bool:
        """PING Redis now (for ``/__gateway/ready``): an idle replica must notice an outage
        as well as a busy one. A failed PING starts the same confirmation as a failed
        operation; a degraded store is left by its own probe, after its write-back."""
        if self.state != "degraded":
            try:
                await self._ping()
            except _FAILURES as exc:
                self._failed(exc)
        return self.healthy

    async def close(self) -> None:
        for task in (self._watcher, self._heart):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._redis.aclose()
        await self._probe_client.aclose()

    async def _ping(self) -> None:
        await asyncio.wait_for(self._probe_client.ping(), self._timeout)

    def _failed(self, exc: BaseException) -> None:
        """An operation failed or timed out: every caller with work in progress must learn
        that some answer may have come from per-process state."""
        self._incidents += 1
        if self.state in ("healthy", "recovering"):
            self._state = "suspect"
            self._audit.emit("state.suspect", outcome="suspect", backend="redis",
                             reason=type(exc).__name__)
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.ensure_future(self._watch())

    async def _watch(self) -> None:
        """Confirm a suspicion (one PING), then, degraded, probe with jitter until Redis
        answers and the write-back is done: many workers and replicas coming back at once
        spread their reconnects instead of hitting Redis together."""
        reason = ""
        while True:
            try:
                await self._ping()
                await self._resync()
                # Pooled connections idle since before a restart are dead: drop them now
                # rather than let each fail one request and raise a new suspicion.
                await self._redis.connection_pool.disconnect(inuse_connections=False)
            except _FAILURES as exc:
                reason = type(exc).__name__
            else:
                self._recovered()
                return
            if self._state != "degraded":
                self._state = "degraded"
                self._incidents += 1
                self._audit.emit("state.degraded", outcome="degraded", backend="redis",
                                 reason=reason)
            await asyncio.sleep(self._recheck * _jitter.uniform(0.5, 1.5))

    def _recovered(self) -> None:
        was = self._state
        self._state = "recovering"
        self._settled_at = time.monotonic() + self._settle
        self._incidents += 1
        if was == "degraded":
            self._audit.emit("state.recovered", outcome="recovered", backend="redis",
                             settle_s=self._settle)

    async def _resync(self) -> None:
        """Tell every process sharing Redis that rejections are not to be trusted for
        ``settle_s`` (a TTL kept by Redis, so no two hosts' clocks are compared), then write
        back this process's durable marks that Redis lacks (lost in a restart, or written
        while it was away). ``NX``: an entry another process wrote meanwhile wins."""
        client = self._probe_client
        if self._settle > 0:
            await asyncio.wait_for(client.set(self._key(_UNSETTLED), self._seal(b"1"),
                                              px=max(1, int(self._settle * 1000))),
                                   self._timeout)
        entries = self._fallback.durable_entries()
        for start in range(0, len(entries), _RESYNC_BATCH):
            pipe = client.pipeline(transaction=False)
            for key, value, left in entries[start:start + _RESYNC_BATCH]:
                pipe.set(self._key(key), self._seal(value), px=max(1, int(left * 1000)), nx=True)
            await asyncio.wait_for(pipe.execute(), self._timeout)

    async def unsettled(self) -> bool:
        if not self.trusted:
            return True
        try:
            return await self._redis.exists(self._key(_UNSETTLED)) > 0
        except _FAILURES as exc:
            self._failed(exc)
            return True

    async def _call(self, op: Callable[[], Awaitable[_T]], fallback: Callable[[], Awaitable[_T]]
                    ) -> _T:
        if self.state == "degraded":
            return await fallback()
        try:
            return await op()
        except _FAILURES as exc:
            self._failed(exc)
            return await fallback()

    # ------------------------------------------------------------ keys and values

    def _key(self, key: bytes) -> bytes:
        return _PREFIX + hmac.new(self._mac_key, key, hashlib.sha256).hexdigest().encode()

    def _seal(self, value: bytes) -> bytes:
        nonce = os.urandom(_NONCE)
        return nonce + self._aead.encrypt(nonce, value, None)

    def _open(self, sealed: bytes) -> bytes | None:
        try:
            return self._aead.decrypt(sealed[:_NONCE], sealed[_NONCE:], None)
        except (InvalidTag, ValueError):
            return None  # written with another key: as good as absent

    # ------------------------------------------------------------ Store

    async def get(self, key: bytes) -> bytes | None:
        async def op() -> bytes | None:
            sealed = await self._redis.get(self._key(key))
            found = self._open(sealed) if isinstance(sealed, bytes) else None
            if found is None and not self.trusted:
                # Suspect or recovering: Redis may have lost what this process wrote.
                return await self._fallback.get(key)
            return found

        return await self._call(op, lambda: self._fallback.get(key))

    async def set(self, key: bytes, value: bytes, ttl_s: float, *, durable: bool = False
                  ) -> None:
        if ttl_s <= 0:
            return
        if durable:  # the per-process copy that a write-back restores from
            await self._fallback.set(key, value, ttl_s, durable=True)

        async def op() -> None:
            await self._redis.set(self._key(key), self._seal(value), px=max(1, int(ttl_s * 1000)))

        async def local() -> None:
            if not durable:
                await self._fallback.set(key, value, ttl_s)

        await self._call(op, local)

    async def delete(self, key: bytes) -> None:
        async def op() -> None:
            await self._redis.delete(self._key(key))

        await self._fallback.delete(key)
        await self._call(op, lambda: self._fallback.delete(key))

    async def claim(self, key: bytes, ttl_s: float) -> bool:
        async def op() -> bool:
            taken = await self._redis.set(self._key(key), self._owner, nx=True,
                                          px=max(1, int(ttl_s * 1000)))
            return bool(taken)

        return await self._call(op, lambda: self._fallback.claim(key, ttl_s))

    async def renew(self, key: bytes, ttl_s: float) -> bool:
        async def op() -> bool:
            renewed = await self._renew(keys=[self._key(key)],
                                        args=[self._owner, max(1, int(ttl_s * 1000))])
            return bool(renewed)

        return await self._call(op, lambda: self._fallback.renew(key, ttl_s))

    async def release(self, key: bytes) -> None:
        async def op() -> None:
            await self._release(keys=[self._key(key)], args=[self._owner])

        await self._fallback.release(key)
        await self._call(op, lambda: self._fallback.release(key))

    async def held(self, key: bytes) -> bool:
        async def op() -> bool:
            return bool(await self._redis.exists(self._key(key)))

        return await self._call(op, lambda: self._fallback.held(key))
