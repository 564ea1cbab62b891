"""nginx + the gateway's forward-auth vs nginx ``auth_request`` straight to ``/auth/me``.

    .venv/bin/python benchmarks/forward_auth_bench.py [--duration 10] [--concurrency 32]

Two setups in front of the same upstream (the pure-ASGI app of ``bench_harness.py``, as in
``proxy_bench.py``: ``/auth/me`` for one known token, a ~200-byte JSON body elsewhere), each its
own set of processes:

* direct: nginx ``auth_request`` to the upstream's ``/auth/me`` on every request (what people
  run without the gateway: no cache, no refresh, no guests);
* forward-auth: the shipped ``config/forward-auth/nginx.conf`` (nginx caching the gateway's
  200 answers for ``cache_ttl_s``, keyed by the request and its credentials) with
  ``gateway serve`` as the auth service;
* the same without nginx's cache: every request asks the gateway (whose own per-token cache
  answers it), which shows what one gateway process costs per decision.

Each is driven by ``wrk`` with the same authenticated request; the table gives req/s and the
CPU time (psutil, user + system) that each setup's processes spent per request.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import textwrap
from pathlib import Path

import psutil

# bench_harness puts the repository root on sys.path, for `tests` below.
from bench_harness import (
    TOKEN,
    free_port,
    gateway_config,
    gateway_server,
    running,
    upstream_server,
    wrk,
)

from tests.helpers.forward_auth import EXAMPLE_APP, EXAMPLE_PROXY, nginx

# nginx auth_request straight to the backend's /auth/me: the baseline.
DIRECT_SITE = textwrap.dedent(f"""
    upstream bench_app {{ server {EXAMPLE_APP}; keepalive 32; }}
    server {{
        listen {EXAMPLE_PROXY};
        location / {{
            auth_request /_auth;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass http://bench_app;
        }}
        location = /_auth {{
            internal;
            proxy_pass http://bench_app/auth/me;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
""")


def _processes(*pids: int) -> list[psutil.Process]:
    found: list[psutil.Process] = []
    for pid in pids:
        process = psutil.Process(pid)
        found.append(process)
        found.extend(process.children(recursive=True))
    return found


def _cpu_seconds(processes: list[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        times = process.cpu_times()
        total += times.user + times.system
    return total


def _wrk(url: str, concurrency: int, duration: float) -> tuple[float, int]:
    done = wrk(url, concurrency, duration, threads=2, headers=[f"Authorization: Bearer {TOKEN}"])
    if done.non2xx:
        raise SystemExit(f"{url}: {done.non2xx} failed requests:\n{done.output}")
    return done.rps, done.requests


def run(name: str, url: str, groups: dict[str, list[psutil.Process]], concurrency: int,
        duration: float) -> tuple[str, float, dict[str, float]]:
    _wrk(url, concurrency, 2)  # warm up: connections, caches
    before = {group: _cpu_seconds(procs) for group, procs in groups.items()}
    rps, total = _wrk(url, concurrency, duration)
    cpu_us = {group: (_cpu_seconds(procs) - before[group]) / total * 1e6
              for group, procs in groups.items()}
    return name, rps, cpu_us


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--nginx-workers", type=int, default=1)
    args = parser.parse_args()
    if not shutil.which("wrk") or not (shutil.which("nginx") or Path("/usr/sbin/nginx").exists()):
        raise SystemExit("needs Debian's wrk and nginx: apt-get install wrk nginx")
    tmp = Path(tempfile.mkdtemp(prefix="forward-auth-bench-"))
    up_port, gw_port = free_port(), free_port()
    config = gateway_config(tmp, up_port, """
        [forward_auth]
        enabled = true
        [default_route]
        access = "user"
    """)
    upstream = upstream_server(tmp, up_port)
    gateway = gateway_server(config, gw_port)
    app_url = f"http://127.0.0.1:{up_port}"
    gateway_url = f"http://127.0.0.1:{gw_port}"
    for name in ("direct", "forward", "uncached"):
        (tmp / name).mkdir()
    direct = nginx(tmp / "direct", gateway_url=gateway_url, app_url=app_url,
                   workers=args.nginx_workers, site_text=DIRECT_SITE)
    forward = nginx(tmp / "forward", gateway_url=gateway_url, app_url=app_url,
                    workers=args.nginx_workers)
    uncached = nginx(tmp / "uncached", gateway_url=gateway_url, app_url=app_url,
                     workers=args.nginx_workers, cache=False)
    rows = []
    with running(upstream, gateway, direct, forward, uncached):
        assert upstream.proc is not None and gateway.proc is not None
        assert direct.proc is not None and forward.proc is not None
        up = _processes(upstream.proc.pid)
        rows.append(run("nginx auth_request -> /auth/me", direct.url + "/api/items",
                        {"nginx": _processes(direct.proc.pid), "gateway": [],
                         "upstream": up}, args.concurrency, args.duration))
        rows.append(run("nginx + forward-auth (cached)", forward.url + "/api/items",
                        {"nginx": _processes(forward.proc.pid),
                         "gateway": _processes(gateway.proc.pid), "upstream": up},
                        args.concurrency, args.duration))
        assert uncached.proc is not None
        rows.append(run("nginx + forward-auth (no nginx cache)", uncached.url + "/api/items",
                        {"nginx": _processes(uncached.proc.pid),
                         "gateway": _processes(gateway.proc.pid), "upstream": up},
                        args.concurrency, args.duration))
    base = rows[0][1]
    print(f"wrk -t2 -c{args.concurrency} -d{args.duration:g}s; nginx workers "
          f"{args.nginx_workers}; {os.cpu_count()} cores; CPU = user + system per request")
    print(f"{'setup':<38}{'req/s':>8}{'vs direct':>11}{'CPU us/req':>12}"
          f"{'nginx':>8}{'gateway':>9}{'upstream':>10}")
    for name, rps, cpu in rows:
        print(f"{name:<38}{rps:>8.0f}{rps / base:>10.0%}{sum(cpu.values()):>12.0f}"
              f"{cpu['nginx']:>8.0f}{cpu['gateway']:>9.0f}{cpu['upstream']:>10.0f}")


if __name__ == "__main__":
    main()
