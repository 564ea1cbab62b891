"""The access log (``[access_log]``, docs/deployment.md#access-log): one JSON line per request,
asserted field by field; never a token, a cookie or a query string value."""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import Backend, MakeGateway, StartGateway
from tests.servers import ServerProcess, free_port

FIELDS = ["event", "timestamp", "request_id", "client_ip", "method", "path", "status",
          "duration_ms", "upstream_ms", "bytes_sent", "user_id", "cache", "access"]
CONFIG = """
[auth]
cache_ttl_s = 60
[[routes]]
match = "/api/public/**"
access = "public"
[access_log]
enabled = true
sink = "{sink}"
"""
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _by_request_id(path: Path, request_id: str) -> dict[str, Any]:
    """The request's one line. It is written when the request's handling ends, which, for the
    last request of a test, can be a moment after the client has its whole answer: waited for
    (bounded), never assumed."""
    deadline = time.monotonic() + 10
    while True:
        found = [line for line in _lines(path) if line["request_id"] == request_id]
        if found or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    [line] = found
    assert list(line) == FIELDS
    assert TIMESTAMP.fullmatch(line["timestamp"]), line
    assert line["client_ip"] == "127.0.0.1"
    assert isinstance(line["duration_ms"], float) and line["duration_ms"] > 0
    return line


def _without_timings(line: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in line.items() if k not in ("timestamp", "duration_ms", "upstream_ms",
                                                       "client_ip")}


async def test_lines_field_by_field(make_gateway: MakeGateway, backend: Backend,
                                    tmp_path: Path) -> None:
    sink = tmp_path / "access.jsonl"
    gateway = make_gateway(CONFIG.format(sink=sink))
    token = backend.token(2)
    secret_query = "query-secret-0123456789"
    secret_cookie = "cookie-secret-0123456789"
    async with gateway.client(timeout=20) as client:
        public = await client.get(f"/api/public/./hello?access_token={secret_query}",
                                  headers={"x-request-id": "public-1"})
        user = {"authorization": f"Bearer {token}", "accept": "application/json"}
        miss = await client.get("/api/items", headers={**user, "x-request-id": "user-miss"})
        hit = await client.get("/api/items", headers={
            **user, "x-request-id": "user-hit", "cookie": f"theme={secret_cookie}"})
        refused = await client.get("/api/items", headers={"accept": "application/json",
                                                          "x-request-id": "anon-401"})
        in_path = await client.get(f"/api/public/reset/{token}",
                                   headers={"x-request-id": "token-in-path"})
    assert public.status_code == miss.status_code == hit.status_code == 200
    assert refused.status_code == 401

    line = _by_request_id(sink, "public-1")
    assert _without_timings(line) == {
        "event": "access", "request_id": "public-1", "method": "GET",
        "path": "/api/public/hello", "status": 200, "bytes_sent": len(public.content),
        "user_id": None, "cache": "none", "access": "public"}
    assert 0 < line["upstream_ms"] <= line["duration_ms"]

    line = _by_request_id(sink, "user-miss")
    assert _without_timings(line) == {
        "event": "access", "request_id": "user-miss", "method": "GET", "path": "/api/items",
        "status": 200, "bytes_sent": len(miss.content), "user_id": "2", "cache": "miss",
        "access": "user"}
    assert 0 < line["upstream_ms"] <= line["duration_ms"]

    line = _by_request_id(sink, "user-hit")
    assert _without_timings(line) == {
        "event": "access", "request_id": "user-hit", "method": "GET", "path": "/api/items",
        "status": 200, "bytes_sent": len(hit.content), "user_id": "2", "cache": "hit",
        "access": "user"}

    line = _by_request_id(sink, "anon-401")
    assert _without_timings(line) == {
        "event": "access", "request_id": "anon-401", "method": "GET", "path": "/api/items",
        "status": 401, "bytes_sent": len(refused.content), "user_id": None, "cache": "none",
        "access": "user"}
    assert line["upstream_ms"] is None  # never forwarded

    line = _by_request_id(sink, "token-in-path")
    assert (line["path"], line["status"]) == ("/api/public/reset/[redacted]",
                                              in_path.status_code)

    text = sink.read_text(encoding="utf-8")
    for secret in (secret_query, secret_cookie, token, "access_token", "Bearer"):
        assert secret not in text
    assert len(_lines(sink)) == 5


async def test_upstream_errors_and_bad_paths(make_gateway: MakeGateway, tmp_path: Path) -> None:
    sink = tmp_path / "access.jsonl"
    gateway = make_gateway(CONFIG.format(sink=sink), upstream=f"http://127.0.0.1:{free_port()}")
    async with gateway.client(timeout=20) as client:
        down = await client.post("/api/public/upload", content=b"x" * 10,
                                 headers={"x-request-id": "down-1"})
        bad = await client.get("/api/a%00b?q=1", headers={"x-request-id": "bad-1"})
        own = await client.get("/__gateway/health", headers={"x-request-id": "own-1"})
    assert down.status_code == 502 and bad.status_code == 400 and own.status_code == 200

    line = _by_request_id(sink, "down-1")
    assert _without_timings(line) == {
        "event": "access", "request_id": "down-1", "method": "POST",
        "path": "/api/public/upload", "status": 502, "bytes_sent": len(down.content),
        "user_id": None, "cache": "none", "access": "public"}
    assert line["upstream_ms"] is not None and line["upstream_ms"] <= line["duration_ms"]

    line = _by_request_id(sink, "bad-1")
    assert _without_timings(line) == {
        "event": "access", "request_id": "bad-1", "method": "GET", "path": None, "status": 400,
        "bytes_sent": len(bad.content), "user_id": None, "cache": "none", "access": "none"}

    line = _by_request_id(sink, "own-1")
    assert (line["path"], line["access"], line["status"]) == ("/__gateway/health", "gateway",
                                                              200)


def test_off_by_default_and_on_stdout_under_serve(tmp_path: Path, backend: Backend) -> None:
    """``gateway serve`` writes no access line unless asked; with ``sink = "stdout"`` each
    request is one line there (the audit stream here goes to a file)."""
    outputs: dict[bool, str] = {}
    for enabled in (False, True):
        config = tmp_path / f"gateway-{enabled}.toml"
        extra = '[access_log]\nenabled = true\nsink = "stdout"\n' if enabled else ""
        config.write_text(
            f'[upstream]\nurl = "{backend.url}"\n[audit]\nsink = "{tmp_path}/audit.jsonl"\n'
            f'[[routes]]\nmatch = "/api/public/**"\naccess = "public"\n{extra}',
            encoding="utf-8")
        port = free_port()
        server = ServerProcess([sys.executable, "-m", "gateway", "serve", "--config",
                                str(config), "--port", str(port)], port).start(timeout=60)
        try:
            reply = httpx.get(server.url + "/api/public/hello?token=abc",
                              headers={"x-request-id": f"serve-{enabled}"}, timeout=20)
            assert reply.status_code == 200
        finally:
            outputs[enabled] = server.stop()
    assert '"event":"access"' not in outputs[False]
    lines = [json.loads(line) for line in outputs[True].splitlines()
             if line.startswith('{"event":"access"')]
    [line] = [line for line in lines if line["request_id"] == "serve-True"]
    assert (line["path"], line["status"], line["access"]) == ("/api/public/hello", 200, "public")
    assert "token=abc" not in outputs[True]


async def test_login_lines_name_the_user(start: StartGateway, tmp_path: Path) -> None:
    sink = tmp_path / "access.jsonl"
    gateway = start("next-api-layer", {"access_log": {"enabled": True, "sink": str(sink)}})
    password = "wrong-password-9c1e"
    async with gateway.client(timeout=20) as client:
        failed = await client.post("/auth/login", headers={"x-request-id": "login-bad"},
                                   json={"email": "demo@example.com", "password": password})
        ok = await client.post("/auth/login", headers={"x-request-id": "login-ok"},
                               json={"email": "demo@example.com", "password": "demo-password"})
    assert (failed.status_code, ok.status_code) == (401, 200)
    line = _by_request_id(sink, "login-bad")
    assert (line["path"], line["status"], line["user_id"], line["access"]) == (
        "/auth/login", 401, None, "public")
    line = _by_request_id(sink, "login-ok")
    assert (line["status"], line["user_id"], line["bytes_sent"]) == (200, "1", len(ok.content))
    assert line["upstream_ms"] is not None
    assert password not in sink.read_text(encoding="utf-8")
