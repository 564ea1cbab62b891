"""The reference backend that real-socket tests and ``gateway demo`` run behind the gateway."""

from __future__ import annotations

from gateway.demo.backend import create_backend
from gateway.demo.control import create_control
from gateway.demo.state import (
    DEMO_USERS,
    ENDPOINT_KEYS,
    BackendOptions,
    DemoState,
    DemoUser,
)

__all__ = [
    "DEMO_USERS",
    "ENDPOINT_KEYS",
    "BackendOptions",
    "DemoState",
    "DemoUser",
    "create_backend",
    "create_control",
]
