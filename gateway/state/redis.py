"""State shared by every worker and replica, on Redis (``[state] backend = "redis"``).

* Keys are an HMAC of the caller's key (itself a hash of a token), values are AES-GCM
  encrypted: a Redis dump holds no usable token and no way to test a guessed one.
* Redis unreachable: the store keeps serving from a per-process :class:`MemoryStore`, logs
  ``state.degraded`` once per transition, reports unhealthy (``/__gateway/ready`` 503) and
  reconnects by itself, logging ``state.recovered``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import os
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis.asyncio as aioredis
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from gateway.audit import AuditLog
from gateway.settings import Settings, SettingsError
from gateway.state.base import Store
from gateway.state.memory import MemoryStore

MIN_KEY_BYTES = 32
_PREFIX = b"gw:"
_NONCE = 12
_RECHECK_S = 1.0
_TIMEOUT_S = 0.5
_POOL_SIZE = 64
_POOL_WAIT_S = 2.0
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""
_T = TypeVar("_T")


def state_key_material(settings: Settings) -> bytes:
    name = settings.state.key_env
    value = os.environ.get(name, "")
    if len(value.encode("utf-8")) < MIN_KEY_BYTES:
        state = "is not set" if not value else f"is shorter than {MIN_KEY_BYTES} bytes"
        raise SettingsError([f"state.key_env: environment variable {name} {state} "
                             f'(state.backend = "redis" encrypts tokens at rest with it)'])
    return value.encode("utf-8")


class RedisStore(Store):
    shared = True

    def __init__(self, settings: Settings, audit: AuditLog,
                 fallback: MemoryStore | None = None) -> None:
        material = state_key_material(settings)
        self._aead = AESGCM(hashlib.sha256(b"gateway-state-enc\0" + material).digest())
        self._mac_key = hashlib.sha256(b"gateway-state-mac\0" + material).digest()
        # A burst of requests on one worker must queue for a pooled connection, not fail with
        # "too many connections" and be mistaken for an outage: a blocking pool.
        pool = aioredis.BlockingConnectionPool.from_url(
            settings.state.redis_url, max_connections=_POOL_SIZE, timeout=_POOL_WAIT_S,
            socket_timeout=_TIMEOUT_S, socket_connect_timeout=_TIMEOUT_S,
            health_check_interval=0, retry=Retry(NoBackoff(), 0))
        # No retries in the client: a failed operation falls back to per-process state at once
        # and the reconnect loop decides when Redis is back.
        self._redis = aioredis.Redis(connection_pool=pool)
        self._release = self._redis.register_script(_RELEASE)
        self._fallback = fallback or MemoryStore(settings.auth.cache_max_entries)
        self._owner = uuid.uuid4().hex.encode("ascii")
        self._audit = audit
        self._degraded = False
        self._watcher: asyncio.Task[None] | None = None

    # ------------------------------------------------------------ health

    @property
    def healthy(self) -> bool:
        return not self._degraded

    async def start(self) -> None:
        await self.check()

    async def check(self) -> bool:
        """PING Redis now (for ``/__gateway/ready``): an idle replica must notice an outage
        as well as a busy one, and a degraded one its recovery."""
        try:
            await asyncio.wait_for(self._redis.ping(), _TIMEOUT_S)
        except (RedisError, OSError, TimeoutError) as exc:
            self._degrade(exc)
            return False
        self._recover()
        return True

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        await self._redis.aclose()

    def _degrade(self, exc: BaseException) -> None:
        if not self._degraded:
            self._degraded = True
            self._audit.emit("state.degraded", outcome="degraded", backend="redis",
                             reason=type(exc).__name__)
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.ensure_future(self._reconnect())

    async def _reconnect(self) -> None:
        while self._degraded:
            await asyncio.sleep(_RECHECK_S)
            try:
                await asyncio.wait_for(self._redis.ping(), _TIMEOUT_S)
            except (RedisError, OSError, TimeoutError):
                continue
            self._recover()

    def _recover(self) -> None:
        if self._degraded:
            self._degraded = False
            self._audit.emit("state.recovered", outcome="recovered", backend="redis")

    async def _call(self, op: Callable[[], Awaitable[_T]], fallback: Callable[[], Awaitable[_T]]
                    ) -> _T:
        if self._degraded:
            return await fallback()
        try:
            return await op()
        except (RedisError, OSError) as exc:
            self._degrade(exc)
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
            return self._open(sealed) if isinstance(sealed, bytes) else None

        return await self._call(op, lambda: self._fallback.get(key))

    async def set(self, key: bytes, value: bytes, ttl_s: float) -> None:
        if ttl_s <= 0:
            return

        async def op() -> None:
            await self._redis.set(self._key(key), self._seal(value), px=max(1, int(ttl_s * 1000)))

        await self._call(op, lambda: self._fallback.set(key, value, ttl_s))

    async def delete(self, key: bytes) -> None:
        async def op() -> None:
            await self._redis.delete(self._key(key))

        await self._call(op, lambda: self._fallback.delete(key))
        await self._fallback.delete(key)

    async def claim(self, key: bytes, ttl_s: float) -> bool:
        async def op() -> bool:
            taken = await self._redis.set(self._key(key), self._owner, nx=True,
                                          px=max(1, int(ttl_s * 1000)))
            return bool(taken)

        return await self._call(op, lambda: self._fallback.claim(key, ttl_s))

    async def release(self, key: bytes) -> None:
        async def op() -> None:
            await self._release(keys=[self._key(key)], args=[self._owner])

        await self._call(op, lambda: self._fallback.release(key))

    async def held(self, key: bytes) -> bool:
        async def op() -> bool:
            return bool(await self._redis.exists(self._key(key)))

        return await self._call(op, lambda: self._fallback.held(key))
