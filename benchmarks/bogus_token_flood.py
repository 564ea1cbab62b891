"""How many backend validations a flood of one bogus token costs (the negative cache).

Run from the repository root::

    .venv/bin/python benchmarks/bogus_token_flood.py --requests 2000 --concurrency 50
    .venv/bin/python benchmarks/bogus_token_flood.py --requests 2000 --invalid-cache-ttl 0

It starts the reference backend and a gateway in front of it (``auth.cache_ttl_s = 2``), in
this process under uvicorn on free loopback ports, sends ``--requests`` requests carrying one
token the backend rejects, and prints the statuses and the backend's ``/auth/me`` calls. With
the negative cache (``auth.invalid_cache_ttl_s``, default 2 s) the cost is about one call per
token per 2 s of flood, whatever the request count; ``--invalid-cache-ttl 0`` turns it off
(the behaviour before it: only requests in flight at the same moment share a call).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.app import create_app
from gateway.demo import BackendOptions, create_backend
from gateway.settings import settings_from_mapping
from tests.servers import ServerThread


def _me_calls(backend_url: str) -> int:
    return int(httpx.get(backend_url + "/__demo/stats").json()["calls"].get("me", 0))


async def flood(gateway_url: str, requests: int, concurrency: int) -> dict[int, int]:
    statuses: dict[int, int] = {}
    slots = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=gateway_url, timeout=60, limits=limits) as client:

        async def one() -> None:
            async with slots:
                reply = await client.get("/api/items",
                                         headers={"authorization": "Bearer bogus-token-123"})
                statuses[reply.status_code] = statuses.get(reply.status_code, 0) + 1

        await asyncio.gather(*(one() for _ in range(requests)))
    return statuses


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--invalid-cache-ttl", type=float, default=2.0)
    args = parser.parse_args()
    backend = ServerThread(create_backend(BackendOptions())).start()
    settings = settings_from_mapping({
        "upstream": {"url": backend.url}, "audit": {"sink": "/dev/null"},
        "auth": {"cache_ttl_s": 2.0, "invalid_cache_ttl_s": args.invalid_cache_ttl}})
    gateway = ServerThread(create_app(settings)).start()
    try:
        before = _me_calls(backend.url)
        started = time.monotonic()
        statuses = asyncio.run(flood(gateway.url, args.requests, args.concurrency))
        took = time.monotonic() - started
        calls = _me_calls(backend.url) - before
    finally:
        gateway.stop()
        backend.stop()
    print(f"requests={args.requests} concurrency={args.concurrency} "
          f"invalid_cache_ttl_s={args.invalid_cache_ttl:g} statuses={statuses} "
          f"/auth/me calls={calls} in {took:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
