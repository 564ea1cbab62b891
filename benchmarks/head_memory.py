"""What oversized request heads cost the gateway: RSS while 8 clients each send a 16 MiB header.

Run from the repository root::

    .venv/bin/python benchmarks/head_memory.py

It starts the reference backend and ``python -m gateway serve`` (default settings but a public
route) as two subprocesses on free loopback ports, then opens 8 connections at once, each
sending ``GET /api/echo/x`` with one 16 MiB ``X-Big`` header in 1 MiB writes, and samples the
gateway process's RSS every 50 ms. Prints the baseline, the peak, the RSS 5 s after the last
client finished, and what each client got back (431, or the connection closed). With the head
limit (``server.max_head_bytes``, 64 KiB) the peak stays within a few MB of the baseline.
"""

from __future__ import annotations

import asyncio
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil
from bench_harness import demo_backend_server, free_port, gateway_config, gateway_server, running

MB = 1_000_000
MiB = 1024 * 1024
CLIENTS = 8
HEADER_MiB = 16

async def _client(port: int) -> str:
    """Send the huge head; what came back: a status line, or how the connection ended."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    piece = b"a" * MiB
    try:
        writer.write(b"GET /api/echo/x HTTP/1.1\r\nHost: bench\r\nX-Big: ")
        for _ in range(HEADER_MiB):
            writer.write(piece)
            await writer.drain()
        writer.write(b"\r\n\r\n")
        await writer.drain()
    except (ConnectionError, OSError):
        pass
    try:
        line = await asyncio.wait_for(reader.readline(), 60)
    except (ConnectionError, OSError, TimeoutError):
        return "connection closed"
    finally:
        writer.close()
    return line.decode("latin-1").strip() or "connection closed"


def main() -> int:
    backend_port, port = free_port(), free_port()
    with tempfile.TemporaryDirectory() as tmp:
        config = gateway_config(Path(tmp), backend_port, """
            [[routes]]
            match = "/**"
            access = "public"
        """)
        gateway = gateway_server(config, port)
        with running(demo_backend_server(backend_port), gateway):
            assert gateway.proc is not None
            process = psutil.Process(gateway.proc.pid)
            baseline = process.memory_info().rss
            peak = baseline
            sampling = True

            def sample() -> None:
                nonlocal peak
                while sampling:
                    peak = max(peak, process.memory_info().rss)
                    time.sleep(0.05)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()

            async def run() -> list[str]:
                return await asyncio.gather(*(_client(port) for _ in range(CLIENTS)))

            started = time.monotonic()
            outcomes = asyncio.run(run())
            took = time.monotonic() - started
            time.sleep(5)
            sampling = False
            sampler.join()
            after = process.memory_info().rss
            ok = httpx.get(f"{gateway.url}/api/echo/after").status_code
    print(f"{CLIENTS} clients x {HEADER_MiB} MiB header, {took:.1f} s")
    print(f"gateway RSS: baseline {baseline / MB:.0f} MB, peak {peak / MB:.0f} MB, "
          f"5 s later {after / MB:.0f} MB")
    for outcome in sorted(set(outcomes)):
        print(f"  {outcomes.count(outcome)} x {outcome}")
    print(f"an ordinary request afterwards: {ok}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
