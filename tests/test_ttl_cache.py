"""Unit tests of the per-process cache structure (gateway/state/ttlcache.py) and of the
MemoryStore built on it: deadlines, the bound's eviction order, namespace isolation. Time is
a fake clock the tests move: nothing depends on how fast this machine is."""

from __future__ import annotations

import pytest

from gateway.state import MemoryStore
from gateway.state.ttlcache import TTLCache


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


# -- TTLCache ------------------------------------------------------------------------------------


def test_an_entry_lives_exactly_its_ttl(clock: FakeClock) -> None:
    cache: TTLCache[bytes, bytes] = TTLCache(10, clock)
    cache.set(b"k", b"v", 2.0)
    clock.advance(1.999)
    assert cache.get(b"k") == b"v"
    assert b"k" in cache
    clock.advance(0.001)  # the deadline itself: gone
    assert cache.get(b"k") is None
    assert b"k" not in cache
    assert len(cache) == 0


def test_reading_does_not_extend_the_deadline(clock: FakeClock) -> None:
    cache: TTLCache[bytes, bytes] = TTLCache(10, clock)
    cache.set(b"k", b"v", 2.0)
    for _ in range(3):
        clock.advance(0.5)
        assert cache.get(b"k") == b"v"
    clock.advance(0.5)
    assert cache.get(b"k") is None


def test_a_new_set_replaces_value_and_deadline(clock: FakeClock) -> None:
    cache: TTLCache[bytes, bytes] = TTLCache(10, clock)
    cache.set(b"k", b"old", 1.0)
    clock.advance(0.9)
    cache.set(b"k", b"new", 1.0)
    clock.advance(0.9)
    assert cache.get(b"k") == b"new"
    assert len(cache) == 1


def test_zero_ttl_keeps_nothing(clock: FakeClock) -> None:
    cache: TTLCache[bytes, bytes] = TTLCache(10, clock)
    cache.set(b"k", b"v", 0)
    assert cache.get(b"k") is None
    assert len(cache) == 0


def test_the_bound_evicts_the_least_recently_used(clock: FakeClock) -> None:
    cache: TTLCache[bytes, bytes] = TTLCache(3, clock)
    for key in (b"a", b"b", b"c"):
        cache.set(key, key, 60)
    assert cache.get(b"a") == b"a"  # a is now the most recently used: b is the oldest
    cache.set(b"d", b"d", 60)
    assert list(cache) == [b"c", b"a", b"d"]
    cache.set(b"c", b"c2", 60)  # a write is a use too: a is the oldest now
    cache.set(b"e", b"e", 60)
    assert list(cache) == [b"d", b"c", b"e"]
    assert cache.get(b"c") == b"c2"
    assert len(cache) == 3


def test_at_the_bound_expired_entries_go_before_live_ones(clock: FakeClock) -> None:
    """An entry that expired deep in the order (it was read, so moved to the young end) is
    dropped rather than the least recently used live entry."""
    cache: TTLCache[bytes, bytes] = TTLCache(3, clock)
    cache.set(b"short", b"s", 1.0)
    cache.set(b"live1", b"1", 60)
    cache.set(b"live2", b"2", 60)
    assert cache.get(b"short") == b"s"  # order now: live1, live2, short
    clock.advance(2)
    cache.set(b"new", b"n", 60)
    assert list(cache) == [b"live1", b"live2", b"new"]


def test_at_the_bound_a_shorter_ttl_written_late_goes_first(clock: FakeClock) -> None:
    cache: TTLCache[bytes, bytes] = TTLCache(3, clock)
    cache.set(b"long1", b"1", 60)
    cache.set(b"long2", b"2", 60)
    cache.set(b"short", b"s", 1.0)  # behind entries that outlive it
    clock.advance(2)
    cache.set(b"new", b"n", 60)
    assert list(cache) == [b"long1", b"long2", b"new"]


def test_a_flood_into_a_full_cache_of_live_entries_never_scans_it(clock: FakeClock) -> None:
    """In deadline order (same TTL, no reads) the old end is always the first to expire:
    the bound evicts there without a full pass."""
    cache: TTLCache[bytes, bytes] = TTLCache(100, clock)
    for n in range(1000):
        cache.set(b"%d" % n, b"v", 60)
        clock.advance(0.5)
    assert cache._swept == -float("inf")  # no full pass was ever made
    assert next(iter(cache)) == b"900" and len(cache) == 100


def test_writes_retire_expired_entries_at_the_old_end(clock: FakeClock) -> None:
    """A stream of new keys makes room for itself: what expired is not kept around."""
    cache: TTLCache[bytes, bytes] = TTLCache(1000, clock)
    for n in range(500):
        clock.advance(1)
        cache.set(b"%d" % n, b"v", 200)
    # 500 s of writes, each living 200 s: only the last 200 s's worth are held.
    assert len(cache._entries) == 200
    assert len(cache) == 200


def test_live_lists_what_is_left_and_for_how_long(clock: FakeClock) -> None:
    cache: TTLCache[bytes, bytes] = TTLCache(10, clock)
    cache.set(b"a", b"1", 10)
    cache.set(b"b", b"2", 1)
    clock.advance(2)
    assert cache.live() == [(b"a", b"1", 8.0)]


def test_pop_of_a_missing_key_is_no_error(clock: FakeClock) -> None:
    cache: TTLCache[bytes, bytes] = TTLCache(10, clock)
    cache.pop(b"missing")
    cache.set(b"k", b"v", 1)
    cache.pop(b"k")
    assert cache.get(b"k") is None


def test_the_bound_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_entries"):
        TTLCache(0)


# -- MemoryStore on it ---------------------------------------------------------------------------


async def test_store_values_and_locks_follow_the_clock(clock: FakeClock) -> None:
    store = MemoryStore(10, clock=clock)
    await store.set(b"validated:k", b"user", 2.0)
    assert await store.claim(b"validate:claim:k", 6.0)
    clock.advance(1.9)
    assert await store.get(b"validated:k") == b"user"
    assert await store.held(b"validate:claim:k")
    clock.advance(0.1)
    assert await store.get(b"validated:k") is None
    assert await store.renew(b"validate:claim:k", 6.0)
    clock.advance(5.9)
    assert await store.held(b"validate:claim:k")  # renewed 5.9 s ago for 6 s
    clock.advance(0.1)
    assert not await store.held(b"validate:claim:k")
    assert not await store.renew(b"validate:claim:k", 6.0)  # not ours any more
    assert await store.claim(b"validate:claim:k", 6.0)


async def test_a_flood_of_one_namespace_keeps_the_others(clock: FakeClock) -> None:
    store = MemoryStore(100, clock=clock)
    await store.set(b"guest-issued:g", b"1", 60, durable=True)
    await store.set(b"validated:hot", b"user", 60)
    for n in range(1000):
        await store.set(b"validated:junk%d" % n, b"!", 60)
        if n % 10 == 0:
            assert await store.get(b"validated:hot") == b"user"  # kept in use: kept
    assert await store.get(b"guest-issued:g") == b"1"
    assert await store.get(b"validated:junk0") is None
    assert await store.get(b"validated:junk999") == b"!"
    assert len(store) == 1 + 100


async def test_durable_entries_are_the_live_marks_with_their_time_left(clock: FakeClock
                                                                       ) -> None:
    store = MemoryStore(10, clock=clock)
    await store.set(b"grace:a", b"tokens", 30, durable=True)
    await store.set(b"grace:b", b"tokens", 5, durable=True)
    await store.set(b"validated:x", b"user", 60)  # not durable: never written back
    clock.advance(10)
    assert store.durable_entries() == [(b"grace:a", b"tokens", 20.0)]
