"""Single-flight: concurrent calls with the same key share one execution and its result.

Used by validation (one backend check per token) and by refresh (one backend refresh per
credential). The work runs in its own task, so a caller that is cancelled (its client went
away) never strands the others: they still get the result, or the same exception.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

from gateway.state.base import StateUnavailable, Store

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SingleFlight(Generic[K, V]):
    def __init__(self) -> None:
        self._inflight: dict[K, asyncio.Future[V]] = {}

    def __len__(self) -> int:
        return len(self._inflight)

    async def run(self, key: K, work: Callable[[], Awaitable[V]]) -> tuple[V, bool]:
        """Run ``work`` once per ``key`` at a time; returns ``(result, merged)`` where
        ``merged`` is true for callers that joined a flight another caller started."""
        future = self._inflight.get(key)
        merged = future is not None
        if future is None:
            future = asyncio.ensure_future(work())
            self._inflight[key] = future
            future.add_done_callback(lambda _f: self._forget(key, _f))
        return await asyncio.shield(future), merged

    def _forget(self, key: K, future: asyncio.Future[V]) -> None:
        if self._inflight.get(key) is future:
            del self._inflight[key]
        if not future.cancelled():
            future.exception()  # retrieved: no "exception was never retrieved" warning


class SharedFlight:
    """:class:`SingleFlight` across processes: one execution per key among every worker and
    replica that shares ``store``.

    Inside a process, callers merge on a :class:`SingleFlight`. Its leader then claims the key
    in the store: the winner runs the work and publishes the result (bytes) for
    ``result_ttl_s``; a loser polls for that result and never calls the backend itself. If the
    winner fails or dies, its claim is released or expires and a waiter takes over. With a
    store that is not shared (memory), this is exactly :class:`SingleFlight`.

    The claim is short (``claim_ttl_s``) and the winner renews it while it works: a winner
    that dies is replaced within ``claim_ttl_s``, one that is merely slow (a slow backend)
    keeps its claim. A waiter gives up after ``max_wait_s`` with :class:`StateUnavailable`
    (a 503 for its request) rather than wait forever on a claim that keeps being renewed.
    """

    def __init__(self, store: Store, namespace: bytes, *, claim_ttl_s: float = 6.0,
                 poll_s: float = 0.01, result_ttl_s: float = 5.0,
                 max_wait_s: float = 60.0) -> None:
        self._store = store
        self._claim = namespace + b":claim:"
        self._done = namespace + b":done:"
        self._claim_ttl = claim_ttl_s
        self._poll = poll_s
        self._result_ttl = result_ttl_s
        self._max_wait = max_wait_s
        self._local: SingleFlight[bytes, tuple[bytes, bool]] = SingleFlight()

    async def run(self, key: bytes, work: Callable[[], Awaitable[bytes]],
                  recheck: Callable[[], Awaitable[bytes | None]] | None = None
                  ) -> tuple[bytes, bool]:
        """``recheck`` looks again for what the caller looked up before entering the flight
        (a cache or grace entry): between that miss and winning the claim, another process
        may have finished the same work, released its claim and left the result there. It
        runs once the claim is won, before ``work``; a value it finds is the result."""
        (value, remote), merged = await self._local.run(
            key, lambda: self._across(key, work, recheck))
        return value, merged or remote

    async def _across(self, key: bytes, work: Callable[[], Awaitable[bytes]],
                      recheck: Callable[[], Awaitable[bytes | None]] | None
                      ) -> tuple[bytes, bool]:
        store = self._store
        if not store.shared:
            return await work(), False
        claim, done = self._claim + key, self._done + key
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._max_wait
        while True:
            if await store.claim(claim, self._claim_ttl):
                heartbeat = asyncio.ensure_future(self._renew(claim))
                try:
                    found = await recheck() if recheck is not None else None
                    if found is not None:
                        return found, True
                    value = await work()
                    await store.set(done, value, self._result_ttl)
                    return value, False
                finally:
                    heartbeat.cancel()
                    await store.release(claim)
            poll = self._poll
            patience: float | None = None
            while True:  # another process is on it: wait for its result
                await asyncio.sleep(poll)
                poll = min(poll * 1.5, 0.1)
                published = await store.get(done)
                if published is not None:
                    return published, True
                if not await store.held(claim):
                    if store.healthy:
                        break  # it failed or died without a result: try to take over
                    # The store cannot say (suspect or degraded): the winner may still be at
                    # work, and its result come back with the store. Wait up to one claim
                    # lifetime before running the work here too.
                    now = loop.time()
                    patience = now + self._claim_ttl if patience is None else patience
                    if now > patience:
                        break
                if loop.time() > deadline:
                    raise StateUnavailable(f"another process held the claim for more than "
                                           f"{self._max_wait:g}s")
            published = await store.get(done)
            if published is not None:
                return published, True

    async def _renew(self, claim: bytes) -> None:
        """Keep the claim while the work runs; stop once it is no longer ours."""
        while True:
            await asyncio.sleep(self._claim_ttl / 3)
            if not await self._store.renew(claim, self._claim_ttl):
                return
