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
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil

MB = 1_000_000
MiB = 1024 * 1024
CLIENTS = 8
HEADER_MiB = 16

BACKEND = """
import sys
import uvicorn
uvicorn.run("gateway.demo:create_backend", factory=True, host="127.0.0.1",
            port=int(sys.argv[1]), log_level="warning", access_log=False)
"""

GATEWAY_TOML = """
[server]
port = {port}

[upstream]
url = "http://127.0.0.1:{backend_port}"

[[routes]]
match = "/**"
access = "public"

[audit]
sink = "{audit}"
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_ready(url: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code < 500:
                return
        time.sleep(0.1)
    raise SystemExit(f"{url} did not become ready")


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
    backend_port, port = _free_port(), _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "gateway.toml"
        config.write_text(GATEWAY_TOML.format(port=port, backend_port=backend_port,
                                              audit=Path(tmp) / "audit.jsonl"))
        env = dict(os.environ)
        backend = subprocess.Popen([sys.executable, "-c", BACKEND, str(backend_port)], env=env)
        gateway = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config",
                                    str(config)], env=env, stdout=subprocess.DEVNULL)
        try:
            _wait_ready(f"http://127.0.0.1:{backend_port}/api/public/hello")
            _wait_ready(f"http://127.0.0.1:{port}/__gateway/health")
            process = psutil.Process(gateway.pid)
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
            ok = httpx.get(f"http://127.0.0.1:{port}/api/echo/after").status_code
        finally:
            gateway.terminate()
            backend.terminate()
            gateway.wait(10)
            backend.wait(10)
    print(f"{CLIENTS} clients x {HEADER_MiB} MiB header, {took:.1f} s")
    print(f"gateway RSS: baseline {baseline / MB:.0f} MB, peak {peak / MB:.0f} MB, "
          f"5 s later {after / MB:.0f} MB")
    for outcome in sorted(set(outcomes)):
        print(f"  {outcomes.count(outcome)} x {outcome}")
    print(f"an ordinary request afterwards: {ok}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
