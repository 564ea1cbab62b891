"""The state interface: what validation and refresh keep between requests.

Small on purpose: byte values with a TTL, and an atomic claim with expiry. ``shared`` says
whether other processes see the same state (Redis), which is when a claim means something.
"""

from __future__ import annotations

from abc import ABC, abstractmethod


class Store(ABC):
    shared: bool = False

    @abstractmethod
    async def get(self, key: bytes) -> bytes | None: ...

    @abstractmethod
    async def set(self, key: bytes, value: bytes, ttl_s: float) -> None: ...

    @abstractmethod
    async def delete(self, key: bytes) -> None: ...

    @abstractmethod
    async def claim(self, key: bytes, ttl_s: float) -> bool:
        """Take the lock ``key`` for ``ttl_s`` unless someone holds it; True if taken."""

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
    def healthy(self) -> bool:
        return True

    async def check(self) -> bool:
        """Probe the store now; whether it is healthy (readiness)."""
        return self.healthy
