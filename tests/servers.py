"""Real servers on free loopback ports, for tests and benchmarks.

``ServerThread`` runs any ASGI app under uvicorn in a background thread with its own event
loop; ``ServerProcess`` runs a command in a subprocess (for multi-worker runs).
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
from collections.abc import Iterator, Sequence
from typing import Any

import httpx
import uvicorn


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ServerThread:
    """``uvicorn`` serving ``app`` on 127.0.0.1:<free port> in a daemon thread."""

    def __init__(self, app: Any, **options: Any) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        options.setdefault("log_level", "warning")
        options.setdefault("lifespan", "on")
        options.setdefault("proxy_headers", False)
        self.config = uvicorn.Config(app, **options)
        self.server = uvicorn.Server(self.config)
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.server.serve(sockets=[self.sock]))

    def start(self) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=10)
        self.sock.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ServerProcess:
    """A command that serves HTTP on ``port``; ready when ``ready_path`` answers."""

    def __init__(self, args: Sequence[str], port: int, *, env: dict[str, str] | None = None,
                 ready_path: str = "/__gateway/health", cwd: str | None = None) -> None:
        self.args = list(args)
        self.cwd = cwd
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.env = {**os.environ, **(env or {})}
        self.ready_path = ready_path
        self.proc: subprocess.Popen[bytes] | None = None
        # A file, not a pipe: nobody drains a pipe while the server runs, and a full pipe
        # blocks the server on its next log line.
        self.output = tempfile.TemporaryFile()  # noqa: SIM115 - closed with the process

    def start(self, timeout: float = 20) -> ServerProcess:
        self.proc = subprocess.Popen(self.args, env=self.env, stdout=self.output,
                                     stderr=subprocess.STDOUT, cwd=self.cwd)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.args} exited {self.proc.returncode}:\n{self.text()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + self.ready_path, timeout=1).status_code < 500:
                    return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.args} did not become ready")

    def text(self) -> str:
        """Everything the process has printed so far."""
        self.output.seek(0)
        return self.output.read().decode(errors="replace")

    def stop(self) -> str:
        if self.proc is None:
            return ""
        stop_process(self.proc)
        return self.text()


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (a graceful stop), then SIGKILL if ``proc`` is not gone within 10 s."""
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def fixed_reply_app(body: bytes, status: int = 200,
                    content_type: bytes = b"application/json") -> Any:
    """An ASGI app that answers every HTTP request with the same reply (a stand-in upstream
    or auth backend with one behaviour)."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", content_type)]})
        await send({"type": "http.response.body", "body": body})

    return app


def python_module(*args: str) -> list[str]:
    return [sys.executable, "-m", *args]


@contextlib.contextmanager
def serving(app: Any, **options: Any) -> Iterator[ServerThread]:
    server = ServerThread(app, **options).start()
    try:
        yield server
    finally:
        server.stop()
