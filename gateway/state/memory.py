"""Per-process state on cachetools: the default, and Redis's fallback while it is down."""

from __future__ import annotations

import time

from cachetools import TLRUCache

from gateway.state.base import Store


def _expires(_key: bytes, value: tuple[bytes, float], _now: float) -> float:
    return value[1]


class MemoryStore(Store):
    shared = False

    def __init__(self, max_entries: int = 100_000) -> None:
        self._values: TLRUCache[bytes, tuple[bytes, float]] = TLRUCache(
            maxsize=max_entries, ttu=_expires, timer=time.monotonic)
        self._locks: TLRUCache[bytes, tuple[bytes, float]] = TLRUCache(
            maxsize=max_entries, ttu=_expires, timer=time.monotonic)

    def __len__(self) -> int:
        return len(self._values)

    async def get(self, key: bytes) -> bytes | None:
        entry = self._values.get(key)
        return entry[0] if entry is not None else None

    async def set(self, key: bytes, value: bytes, ttl_s: float) -> None:
        if ttl_s > 0:
            self._values[key] = (value, time.monotonic() + ttl_s)

    async def delete(self, key: bytes) -> None:
        self._values.pop(key, None)

    async def claim(self, key: bytes, ttl_s: float) -> bool:
        if key in self._locks:
            return False
        self._locks[key] = (b"", time.monotonic() + ttl_s)
        return True

    async def release(self, key: bytes) -> None:
        self._locks.pop(key, None)

    async def held(self, key: bytes) -> bool:
        return key in self._locks
