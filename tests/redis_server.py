"""A real ``redis-server`` on a free loopback port, for tests of ``[state] backend = "redis"``.

``RedisServer`` runs the Debian binary in a temporary directory with persistence off
(``--save "" --appendonly no``), waits until ``PING`` answers, and can be stopped (or killed)
and started again on the same port, which is how the tests take Redis away mid-run.
``redis_or_skip()`` is what a fixture calls: it skips only when the binary is not installed.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import ctypes.util
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.servers import free_port


def redis_binary() -> str | None:
    return shutil.which("redis-server")


def ping(port: int, timeout: float = 0.5) -> bool:
    """A raw ``PING`` (no client library involved): True when the server answers ``+PONG``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


_STARTED: set[RedisServer] = set()


def _die_with_parent() -> None:
    """In the child, before exec (Linux): SIGKILL it when the test process dies, even by a
    signal that skips every teardown (a CI timeout's SIGTERM, SIGKILL). The signal follows
    the *thread* that started it: start servers from the main thread only."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


_PR_SET_PDEATHSIG = 1


@atexit.register
def _kill_leftovers() -> None:
    """A last resort for a test run that ends (or is interrupted) before a fixture's
    teardown: no ``redis-server`` outlives the run. Fixtures still close what they start."""
    for server in list(_STARTED):
        server.close()


class RedisServer:
    """``redis-server`` on 127.0.0.1:<port>, data in a private temp dir."""

    def __init__(self, binary: str, port: int | None = None) -> None:
        self.binary = binary
        self.port = port or free_port()
        self._tmp = tempfile.TemporaryDirectory(prefix="gateway-redis-")
        self.dir = Path(self._tmp.name)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start (again) on the same port; returns once PING answers."""
        if self.running:
            return self
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", str(self.dir),
                "--protected-mode", "no", "--loglevel", "warning"]
        deadline = time.monotonic() + timeout
        _STARTED.add(self)
        while True:
            self.proc = subprocess.Popen(args, cwd=self.dir, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.PIPE, preexec_fn=_die_with_parent)
            while time.monotonic() < deadline and self.proc.poll() is None:
                if ping(self.port):
                    return self
                time.sleep(0.02)
            if self.proc.poll() is None:
                self.kill()
                raise RuntimeError(f"redis-server on port {self.port} did not answer PING")
            err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
            # The port may still be held by the previous instance's socket for a moment.
            if time.monotonic() >= deadline or "Address already in use" not in err:
                raise RuntimeError(f"redis-server exited {self.proc.returncode}: {err}")
            time.sleep(0.1)

    def _wait_gone(self, timeout: float) -> None:
        assert self.proc is not None
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()

    def stop(self) -> None:
        """Graceful shutdown (SIGTERM)."""
        if self.running:
            assert self.proc is not None
            self.proc.terminate()
            self._wait_gone(5)

    def kill(self) -> None:
        """Abrupt loss (SIGKILL): clients see their connections drop."""
        if self.running:
            assert self.proc is not None
            self.proc.kill()
            self._wait_gone(5)

    def restart(self) -> RedisServer:
        self.stop()
        return self.start()

    def close(self) -> None:
        self.kill()
        _STARTED.discard(self)
        with contextlib.suppress(OSError):
            self._tmp.cleanup()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def redis_or_skip() -> RedisServer:
    """A started server, or a pytest skip when ``redis-server`` is not installed (any other
    failure to start is an error, not a skip)."""
    binary = redis_binary()
    if binary is None:
        pytest.skip("redis-server binary not found on PATH (install the redis-server package "
                    "to run the [state] backend = \"redis\" tests)")
    return RedisServer(binary).start()
