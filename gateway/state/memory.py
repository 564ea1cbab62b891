"""Per-process state: the default, and Redis's fallback while it is down.

Every namespace (the key up to its first ``:``, such as ``validated:`` or ``guest-issued:``)
has its own bound of ``max_entries``: a flood of one kind of entry (junk tokens filling the
validation cache, junk refresh credentials filling remembered rejections) evicts only entries
of its own kind, never a guest mark or a grace entry. Each namespace is a
:class:`gateway.state.ttlcache.TTLCache` (least recently used evicted first, a deadline per
entry), kept small per entry because the validation cache holds one per token.
"""

from __future__ import annotations

import time

from gateway.state.base import Store
from gateway.state.ttlcache import Clock, TTLCache

_Entries = TTLCache[bytes, bytes]


def namespace(key: bytes) -> bytes:
    """The part of ``key`` up to and including its first ``:`` (``b""`` without one: the
    number of namespaces stays that of the callers' fixed prefixes)."""
    cut = key.find(b":")
    return b"" if cut < 0 else key[:cut + 1]


class _Namespaced:
    """One bounded cache per namespace, each bounded on its own."""

    def __init__(self, max_entries: int, clock: Clock) -> None:
        self._max = max_entries
        self._clock = clock
        self._spaces: dict[bytes, _Entries] = {}

    def space(self, key: bytes) -> _Entries:
        found = self._spaces.get(key[:key.find(b":") + 1])  # namespace(), on every cache hit
        if found is None:
            name = namespace(key)
            found = self._spaces[name] = TTLCache(self._max, self._clock)
        return found

    def __len__(self) -> int:
        return sum(len(space) for space in self._spaces.values())

    def spaces(self) -> dict[bytes, _Entries]:
        return self._spaces


class MemoryStore(Store):
    shared = False

    def __init__(self, max_entries: int = 100_000, *, clock: Clock = time.monotonic) -> None:
        self._values = _Namespaced(max_entries, clock)
        self._locks = _Namespaced(max_entries, clock)
        self._durable: set[bytes] = set()  # namespaces written with durable=True

    def __len__(self) -> int:
        return len(self._values)

    async def get(self, key: bytes) -> bytes | None:
        return self._values.space(key).get(key)

    async def set(self, key: bytes, value: bytes, ttl_s: float, *, durable: bool = False
                  ) -> None:
        if ttl_s > 0:
            self._values.space(key).set(key, value, ttl_s)
            if durable:
                self._durable.add(namespace(key))

    async def delete(self, key: bytes) -> None:
        self._values.space(key).pop(key)

    def durable_entries(self) -> list[tuple[bytes, bytes, float]]:
        """Live entries of the durable namespaces: ``(key, value, seconds left)``, for a
        shared store to write back after an outage."""
        found: list[tuple[bytes, bytes, float]] = []
        for name in sorted(self._durable):
            space = self._values.spaces().get(name)
            if space is not None:
                found.extend(space.live())
        return found

    async def claim(self, key: bytes, ttl_s: float) -> bool:
        locks = self._locks.space(key)
        if key in locks:
            return False
        locks.set(key, b"", ttl_s)
        return True

    async def renew(self, key: bytes, ttl_s: float) -> bool:
        locks = self._locks.space(key)
        if key not in locks:
            return False
        locks.set(key, b"", ttl_s)
        return True

    async def release(self, key: bytes) -> None:
        self._locks.space(key).pop(key)

    async def held(self, key: bytes) -> bool:
        return key in self._locks.space(key)
