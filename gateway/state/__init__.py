"""Where validation and refresh keep state: per process (memory) or shared (Redis)."""

from __future__ import annotations

from gateway.audit import AuditLog
from gateway.settings import Settings
from gateway.state.base import Store
from gateway.state.memory import MemoryStore

__all__ = ["MemoryStore", "Store", "create_store"]


def create_store(settings: Settings, audit: AuditLog) -> Store:
    if settings.state.backend == "redis":
        from gateway.state.redis import RedisStore

        return RedisStore(settings, audit)
    return MemoryStore(settings.auth.cache_max_entries)
