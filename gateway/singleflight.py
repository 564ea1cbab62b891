"""Single-flight: concurrent calls with the same key share one execution and its result.

Used by validation (one backend check per token) and by refresh (one backend refresh per
credential). The work runs in its own task, so a caller that is cancelled (its client went
away) never strands the others: they still get the result, or the same exception.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

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
