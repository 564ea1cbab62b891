"""The reference backend that real-socket tests and ``gateway demo`` run behind the gateway."""

from __future__ import annotations

from gateway.demo.backend import (
    DEMO_USERS,
    ENDPOINT_KEYS,
    BackendOptions,
    DemoState,
    DemoUser,
    create_backend,
)

__all__ = [
    "DEMO_USERS",
    "ENDPOINT_KEYS",
    "BackendOptions",
    "DemoState",
    "DemoUser",
    "create_backend",
]
