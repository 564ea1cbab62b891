"""The state interface: what validation and refresh keep between requests.

Small on purpose: byte values with a TTL, and an atomic claim with expiry. ``shared`` says
whether other processes see the same state (Redis), which is when a claim means something.

A shared store can be slow or unreachable. What callers need to know then (see
docs/shared-state.md) is whether what the store told them during some stretch of work can be
trusted: ``incidents`` counts the store's failures in this process, ``trusted`` is false
while the store is suspect, degraded or recovering, and :meth:`Store.unsettled` asks whether
any process sharing the store has had trouble recently. A refresh rejection is only taken as
the end of a session when none of them says otherwise.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Literal

StoreState = Literal["healthy", "suspect", "degraded", "recovering"]


class StateUnavailable(Exception):
    """The shared store could not settle a question in time (a flight's claim held past the
    bounded wait): no verdict, answered like a backend outage (503, cookies untouched)."""


class Store(ABC):
    shared: bool = False

    @abstractmethod
    async def get(self, key: bytes) -> bytes | None: ...

    @abstractmethod
    async def set(self, key: bytes, value: bytes, ttl_s: float, *, durable: bool = False
                  ) -> None:
        """``durable``: a security mark (grace entry, guest mark, remembered rejection) that
        cache traffic must never evict and that a shared store keeps a per-process copy of,
        written back after an outage or a restart that lost it."""

    @abstractmethod
    async def delete(self, key: bytes) -> None: ...

    @abstractmethod
    async def claim(self, key: bytes, ttl_s: float) -> bool:
        """Take the lock ``key`` for ``ttl_s`` unless someone holds it; True if taken."""

    @abstractmethod
    async def renew(self, key: bytes, ttl_s: float) -> bool:
        """Extend a lock this process holds to ``ttl_s`` from now; False if it is not ours
        any more (expired, taken over)."""

    @abstractmethod
    async def release(self, key: bytes) -> None:
        """Give back a lock this process took (never someone else's)."""

    @abstractmethod
    async def held(self, key: bytes) -> bool:
        """Whether anyone holds the lock ``key``."""

    async def start(self) -> None:  # noqa: B027 - optional hook
        pass

    async def close(self) -> None:  # noqa: B027 - optional hook
        pass

    @property
    def state(self) -> StoreState:
        return "healthy"

    @property
    def healthy(self) -> bool:
        """Whether the store answers (readiness): not suspect, not degraded."""
        return self.state in ("healthy", "recovering")

    @property
    def trusted(self) -> bool:
        """Whether a miss in this store can be believed right now (state ``healthy``)."""
        return self.state == "healthy"

    @property
    def incidents(self) -> int:
        """Failed store operations and state changes in this process so far: a caller that
        sees it change during its work knows some answer it got may have been a fallback."""
        return 0

    async def unsettled(self) -> bool:
        """Whether any process sharing this store had trouble with it recently (or the store
        cannot say right now)."""
        return False

    async def check(self) -> bool:
        """Probe the store now; whether it is healthy (readiness)."""
        return self.healthy
