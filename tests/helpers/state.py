"""Redis-backed stores for the shared-state unit tests (docs/shared-state.md): each started
with its own connection pool and audit file, like a separate worker process, and all closed
at the end of the test."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from gateway.audit import AuditLog
from gateway.settings import Settings
from gateway.state.redis import RedisStore


class Stores:
    """The stores a test started; :meth:`close` stops them and their audit logs."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._stores: list[RedisStore] = []
        self._audits: list[AuditLog] = []

    async def start(self, settings: Settings, *, audit_path: Path | None = None,
                    cls: type[RedisStore] = RedisStore) -> RedisStore:
        """A started store; its audit goes to ``audit_path`` or ``audit-<n>.jsonl``."""
        audit = AuditLog(str(audit_path or self.directory / f"audit-{len(self._stores)}.jsonl"))
        self._audits.append(audit)
        store = cls(settings, audit)
        await store.start()
        self._stores.append(store)
        return store

    def __len__(self) -> int:
        return len(self._stores)

    async def close(self) -> None:
        for store in self._stores:
            await store.close()
        for audit in self._audits:
            audit.close()


async def eventually(predicate: Callable[[], bool], timeout: float = 10) -> None:
    """Poll ``predicate`` every 20 ms until it holds; assert it does after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert predicate()
