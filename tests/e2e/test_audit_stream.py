"""The audit stream over real sockets: cache hits counted in the metrics but not written by
default, and buffered lines that survive a SIGTERM of ``gateway serve``."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from tests.conftest import Backend, MakeGateway
from tests.servers import ServerProcess, free_port, python_module

ROUTES = """
[[routes]]
match = "/api/public/**"
access = "public"

[default_route]
access = "user"
unauthenticated = "401"
"""


def _samples(text: str) -> dict[str, float]:
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line and not line.startswith("#")}


def test_cache_hits_are_counted_in_metrics_not_written(make_gateway: MakeGateway,
                                                      backend: Backend) -> None:
    gateway = make_gateway(ROUTES)
    token = backend.token(1)
    with httpx.Client(base_url=gateway.url) as client:
        replies = [client.get("/api/items", headers={"authorization": f"Bearer {token}"})
                   for _ in range(5)]
        metrics = _samples(client.get("/__gateway/metrics").text)
    assert [r.status_code for r in replies] == [200] * 5
    assert [e["cache"] for e in gateway.events("auth.validated")] == ["miss"]
    assert metrics['gateway_auth_events_total{event="auth.validated",outcome="valid"}'] == 5


def test_sigterm_writes_every_buffered_event(tmp_path: Path, backend: Backend) -> None:
    """With a flush timer far longer than the test, every event is still in memory when
    SIGTERM arrives: the shutdown writes all of them."""
    audit = tmp_path / "audit.jsonl"
    config = tmp_path / "gateway.toml"
    config.write_text(ROUTES + f"""
[upstream]
url = "{backend.url}"

[audit]
sink = "{audit}"
flush_interval_s = 60
""")
    port = free_port()
    gateway = ServerProcess(python_module("gateway", "serve", "--config", str(config),
                                          "--port", str(port)), port)
    gateway.start(timeout=30)
    try:
        token = backend.token(1)
        with httpx.Client(base_url=gateway.url, timeout=10) as client:
            for i in range(40):
                headers = {"x-request-id": f"req-{i}", "accept": "application/json"}
                if i % 2:
                    headers["authorization"] = f"Bearer {token}"
                assert client.get("/api/items", headers=headers).status_code in (200, 401)
        held = audit.read_text() if audit.exists() else ""
    finally:
        output = gateway.stop()  # SIGTERM, then waits for the exit
    # uvicorn shuts down (lifespan) and then re-raises the signal: -15 is a clean exit.
    assert gateway.proc is not None and gateway.proc.returncode in (0, -15), output
    assert "Application shutdown complete" in output
    assert held == ""  # nothing was written before the shutdown: the lines were buffered
    events = [json.loads(line) for line in audit.read_text().splitlines()]
    denied = {e["request_id"] for e in events if e["event"] == "auth.denied"}
    validated = [e for e in events if e["event"] == "auth.validated"]
    assert denied == {f"req-{i}" for i in range(0, 40, 2)}
    assert [e["cache"] for e in validated] == ["miss"]  # the hits are counted, not written
    assert token not in audit.read_text()
