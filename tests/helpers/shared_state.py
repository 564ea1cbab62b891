"""Gateway processes sharing state (docs/shared-state.md), for the shared-state and chaos
tests: ``python -m gateway serve`` replicas with their configs and audit files, started in
parallel and stopped by pid, clients for them, and the session they fight over."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
import tomllib
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import PRESETS, Backend, merge, to_toml
from tests.helpers.audit import read_events
from tests.helpers.replies import cookieless_client
from tests.redis_server import RedisServer
from tests.servers import ServerProcess, free_port, python_module

STATE_KEY = secrets.token_hex(32)
REPLICAS = 4
#: How long a gateway process may take to answer its health check. Generous on purpose: on a
#: saturated 2-core machine, importing and starting several Python processes at once takes
#: tens of seconds; a slow start is not what these tests are about.
STARTUP_S = 90.0


def write_config(directory: Path, name: str, backend: Backend, state: dict[str, Any]) -> Path:
    """The next-api-layer preset (``send = "access_header"``) in front of the reference
    backend, ``/api/echo/**`` a user route, ``cache_ttl_s = 5``, audit to ``<name>.jsonl``."""
    data = tomllib.loads((PRESETS / "next-api-layer.toml").read_text())
    merge(data, {
        "upstream": {"url": backend.url},
        "cookies": {"secure": False},
        "auth": {"retry_backoff_s": 0.01, "cache_ttl_s": 5},
        "audit": {"sink": str(directory / f"{name}.jsonl"), "flush_interval_s": 0},
        "state": state,
    })
    data["routes"] = [{"match": "/api/echo/**", "access": "user"}, *data["routes"]]
    path = directory / f"{name}.toml"
    path.write_text(to_toml(data))
    return path



class GatewayProcess(ServerProcess):
    """``python -m gateway serve --config C --port P [--workers N]``, with its audit file."""

    def __init__(self, config: Path, *, workers: int = 1, env: dict[str, str] | None = None
                 ) -> None:
        args = ["serve", "--config", str(config)]
        if workers > 1:
            args += ["--workers", str(workers)]
        port = free_port()
        super().__init__(python_module("gateway", *args, "--port", str(port)), port, env=env)
        self.config = config
        self.audit_path = Path(tomllib.loads(config.read_text())["audit"]["sink"])

    def start(self, timeout: float = STARTUP_S) -> GatewayProcess:
        super().start(timeout)
        return self

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        return read_events(self.audit_path, name)



def start_all(processes: Sequence[GatewayProcess]) -> list[GatewayProcess]:
    """Start processes in parallel (each start polls until its health endpoint answers)."""
    with ThreadPoolExecutor(len(processes)) as pool:
        futures = [pool.submit(p.start) for p in processes]
        errors = [f.exception() for f in futures]
    if any(errors):
        for p in processes:
            p.stop()
        raise next(e for e in errors if e is not None)
    return list(processes)



@contextlib.contextmanager
def cluster(directory: Path, backend: Backend, state: dict[str, Any], *, replicas: int = REPLICAS,
            workers: int = 1, name: str = "gw") -> Iterator[list[GatewayProcess]]:
    """``replicas`` gateway processes on their own ports, each with its own audit file."""
    processes = [
        GatewayProcess(write_config(directory, f"{name}-{i}", backend, state), workers=workers,
                       env={"GATEWAY_STATE_KEY": STATE_KEY})
        for i in range(replicas)
    ]
    start_all(processes)
    try:
        yield processes
    finally:
        for p in processes:
            p.stop()



def redis_state(server: RedisServer) -> dict[str, Any]:
    return {"backend": "redis", "redis_url": server.url}



MEMORY_STATE: dict[str, Any] = {"backend": "memory"}



@contextlib.asynccontextmanager
async def clients(processes: Sequence[GatewayProcess], connections: int = 100
                  ) -> AsyncIterator[list[httpx.AsyncClient]]:
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(
                   cookieless_client(p.url, connections=connections, timeout=30))
               for p in processes]



def delta(before: dict[str, Any], after: dict[str, Any], key: str) -> int:
    if key in ("refresh_ok", "refresh_rejected"):
        return int(after[key]) - int(before[key])
    return int(after["calls"][key]) - int(before["calls"][key])



def report(line: str) -> None:
    print(f"\nREPORT {line}")



async def expired_session(backend: Backend) -> str:
    """An access token the backend issued with a 1 s lifetime, now expired but refreshable
    (the next-api-layer flow: the expired access token is the refresh credential). Tokens the
    backend issues afterwards (the refreshed ones) live the usual 15 minutes."""
    backend.configure(access_ttl_s=1)
    try:
        access = backend.login()["accessToken"]
    finally:
        backend.configure(access_ttl_s=900)
    await asyncio.sleep(1.3)
    return access



async def wait_ready(url: str, status: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    async with cookieless_client(url, connections=100, timeout=30) as c:
        while True:
            answer = (await c.get("/__gateway/ready")).status_code
            if answer == status or time.monotonic() > deadline:
                return answer
            await asyncio.sleep(0.1)
