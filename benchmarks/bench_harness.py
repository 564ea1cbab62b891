"""The processes and the load the smaller benchmark scripts share.

``proxy_bench.py``, ``forward_auth_bench.py``, ``proxy_memory.py`` and ``head_memory.py`` each
run a gateway (``python -m gateway serve``) in front of an upstream, both as subprocesses: the
reference backend (``gateway.demo``) or the small pure-ASGI upstream below. They are started
and stopped by ``tests/servers.py``'s ``ServerProcess`` (ready when a path answers; output kept
in a file; stopped by pid), the same class the test suite and ``suite.py`` use. ``wrk()`` runs
Debian's ``wrk`` once and reads its numbers (``suite.py`` keeps its own, with Lua scripts and
CPU accounting).
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.servers import ServerProcess, free_port  # noqa: E402

__all__ = ["ROOT", "TOKEN", "UPSTREAM", "WrkRun", "demo_backend_server", "free_port",
           "gateway_config", "gateway_server", "running", "upstream_server", "wrk"]

# The one token the small upstream's /auth/me accepts.
TOKEN = "bench-token-0123456789abcdef"
# The small upstream: /auth/me for TOKEN, a ~200-byte JSON body on every other path.
UPSTREAM = textwrap.dedent(f'''
    import json
    BODY = json.dumps({{"items": [{{"id": i, "name": "item-%d" % i}} for i in range(6)]}}).encode()
    ME = json.dumps({{"success": True, "data": {{"id": 1, "roles": ["user"]}}}}).encode()

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        if scope["path"] == "/auth/me":
            auth = dict(scope["headers"]).get(b"authorization", b"")
            ok = auth == b"Bearer {TOKEN}"
            await send({{"type": "http.response.start", "status": 200 if ok else 401,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(ME) if ok else 2).encode())]}})
            await send({{"type": "http.response.body", "body": ME if ok else b"{{}}"}})
            return
        await send({{"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(BODY)).encode())]}})
        await send({{"type": "http.response.body", "body": BODY}})
''')

# The reference backend under uvicorn. After the gateway closes an aborted stream, the
# backend's StreamingResponse keeps writing the rest of its generator into the dead transport
# and asyncio logs "socket.send() raised exception." once per chunk: that logger is silenced
# so the backend's log does not swamp a run (it is the backend's noise, not the gateway's).
_DEMO_BACKEND = """
import logging, sys
import uvicorn
logging.getLogger("asyncio").setLevel(logging.ERROR)
uvicorn.run("gateway.demo:create_backend", factory=True, host="127.0.0.1",
            port=int(sys.argv[1]), log_level="warning", access_log=False)
"""


def upstream_server(tmp: Path, port: int) -> ServerProcess:
    """The small upstream (``UPSTREAM``) under uvicorn, its module written into ``tmp``."""
    (tmp / "bench_upstream.py").write_text(UPSTREAM)
    return ServerProcess(
        [sys.executable, "-m", "uvicorn", "bench_upstream:app", "--port", str(port),
         "--log-level", "warning", "--no-access-log"], port,
        env={"PYTHONPATH": str(tmp)}, ready_path="/x")


def demo_backend_server(port: int) -> ServerProcess:
    """The reference backend (``gateway.demo``), as its own process."""
    return ServerProcess([sys.executable, "-c", _DEMO_BACKEND, str(port)], port,
                         ready_path="/api/public/hello")


def gateway_config(tmp: Path, upstream_port: int, rest: str) -> Path:
    """``tmp/gateway.toml``: the upstream on ``upstream_port``, the audit stream to a file in
    ``tmp`` (not the terminal), then ``rest`` (routes, other sections)."""
    config = tmp / "gateway.toml"
    config.write_text(textwrap.dedent(f"""
        [upstream]
        url = "http://127.0.0.1:{upstream_port}"
        [audit]
        sink = "{tmp / 'audit.jsonl'}"
    """) + textwrap.dedent(rest))
    return config


def gateway_server(config: Path, port: int) -> ServerProcess:
    """``python -m gateway serve --config <config> --port <port>``, ready at its health path."""
    return ServerProcess(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config), "--port",
         str(port)], port)


class _Server(Protocol):
    """A process that ``start()`` waits for until it serves, and ``stop()`` ends (by its pid):
    ``ServerProcess``, ``tests/helpers/forward_auth.py``'s ``ProxyProcess``."""

    def start(self) -> object: ...

    def stop(self) -> object: ...


@contextmanager
def running(*servers: _Server) -> Iterator[None]:
    """Start ``servers`` in order; stop the started ones in reverse order, however it ends."""
    started: list[_Server] = []
    try:
        for server in servers:
            started.append(server)
            server.start()
        yield
    finally:
        for server in reversed(started):
            server.stop()


_MS_PER = {"us": 1e-3, "ms": 1.0, "s": 1e3}


@dataclass(frozen=True)
class WrkRun:
    """What one wrk run printed."""

    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    non2xx: int  # "Non-2xx or 3xx responses"
    output: str


def wrk(url: str, concurrency: int, duration: float, *, threads: int | None = None,
        headers: Sequence[str] = ()) -> WrkRun:
    """Run ``wrk --latency`` against ``url`` (one thread at concurrency 1, else two, unless
    ``threads`` says), each ``headers`` entry (``"Name: value"``) on every request."""
    threads = threads or (1 if concurrency == 1 else 2)
    args = ["wrk", "-t", str(threads), "-c", str(concurrency), "-d", f"{duration:g}s", "--latency"]
    for header in headers:
        args += ["-H", header]
    out = subprocess.run([*args, url], capture_output=True, text=True, check=True).stdout

    def number(pattern: str) -> str:
        match = re.search(pattern, out)
        if match is None:
            raise SystemExit(f"{url}: no {pattern!r} in wrk's output:\n{out}")
        return match.group(1)

    def percentile(label: str) -> float:
        match = re.search(rf"\s{label}%\s+([\d.]+)(us|ms|s)\b", out)
        if match is None:
            raise SystemExit(f"{url}: no {label}% latency in wrk's output:\n{out}")
        return float(match.group(1)) * _MS_PER[match.group(2)]

    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return WrkRun(requests=int(number(r"(\d+) requests in")),
                  rps=float(number(r"Requests/sec:\s+([\d.]+)")),
                  p50_ms=percentile("50"), p99_ms=percentile("99"),
                  non2xx=int(non2xx.group(1)) if non2xx else 0, output=out)
