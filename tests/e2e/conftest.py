"""Fixtures of the real-socket tests beyond tests/conftest.py."""

from __future__ import annotations

import tomllib
from collections.abc import Iterator

import pytest

from gateway.app import create_app
from gateway.settings import settings_from_mapping
from tests.conftest import Backend, RunningGateway
from tests.helpers.proxy import PUBLIC
from tests.servers import ServerThread


@pytest.fixture(scope="module")
def gw(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    """One gateway with the PUBLIC routes (tests/helpers/proxy.py) per test module, shared by
    the proxying tests that need no config of their own (starting and stopping a uvicorn per
    test would dominate their runtime)."""
    data = tomllib.loads(PUBLIC)
    audit_path = tmp_path_factory.mktemp("proxy") / "audit.jsonl"
    data["upstream"] = {"url": backend.url}
    data["audit"] = {"sink": str(audit_path), "flush_interval_s": 0}
    app = create_app(settings_from_mapping(data))
    server = ServerThread(app).start()
    yield RunningGateway(app, server, audit_path)
    server.stop()
