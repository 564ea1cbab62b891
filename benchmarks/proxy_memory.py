"""Show that the gateway streams: flat memory for a 1 GiB download, no leak from aborts.

Run from the repository root::

    .venv/bin/python benchmarks/proxy_memory.py

It starts the reference backend (``gateway.demo:create_backend`` under uvicorn) and the
gateway (``python -m gateway serve --config <tmp toml>``) as two separate subprocesses on free
loopback ports, then, from this process:

1. downloads 1 GiB through the gateway (``/test/stream?size=1073741824``) while sampling the
   gateway process's RSS every 50 ms, and prints baseline, peak and increase (must be < 50 MB);
2. aborts 1,000 large downloads right after their first chunk (the socket is closed), counting
   the gateway's ESTABLISHED connections to the backend port as it goes (must not grow) and the
   bytes the backend process writes (psutil ``write_chars``: how much of each abandoned body
   the gateway still read), then sends 50 ordinary requests (all must be 200).

Exits 1 if a check fails. Takes well under 90 s.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil
from bench_harness import demo_backend_server, free_port, gateway_config, gateway_server, running

MB = 1_000_000
MiB = 1024 * 1024
GiB = 1024 * MiB

RSS_LIMIT_MB = 50
# Per aborted download, the backend may get this far ahead of a gateway that stops reading at
# once (loopback socket buffers; measured 0.1-8 MiB): more means the gateway kept reading.
ABORT_WRITE_LIMIT_MIB = 10
SAMPLE_S = 0.05

class RssSampler:
    """RSS of one process (plus any children) every ``SAMPLE_S`` seconds, in a thread."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss(self) -> int:
        total = int(self.process.memory_info().rss)
        for child in self.process.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                total += child.memory_info().rss
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(self.rss())
            self._stop.wait(SAMPLE_S)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(self.rss())


def established_to(pid: int, port: int) -> int:
    """ESTABLISHED TCP connections of process ``pid`` whose remote port is ``port``."""
    return sum(1 for c in psutil.Process(pid).net_connections(kind="tcp")
               if c.status == psutil.CONN_ESTABLISHED and c.raddr and c.raddr.port == port)


def download(base_url: str, size: int) -> tuple[int, float]:
    """Stream ``size`` bytes through the gateway; return (bytes received, seconds)."""
    received = 0
    started = time.perf_counter()
    with httpx.Client(base_url=base_url, timeout=60) as client, client.stream(
            "GET", f"/test/stream?size={size}") as response:
        response.raise_for_status()
        for chunk in response.iter_raw(chunk_size=1 << 20):
            received += len(chunk)
    return received, time.perf_counter() - started


def aborted_download(host: str, port: int, size: int) -> bytes:
    """Start a download, read its first chunk, close the connection."""
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(f"GET /test/stream?size={size} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n"
                     .encode())
        first = sock.recv(65536)
    return first


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=GiB, help="download size in bytes")
    parser.add_argument("--aborts", type=int, default=1000)
    parser.add_argument("--abort-size", type=int, default=32 * MiB,
                        help="size of each aborted stream (far beyond socket buffers)")
    parser.add_argument("--follow-ups", type=int, default=50)
    args = parser.parse_args()

    failures: list[str] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="proxy-memory-") as tmp:
        tmpdir = Path(tmp)
        backend_port, gateway_port = free_port(), free_port()
        config = gateway_config(tmpdir, backend_port, """
            [[routes]]
            match = "/**"
            access = "public"
        """)
        backend, gateway = demo_backend_server(backend_port), gateway_server(config, gateway_port)
        with running(backend, gateway):
            assert backend.proc is not None and gateway.proc is not None
            url = gateway.url
            print(f"backend  pid {backend.proc.pid} on :{backend_port}  (uvicorn, demo backend)")
            print(f"gateway  pid {gateway.proc.pid} on :{gateway_port}  "
                  f"(python -m gateway serve --config {config.name})")
            print(f"python {sys.version.split()[0]}, {psutil.cpu_count()} CPUs")

            # -- 1. one big download ---------------------------------------------------------
            with httpx.Client(base_url=url) as client:  # warm up: pools, buffers, imports
                for _ in range(20):
                    client.get("/api/echo/warmup").raise_for_status()
            download(url, 8 * MiB)
            time.sleep(0.3)
            sampler = RssSampler(gateway.proc.pid)
            baseline = min(sampler.rss() for _ in range(5))
            with sampler:
                received, seconds = download(url, args.size)
            peak = max(sampler.samples)
            increase = (peak - baseline) / MB
            print()
            print(f"1. download of {args.size:,} bytes ({args.size / GiB:.2f} GiB) "
                  "through the gateway")
            print(f"   received          {received:,} bytes "
                  f"({'complete' if received == args.size else 'INCOMPLETE'})")
            print(f"   time              {seconds:.2f} s  "
                  f"({received / MiB / seconds:,.0f} MiB/s)")
            print(f"   RSS samples       {len(sampler.samples)} (every {SAMPLE_S * 1000:.0f} ms)")
            print(f"   baseline RSS      {baseline / MB:8.1f} MB")
            print(f"   peak RSS          {peak / MB:8.1f} MB")
            print(f"   increase          {increase:8.1f} MB   (limit {RSS_LIMIT_MB} MB: "
                  f"{'PASS' if increase < RSS_LIMIT_MB else 'FAIL'})")
            if received != args.size:
                failures.append(f"download incomplete: {received} of {args.size} bytes")
            if increase >= RSS_LIMIT_MB:
                failures.append(f"RSS grew by {increase:.1f} MB during the download")

            # -- 2. aborted downloads --------------------------------------------------------
            print()
            print(f"2. {args.aborts:,} downloads of {args.abort_size / MiB:.0f} MiB, each closed "
                  "after its first chunk")
            backend_process = psutil.Process(backend.proc.pid)
            backend_written_before = backend_process.io_counters().write_chars
            conns_before = established_to(gateway.proc.pid, backend_port)
            print(f"   gateway->backend ESTABLISHED before: {conns_before}")
            checkpoints = {args.aborts * k // 4 for k in range(1, 5)}
            first_lines: collections.Counter[str] = collections.Counter()
            conns_seen: list[int] = []
            t0 = time.perf_counter()
            for n in range(1, args.aborts + 1):
                first = aborted_download("127.0.0.1", gateway_port, args.abort_size)
                first_lines[first.split(b"\r\n", 1)[0].decode("latin-1", "replace")] += 1
                if n in checkpoints:
                    conns = established_to(gateway.proc.pid, backend_port)
                    conns_seen.append(conns)
                    print(f"   after {n:5,} aborts: {time.perf_counter() - t0:6.2f} s, "
                          f"gateway->backend ESTABLISHED = {conns}, "
                          f"gateway RSS = {sampler.rss() / MB:.1f} MB")
            abort_seconds = time.perf_counter() - t0
            time.sleep(0.5)
            backend_written = backend_process.io_counters().write_chars - backend_written_before
            per_abort_mib = backend_written / args.aborts / MiB
            print(f"   aborted downloads  {args.aborts:,} in {abort_seconds:.2f} s "
                  f"({abort_seconds / args.aborts * 1000:.1f} ms each)")
            print(f"   first status lines {dict(first_lines)}")
            print(f"   backend wrote      {backend_written / MiB:,.0f} MiB in all, "
                  f"{per_abort_mib:.1f} MiB per aborted download (limit "
                  f"{ABORT_WRITE_LIMIT_MIB} MiB, what socket buffers hold: "
                  f"{'PASS' if per_abort_mib < ABORT_WRITE_LIMIT_MIB else 'FAIL'})")
            conns_after = established_to(gateway.proc.pid, backend_port)
            with httpx.Client(base_url=url, timeout=10) as client:
                statuses = collections.Counter(
                    client.get(f"/api/echo/after/{i}").status_code
                    for i in range(args.follow_ups))
            conns_final = established_to(gateway.proc.pid, backend_port)
            print(f"   {args.follow_ups} follow-up requests: statuses {dict(statuses)}")
            print(f"   gateway->backend ESTABLISHED: before {conns_before}, "
                  f"after aborts {conns_after}, after follow-ups {conns_final} "
                  f"(max during aborts {max(conns_seen)})")
            grew = max(conns_after, conns_final) > max(conns_before, 1) + 1
            print(f"   connections grew with the aborts: {'YES (FAIL)' if grew else 'no (PASS)'}")
            print(f"   gateway RSS now    {sampler.rss() / MB:.1f} MB "
                  f"(baseline {baseline / MB:.1f} MB)")
            if statuses != {200: args.follow_ups}:
                failures.append(f"follow-up statuses {dict(statuses)}")
            if set(first_lines) != {"HTTP/1.1 200 OK"}:
                failures.append(f"aborted downloads started with {dict(first_lines)}")
            if grew:
                failures.append("gateway->backend connections grew with the aborts")
            if per_abort_mib >= ABORT_WRITE_LIMIT_MIB:
                failures.append(f"the gateway read {per_abort_mib:.1f} MiB per aborted "
                                "download from the backend after its client had gone")
            if gateway.proc.poll() is not None:
                failures.append(f"gateway exited with {gateway.proc.returncode}")
    print()
    print(f"total {time.monotonic() - started:.1f} s: "
          + ("ALL CHECKS PASSED" if not failures else "FAILED: " + "; ".join(failures)))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
