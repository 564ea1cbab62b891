"""Direct vs through the gateway: requests/s and latency at concurrency 1 and 32.

    .venv/bin/python benchmarks/proxy_bench.py [--duration 8]

Starts, each as its own process: a small upstream (a pure-ASGI app under uvicorn that answers
``/auth/me`` for one known token and a ~200-byte JSON body elsewhere), and the gateway in front
of it (``gateway serve``). Then drives them with Debian's ``wrk`` (a Python client if wrk is
missing) and prints one table: direct, gateway on a public route, and gateway on a user route
with a cached token (the common authenticated case), with the ratio to direct.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import httpx
from bench_harness import TOKEN, free_port, gateway_config, gateway_server, upstream_server, wrk


async def _python_load(url: str, concurrency: int, duration: float, headers: list[str]
                       ) -> tuple[float, float, float]:
    hdrs = dict(h.split(": ", 1) for h in headers)
    latencies: list[float] = []
    deadline = time.perf_counter() + duration
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=concurrency)) as client:
        async def worker() -> None:
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                await client.get(url, headers=hdrs)
                latencies.append((time.perf_counter() - start) * 1000)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    latencies.sort()
    return (len(latencies) / duration, statistics.median(latencies),
            latencies[int(len(latencies) * 0.99) - 1])


def measure(url: str, concurrency: int, duration: float, headers: list[str]
            ) -> tuple[float, float, float]:
    if shutil.which("wrk"):
        run = wrk(url, concurrency, duration, headers=headers)
        return run.rps, run.p50_ms, run.p99_ms
    return asyncio.run(_python_load(url, concurrency, duration, headers))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=8.0)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp())
    up_port, gw_port = free_port(), free_port()
    config = gateway_config(tmp, up_port, """
        [[routes]]
        match = "/public/**"
        access = "public"
        [default_route]
        access = "user"
    """)
    upstream = upstream_server(tmp, up_port)
    gateway = gateway_server(config, gw_port)
    upstream.start()
    gateway.start()
    try:
        rows = []
        auth = [f"Authorization: Bearer {TOKEN}"]
        for concurrency in (1, 32):
            direct = measure(f"{upstream.url}/public/items", concurrency, args.duration, [])
            public = measure(f"{gateway.url}/public/items", concurrency, args.duration, [])
            user = measure(f"{gateway.url}/api/items", concurrency, args.duration, auth)
            rows += [("direct", concurrency, direct, direct[0]),
                     ("gateway public", concurrency, public, direct[0]),
                     ("gateway user (cached)", concurrency, user, direct[0])]
    finally:
        gateway.stop()
        upstream.stop()
    tool = "wrk" if shutil.which("wrk") else "python httpx load"
    print(f"load generator: {tool}; {args.duration:g}s per run; {os.cpu_count()} cores")
    print(f"{'target':<24}{'conc':>5}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'vs direct':>11}")
    for name, concurrency, (rps, p50, p99), base in rows:
        print(f"{name:<24}{concurrency:>5}{rps:>10.0f}{p50:>9.2f}{p99:>9.2f}{rps / base:>10.0%}")


if __name__ == "__main__":
    main()
