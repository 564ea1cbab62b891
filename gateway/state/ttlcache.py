"""A bounded least-recently-used map whose entries each carry a deadline.

What :class:`gateway.state.memory.MemoryStore` keeps per namespace. Written for the cost of
one entry, since the validation cache holds one per token (``auth.cache_max_entries``,
100,000 by default; benchmarks/cache_memory.py measures it): an entry is the key, one
``(value, deadline)`` tuple and its slot in one ``OrderedDict``, which gives the LRU order
(``move_to_end`` on a hit) and evicts the least recently used entry in O(1) when the bound
is reached. cachetools' ``TLRUCache`` held a heap item object, a second dict and a size table
on top of that: about 220 more bytes per entry.

Expiry is lazy: an entry past its deadline is never returned (``get`` drops it), and every
write first drops the expired entries at the old end of the order, so a stream of new tokens
makes room for itself by retiring the ones whose time is up. An expired entry further in
(one that was read, then never again) is dropped when it reaches that end or is read: it
costs memory for at most about one TTL longer and is never served. At the bound, expired
entries go before any live one, then the least recently used live entry makes room. Finding
the expired ones takes a full pass (~50 ms for 100,000 entries), so it runs only when one can
have expired out of the old end's reach: the cache remembers the earliest deadline of any
entry that went behind a later one (read, or written with a shorter TTL than the entries
before it), and passes at most once per ``_SWEEP_EVERY_S`` seconds. A flood of new keys into
a full cache of live entries never scans it.

The clock is a parameter (``time.monotonic`` by default) so tests move time themselves.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from typing import Generic, TypeVar, cast

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

Clock = Callable[[], float]
_SWEEP_EVERY_S = 1.0


class TTLCache(Generic[K, V]):
    """At most ``max_entries`` live entries; each expires ``ttl_s`` after it was set."""

    __slots__ = ("_clock", "_entries", "_latest", "_max", "_stray", "_swept")

    def __init__(self, max_entries: int, clock: Clock = time.monotonic) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._entries: OrderedDict[K, tuple[V, float]] = OrderedDict()
        self._max = max_entries
        self._clock = clock
        self._swept = -math.inf  # when the last full pass for expired entries ran
        self._latest = -math.inf  # the latest deadline written at the young end so far
        self._stray = math.inf  # the earliest deadline that may sit behind a later one

    def get(self, key: K) -> V | None:
        """The live value under ``key`` (now the most recently used), or None."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        until = entry[1]
        if until <= self._clock():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        if until < self._latest and until < self._stray:
            self._stray = until  # now behind entries that outlive it
        return entry[0]

    def set(self, key: K, value: V, ttl_s: float) -> None:
        """Keep ``value`` for ``ttl_s`` seconds (nothing for ``ttl_s <= 0``), as the most
        recently used entry; the least recently used one makes room at the bound."""
        entries = self._entries
        now = self._clock()
        self._drop_expired(now)
        if ttl_s <= 0:
            entries.pop(key, None)  # like a write that expires at once
            return
        if key in entries:
            entries.move_to_end(key)
        elif len(entries) >= self._max:
            self._make_room(now)
        until = now + ttl_s
        entries[key] = (value, until)
        if until >= self._latest:
            self._latest = until
        elif until < self._stray:
            self._stray = until

    def pop(self, key: K) -> None:
        self._entries.pop(key, None)

    def __contains__(self, key: object) -> bool:
        """Whether a live entry is under ``key`` (does not count as a use)."""
        entry = self._entries.get(cast(K, key))
        return entry is not None and entry[1] > self._clock()

    def __len__(self) -> int:
        """Entries held, after dropping the expired ones at the old end (see the module)."""
        self._drop_expired(self._clock())
        return len(self._entries)

    def __iter__(self) -> Iterator[K]:
        """The keys of the live entries, least recently used first."""
        now = self._clock()
        return iter([key for key, (_v, until) in self._entries.items() if until > now])

    def live(self) -> list[tuple[K, V, float]]:
        """``(key, value, seconds left)`` of every live entry, least recently used first."""
        now = self._clock()
        return [(key, value, until - now) for key, (value, until) in self._entries.items()
                if until > now]

    def _make_room(self, now: float) -> None:
        entries = self._entries
        if self._stray <= now and now - self._swept >= _SWEEP_EVERY_S:
            self._sweep(now)
        if len(entries) >= self._max:
            entries.popitem(last=False)

    def _sweep(self, now: float) -> None:
        """Drop every expired entry; note the earliest deadline still behind a later one."""
        self._swept = now
        entries = self._entries
        latest, stray = -math.inf, math.inf
        expired: list[K] = []
        for key, (_value, until) in entries.items():
            if until <= now:
                expired.append(key)
            elif until >= latest:
                latest = until
            elif until < stray:
                stray = until
        for key in expired:
            del entries[key]
        self._latest, self._stray = latest, stray

    def _drop_expired(self, now: float) -> None:
        entries = self._entries
        while entries:
            key = next(iter(entries))
            if entries[key][1] > now:
                return
            del entries[key]
