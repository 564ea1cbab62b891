"""The ``gateway demo`` stack for tests: the demo backend (its audit reader pointed at the
gateway's audit file) and a gateway with the demo's own config, each on a free port."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gateway.app import create_app
from gateway.demo.run import demo_backend_options, demo_settings
from tests.conftest import Backend
from tests.servers import ServerThread


@dataclasses.dataclass
class DemoStack:
    backend: Backend
    gateway: ServerThread
    audit_log: Path

    @property
    def url(self) -> str:
        return self.gateway.url


@contextlib.contextmanager
def demo_stack(directory: Path, **options: Any) -> Iterator[DemoStack]:
    """What ``gateway demo`` runs, with `options` replacing the demo's `BackendOptions`
    (e.g. a short ``access_ttl_s``); the backend's control API stays reachable for the test."""
    audit_log = directory / "audit.jsonl"
    backend_options = dataclasses.replace(demo_backend_options(str(audit_log)), **options)
    with Backend.start(backend_options) as backend:
        gateway = ServerThread(create_app(demo_settings(backend.url, str(audit_log)))).start()
        try:
            yield DemoStack(backend, gateway, audit_log)
        finally:
            gateway.stop()
