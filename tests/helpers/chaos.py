"""Faults for chaos tests of shared state: a Redis that freezes, dies, answers slowly, and a
CPU taken by busy processes. Every fault is bounded in time and undone by pid on exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator

from tests.redis_server import RedisServer
from tests.servers import free_port


class DelayRelay:
    """A TCP relay on 127.0.0.1 that holds every chunk Redis sends back for ``delay_s``: a
    Redis that answers, but slowly (a loaded or far-away server). Runs its own event loop in
    a thread so the test's loop stays free; ``delay_s`` can be changed while it runs."""

    def __init__(self, target_port: int, delay_s: float = 0.0) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.delay_s = delay_s
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._serve, "127.0.0.1", self.port))
        self._ready.set()
        self._loop.run_forever()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        pumps = [asyncio.ensure_future(self._pump(reader, up_writer, slow=False)),
                 asyncio.ensure_future(self._pump(up_reader, writer, slow=True))]
        for pump in pumps:
            self._tasks.add(pump)
            pump.add_done_callback(self._tasks.discard)
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for pump in pumps:
            pump.cancel()
        for w in (writer, up_writer):
            w.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                    slow: bool) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await reader.read(65536):
                if slow and self.delay_s > 0:
                    await asyncio.sleep(self.delay_s)
                writer.write(data)
                await writer.drain()

    def start(self) -> DelayRelay:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("relay did not start")
        return self

    def close(self) -> None:
        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for task in list(self._tasks):
                task.cancel()
            self._loop.stop()

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(shutdown(), self._loop)
            self._thread.join(10)
        if not self._loop.is_running():
            self._loop.close()

    def __enter__(self) -> DelayRelay:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def busy_cpu(processes: int = 2, limit_s: float = 60.0) -> Iterator[list[int]]:
    """``processes`` Python loops that spin until killed (or ``limit_s`` passes, should the
    test itself be killed): the CPU saturated, as on a loaded CI machine. Yields their pids."""
    code = f"import time\nend = time.monotonic() + {limit_s}\nwhile time.monotonic() < end: pass"
    procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(processes)]
    try:
        yield [p.pid for p in procs]
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait(10)


async def stall(server: RedisServer, after_s: float, for_s: float) -> None:
    """Freeze ``server`` (SIGSTOP) ``after_s`` from now for ``for_s``, then thaw it (SIGCONT,
    also when cancelled): its connections stay open, nothing answers."""
    assert server.proc is not None
    pid = server.proc.pid
    await asyncio.sleep(after_s)
    os.kill(pid, signal.SIGSTOP)
    try:
        await asyncio.sleep(for_s)
    finally:
        os.kill(pid, signal.SIGCONT)


async def kill_and_restart(server: RedisServer, after_s: float, down_s: float) -> None:
    """Kill ``server`` (SIGKILL: every key lost, connections reset) ``after_s`` from now and
    start it again on the same port ``down_s`` later."""
    await asyncio.sleep(after_s)
    # On this thread, not a worker thread: the server is started with PR_SET_PDEATHSIG, which
    # fires when the thread that started it exits (see tests/redis_server.py).
    server.kill()
    try:
        await asyncio.sleep(down_s)
    finally:
        server.start()
