"""The benchmark suite: the gateway side by side with direct, nginx and the Python floor.

    .venv/bin/python benchmarks/suite.py                 # full run, about 10 min
    .venv/bin/python benchmarks/suite.py --quick         # shorter runs, about 4 min
    .venv/bin/python benchmarks/suite.py --label after --compare benchmarks/results/before.json

Every target runs as its own process(es) on a free loopback port, in front of one counting
backend (``benchmarks/bench_backend.py``: the upstream and the auth endpoints):

* ``direct``: the backend itself (uvicorn + a pure-ASGI app), no proxy;
* ``nginx``: Debian's nginx, ``auth_request`` to ``/auth/me`` with ``proxy_cache`` 2 s keyed by
  the Authorization header, one identity header, ``proxy_buffering off``;
* ``floor``: ``benchmarks/floor_app.py`` under uvicorn (the same job in minimal Python);
* ``gateway``: ``gateway serve`` (uvicorn), and ``gateway-granian`` when granian is installed
  (``granian --interface asgi gateway.asgi:app``), and ``gateway-2w`` (two workers).

Load comes from Debian's ``wrk`` with the Lua scripts in ``benchmarks/wrk/``. For each run the
CPU time (user + system) of the target's whole process tree is read before and after with
psutil; divided by the requests wrk completed, that is the CPU microseconds per request: the
figure that stays put on a shared machine when requests/s do not. The backend counts its auth
calls: a validation of a token it validated less than 1.9 s before, or a second refresh of one
credential, is a call above the minimum.

Results go to ``benchmarks/results/<label>.json`` and ``<label>.png``; the table printed at the
end is the one in ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
WRK = BENCH / "wrk"
RESULTS = BENCH / "results"
sys.path.insert(0, str(ROOT))

from tests.servers import ServerProcess, free_port  # noqa: E402

GUEST_SECRET = "bench-guest-secret-0123456789abcdef0123456789"
DOWNLOAD_BYTES = 100 * 1024 * 1024
SCENARIOS = ("cached", "zipf", "storm", "guests", "download", "rss")


@dataclass
class Row:
    scenario: str
    target: str
    concurrency: int
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us: float  # CPU (user + system) of the target's processes per completed request
    sys_us: float = 0.0  # of which system (kernel: sockets, epoll)
    errors: int = 0  # non-2xx/3xx answers and socket errors
    backend: dict[str, int] = field(default_factory=dict)
    minimum: dict[str, int] = field(default_factory=dict)
    load: str = ""
    note: str = ""


@dataclass
class Target:
    name: str
    server: ServerProcess

    @property
    def url(self) -> str:
        return self.server.url

    def cpu_seconds(self) -> tuple[float, float]:
        """(user + system, system) CPU of the target's process and all its descendants."""
        assert self.server.proc is not None
        total = system = 0.0
        try:
            root = psutil.Process(self.server.proc.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0.0, 0.0
        for proc in procs:
            try:
                times = proc.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += times.user + times.system
            system += times.system
        return total, system

    def rss_mb(self) -> float:
        """RSS of the process serving requests (the largest of the tree), in MB."""
        assert self.server.proc is not None
        root = psutil.Process(self.server.proc.pid)
        return max(p.memory_info().rss for p in [root, *root.children(recursive=True)]) / 1e6


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.2f}/{five:.2f}"


# ------------------------------------------------------------------------------- processes

def _uvicorn(app: str, port: int, env: dict[str, str] | None = None,
             ready_path: str = "/__stats") -> ServerProcess:
    return ServerProcess(
        [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port),
         "--log-level", "warning", "--no-access-log"], port,
        env={"PYTHONPATH": str(ROOT), **(env or {})}, ready_path=ready_path)


def _nginx_conf(tmp: Path, port: int, backend_port: int, workers: int) -> Path:
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi", "cache"):
        (tmp / sub).mkdir(exist_ok=True)
    user = pwd.getpwuid(os.getuid()).pw_name
    conf = tmp / "nginx.conf"
    conf.write_text(textwrap.dedent(f"""
        {"user " + user + ";" if os.getuid() == 0 else ""}
        worker_processes {workers};
        daemon off;
        pid {tmp}/nginx.pid;
        error_log {tmp}/error.log warn;
        events {{ worker_connections 4096; }}
        http {{
            access_log off;
            client_body_temp_path {tmp}/body;
            proxy_temp_path {tmp}/proxy;
            fastcgi_temp_path {tmp}/fastcgi;
            uwsgi_temp_path {tmp}/uwsgi;
            scgi_temp_path {tmp}/scgi;
            proxy_cache_path {tmp}/cache levels=1:2 keys_zone=auth:16m max_size=512m;
            upstream backend {{ server 127.0.0.1:{backend_port}; keepalive 128; }}
            server {{
                listen 127.0.0.1:{port};
                location = /_auth {{
                    internal;
                    proxy_pass http://backend/auth/me;
                    proxy_http_version 1.1;
                    proxy_set_header Connection "";
                    proxy_pass_request_body off;
                    proxy_set_header Content-Length "";
                    proxy_cache auth;
                    proxy_cache_key $http_authorization;
                    proxy_cache_valid 200 401 2s;
                    proxy_cache_lock on;
                    proxy_ignore_headers Cache-Control Expires Set-Cookie;
                }}
                location / {{
                    auth_request /_auth;
                    auth_request_set $auth_user $upstream_http_x_user_id;
                    proxy_set_header X-Auth-User-Id $auth_user;
                    proxy_pass http://backend;
                    proxy_http_version 1.1;
                    proxy_set_header Connection "";
                    proxy_buffering off;
                }}
            }}
        }}
    """))
    return conf


def _gateway_conf(tmp: Path, name: str, backend_port: int, *, cache_ttl_s: float = 2.0,
                  max_entries: int = 100_000, guests: bool = True) -> Path:
    path = tmp / f"{name}.toml"
    path.write_text(textwrap.dedent(f"""
        [upstream]
        url = "http://127.0.0.1:{backend_port}"
        [auth]
        cache_ttl_s = {cache_ttl_s}
        cache_max_entries = {max_entries}
        [guest]
        enabled = {"true" if guests else "false"}
        mode = "local"
        [audit]
        sink = "{tmp / (name + '-audit.jsonl')}"
        [[routes]]
        match = "/public/**"
        access = "public"
        [[routes]]
        match = "/guest/**"
        access = "guest"
        [default_route]
        access = "user"
        unauthenticated = "401"
    """))
    return path


def _gateway(conf: Path, port: int, *, workers: int = 1, server: str = "uvicorn",
             source: Path | None = None) -> ServerProcess:
    env = {"GATEWAY_GUEST_SECRET": GUEST_SECRET, "GATEWAY_CONFIG": str(conf)}
    if source is not None:  # another checkout's gateway package (an earlier commit)
        env["PYTHONPATH"] = str(source.resolve())
    if server == "granian":
        granian = Path(sys.executable).with_name("granian")
        args = [str(granian), "--interface", "asgi", "--host", "127.0.0.1", "--port",
                str(port), "--workers", str(workers), "--log-level", "warning",
                "--no-ws", "gateway.asgi:app"]
    else:
        # -P: with --source, the current directory's gateway/ must not shadow that one
        args = [sys.executable, "-P", "-m", "gateway", "serve", "--config", str(conf), "--port",
                str(port), "--workers", str(workers)]
    return ServerProcess(args, port, env=env)


# ------------------------------------------------------------------------------------ load

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _wrk(url: str, concurrency: int, duration: float, script: str,
         env: dict[str, str] | None = None) -> tuple[int, float, float, float, int]:
    """(requests, req/s, p50 ms, p99 ms, errors) of one wrk run."""
    threads = 1 if concurrency == 1 else 2
    args = ["wrk", "-t", str(threads), "-c", str(concurrency), "-d", f"{duration:g}s",
            "--latency", "--timeout", "10s", "-s", str(WRK / script), url]
    run_env = {**os.environ, "BENCH_THREADS": str(threads), **(env or {})}
    out = subprocess.run(args, capture_output=True, text=True, check=True, env=run_env,
                         timeout=duration + 60).stdout
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]

    def pct(label: str) -> float:
        match = re.search(rf"\s{label}%\s+([\d.]+)(us|ms|s)\b", out)
        return float(match.group(1)) * _UNITS[match.group(2)] if match else float("nan")

    errors = 0
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        errors += int(non2xx.group(1))
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if sock:
        errors += sum(int(g) for g in sock.groups())
    return requests, rps, pct("50"), pct("99"), errors


class Bench:
    def __init__(self, backend: ServerProcess, duration: float) -> None:
        self.backend = backend
        self.duration = duration
        self.rows: list[Row] = []

    def reset(self) -> None:
        httpx.post(self.backend.url + "/__reset", timeout=5)

    def stats(self) -> dict[str, int]:
        stats: dict[str, int] = httpx.get(self.backend.url + "/__stats", timeout=5).json()
        return stats

    def run(self, scenario: str, target: Target, concurrency: int, script: str, *,
            path: str = "/api/items", env: dict[str, str] | None = None,
            warmup: bool = True, duration: float | None = None,
            minimum: dict[str, int] | None = None, note: str = "") -> Row:
        url = target.url + path
        if warmup:
            _wrk(url, concurrency, 1.0, script, env)
        self.reset()
        load = _load()
        before, before_sys = target.cpu_seconds()
        requests, rps, p50, p99, errors = _wrk(url, concurrency, duration or self.duration,
                                               script, env)
        after, after_sys = target.cpu_seconds()
        stats = self.stats()
        row = Row(scenario, target.name, concurrency, requests, rps, p50, p99,
                  (after - before) / max(requests, 1) * 1e6,
                  (after_sys - before_sys) / max(requests, 1) * 1e6, errors,
                  {k: v for k, v in stats.items() if v}, minimum or {}, load, note)
        self.rows.append(row)
        print(f"  {scenario:<14}{target.name:<17}c={concurrency:<4}{rps:>8.0f} req/s "
              f"p50 {p50:6.2f} ms p99 {p99:7.2f} ms {row.cpu_us:7.0f} us/req "
              f"(sys {row.sys_us:.0f}) "
              f"err {errors} backend {row.backend} load {load}", flush=True)
        return row


# ------------------------------------------------------------------------------- scenarios

def _jwt(claims: dict[str, Any]) -> str:
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    return f"{header}.{b64(json.dumps(claims).encode())}.{b64(b'not-checked-by-the-gateway')}"


def _storm_tokens(tmp: Path, prefix: str, count: int) -> Path:
    """``count`` sessions whose JWT access token expired (beyond the 30 s clock skew)."""
    expired = int(time.time()) - 300
    path = tmp / f"storm-{prefix}.txt"
    path.write_text("".join(_jwt({"sub": f"{prefix}-{i}", "exp": expired}) + "\n"
                            for i in range(count)))
    return path


def _guest_tokens(tmp: Path, count: int) -> Path:
    import jwt

    now = int(time.time())
    path = tmp / "guests.txt"
    path.write_text("".join(
        jwt.encode({"sub": f"guest:bench-{i}", "typ": "guest", "iat": now, "exp": now + 3600},
                   GUEST_SECRET, algorithm="HS256") + "\n" for i in range(count)))
    return path


def _download(bench: Bench, target: Target, times: int) -> Row:
    url = target.url + f"/download?bytes={DOWNLOAD_BYTES}"
    bench.reset()
    load = _load()
    peak = [target.rss_mb()]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            peak[0] = max(peak[0], target.rss_mb())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    before, _ = target.cpu_seconds()
    start = time.perf_counter()
    errors = 0
    for _ in range(times):
        out = subprocess.run(
            ["curl", "-s", "-o", "/dev/null", "-H", "Authorization: Bearer tok-cached-0001",
             "-w", "%{http_code} %{size_download}", url],
            capture_output=True, text=True, timeout=120).stdout.split()
        if out[0] != "200" or int(out[1]) != DOWNLOAD_BYTES:
            errors += 1
    elapsed = time.perf_counter() - start
    cpu = target.cpu_seconds()[0] - before
    done.set()
    sampler.join()
    mb = DOWNLOAD_BYTES * times / 1e6
    row = Row("download", target.name, 1, times, mb / elapsed, float("nan"), float("nan"),
              cpu / mb * 1e6, 0.0, errors, {k: v for k, v in bench.stats().items() if v}, {}, load,
              f"100 MB x{times}: rps = MB/s, cpu_us = CPU us per MB, peak RSS "
              f"{peak[0]:.0f} MB")
    bench.rows.append(row)
    print(f"  download      {target.name:<17}{mb / elapsed:8.0f} MB/s {row.cpu_us:7.0f} us/MB "
          f"peak RSS {peak[0]:.0f} MB err {errors}", flush=True)
    return row


def _metric(url: str, name: str) -> float:
    text = httpx.get(url + "/__gateway/metrics", timeout=5).text
    match = re.search(rf"^{name} ([\d.e+]+)$", text, re.M)
    return float(match.group(1)) if match else float("nan")


def _rss(bench: Bench, target: Target, tokens: int) -> Row:
    """RSS of the gateway before and after ``tokens`` distinct tokens are in its cache."""
    before_mb = target.rss_mb()
    bench.reset()
    env = {"BENCH_TOKENS": str(tokens)}
    start = time.perf_counter()
    entries = 0.0
    while time.perf_counter() - start < 900:
        _wrk(target.url + "/api/items", 64, 5.0, "unique.lua",
             {**env, "BENCH_OFFSET": str(int(entries))})  # the tokens before it are cached
        entries = _metric(target.url, "gateway_validation_cache_entries")
        if entries >= tokens * 0.995:  # requests cut off at the end of a run come later
            break
    after_mb = target.rss_mb()
    row = Row("rss", target.name, 64, int(entries), 0.0, float("nan"), float("nan"), 0.0, 0.0, 0,
              {k: v for k, v in bench.stats().items() if v}, {"me": int(entries)}, _load(),
              f"RSS {before_mb:.1f} MB -> {after_mb:.1f} MB with {entries:.0f} cached tokens")
    bench.rows.append(row)
    print(f"  rss           {target.name:<17}{row.note}", flush=True)
    return row


@contextmanager
def _started(*servers: ServerProcess) -> Iterator[None]:
    started: list[ServerProcess] = []
    try:
        for server in servers:
            server.start(timeout=60)
            started.append(server)
        yield
    finally:
        for server in reversed(started):
            server.stop()


def run_suite(args: argparse.Namespace) -> list[Row]:
    tmp = Path(tempfile.mkdtemp(prefix="gw-bench-"))
    backend_port = free_port()
    backend = _uvicorn("benchmarks.bench_backend:app", backend_port)
    ports = {name: free_port() for name in ("nginx", "floor", "gateway", "granian", "gw2", "rss")}
    nginx = ServerProcess(["nginx", "-p", str(tmp), "-c",
                           str(_nginx_conf(tmp, ports["nginx"], backend_port, args.nginx_workers))],
                          ports["nginx"], ready_path="/")
    floor = _uvicorn("benchmarks.floor_app:app", ports["floor"],
                     {"FLOOR_UPSTREAM": f"http://127.0.0.1:{backend_port}"}, ready_path="/")
    conf = _gateway_conf(tmp, "gateway", backend_port)
    source = args.source
    targets = {
        "direct": Target("direct", backend),
        "nginx": Target(f"nginx-{args.nginx_workers}w", nginx),
        "floor": Target("floor", floor),
        "gateway": Target("gateway", _gateway(conf, ports["gateway"], source=source)),
    }
    if shutil.which("granian", path=str(Path(sys.executable).parent)) and not args.no_granian:
        targets["granian"] = Target("gateway-granian",
                                    _gateway(_gateway_conf(tmp, "granian", backend_port),
                                             ports["granian"], server="granian", source=source))
    if not args.quick:
        targets["gw2"] = Target("gateway-2w", _gateway(_gateway_conf(tmp, "gw2", backend_port),
                                                       ports["gw2"], workers=2, source=source))
    bench = Bench(backend, args.duration)
    proxies = [t for k, t in targets.items() if k != "direct"]
    gateways = [t for k, t in targets.items() if k in ("gateway", "granian")]
    print(f"load before start: {_load()}  (1 min / 5 min)", flush=True)
    only = set(args.only)
    with _started(*(t.server for t in targets.values() if only - {"rss"})):
        _scenarios(args, bench, targets, proxies, gateways, tmp, only)
    if "rss" in only:
        # local guests off: what the cache costs, without pyjwt (below)
        rss = Target("gateway", _gateway(_gateway_conf(tmp, "rss", backend_port,
                                                       cache_ttl_s=3600, guests=False),
                                         ports["rss"],
                                         source=source))
        print(f"== RSS with {args.rss_tokens:,} cached tokens", flush=True)
        backend = _uvicorn("benchmarks.bench_backend:app", backend_port)
        bench.backend = backend
        with _started(backend, rss.server):
            _rss(bench, rss, args.rss_tokens)
    shutil.rmtree(tmp, ignore_errors=True)
    return bench.rows


def _scenarios(args: argparse.Namespace, bench: Bench, targets: dict[str, Target],
               proxies: list[Target], gateways: list[Target], tmp: Path, only: set[str]
               ) -> None:
    if "cached" in only:
        print("== cached token", flush=True)
        for concurrency in args.concurrency:
            for target in targets.values():
                if target.name == "gateway-2w" and concurrency == 1:
                    continue
                bench.run("cached", target, concurrency, "cached.lua",
                          note="one token; its validation expires every 2 s")
    if "zipf" in only:
        print("== 10,000 tokens, Zipf-like reuse", flush=True)
        for target in proxies:
            if target.name == "gateway-2w":
                continue  # per-worker caches: twice the calls by design without [state] redis
            bench.run("zipf", target, 32, "zipf.lua", warmup=False,
                      env={"BENCH_TOKENS": "10000"}, note="minimum me = me - me_dup")
    if "storm" in only:
        print("== 1,000 sessions expiring at once (refresh storm)", flush=True)
        for target in gateways:
            tokens = _storm_tokens(tmp, target.name, 1000)
            bench.run("storm", target, 128, "tokens_file.lua", warmup=False,
                      duration=max(args.duration, 8.0), env={"BENCH_TOKEN_FILE": str(tokens)},
                      minimum={"refresh": 1000, "me": 1000},
                      note="expired JWTs, refresh with access_header; the new token is "
                           "validated once")
    if "guests" in only:
        print("== local guests", flush=True)
        guests = _guest_tokens(tmp, 1000)
        for target in gateways:
            bench.run("guest-issue", target, 32, "none.lua", path="/guest/items",
                      env={}, minimum={"me": 0},
                      note="no token on a guest route: a new local guest token each")
            bench.run("guest-reuse", target, 32, "tokens_file.lua", path="/guest/items",
                      env={"BENCH_TOKEN_FILE": str(guests), "BENCH_COOKIE": "guestToken",
                           "BENCH_PATH": "/guest/items"}, minimum={"me": 0},
                      note="1,000 local guest cookies, checked by the gateway alone")
    if "download" in only:
        print("== 100 MB streamed download", flush=True)
        for target in targets.values():
            if target.name != "gateway-2w":
                _download(bench, target, 1 if args.quick else 3)


# --------------------------------------------------------------------------------- report

def _find(rows: list[Row], scenario: str, target: str, concurrency: int) -> Row | None:
    for row in rows:
        if (row.scenario, row.target, row.concurrency) == (scenario, target, concurrency):
            return row
    return None


def table(rows: list[Row]) -> str:
    lines = ["| scenario | target | conc | req/s | p50 ms | p99 ms | CPU us/req (of which sys) | "
             "errors | backend calls (minimum) | load 1/5 |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in rows:
        if r.scenario == "rss":
            lines.append(f"| rss | {r.target} | | | | | | | me {r.backend.get('me', 0):,} "
                         f"({r.minimum.get('me', 0):,}) | {r.load} |")
            lines.append(f"| | {r.note} | | | | | | | | |")
            continue
        calls = ", ".join(f"{k} {v:,}" for k, v in r.backend.items() if k != "upstream")
        if r.minimum:
            calls += " (min " + ", ".join(f"{k} {v:,}" for k, v in r.minimum.items()) + ")"
        unit = "MB/s" if r.scenario == "download" else ""
        cpu = f"{r.cpu_us:,.0f}" + (" /MB" if r.scenario == "download" else
                                    f" (sys {r.sys_us:,.0f})" if r.sys_us else "")
        p50 = "" if r.p50_ms != r.p50_ms else f"{r.p50_ms:.2f}"
        p99 = "" if r.p99_ms != r.p99_ms else f"{r.p99_ms:.2f}"
        lines.append(f"| {r.scenario} | {r.target} | {r.concurrency} | {r.rps:,.0f}{unit} | "
                     f"{p50} | {p99} | {cpu} | {r.errors} | {calls} | {r.load} |")
    return "\n".join(lines)


def targets_report(rows: list[Row]) -> str:
    out = []

    def cpu(target: str, c: int) -> float:
        row = _find(rows, "cached", target, c)
        return row.cpu_us if row else float("nan")

    for c in (1, 32, 128):
        ratio = cpu("gateway", c) / cpu("floor", c)
        out.append(f"CPU/request vs floor, cached, c={c}: {ratio:.2f}x (target <= 1.1x)")
    nginx = [r for r in rows if r.scenario == "cached" and r.concurrency == 32
             and r.target.startswith("nginx")]
    gws = [r for r in rows if r.scenario == "cached" and r.concurrency == 32
           and r.target.startswith("gateway")]
    if nginx and gws:
        best = max(gws, key=lambda r: r.rps)
        out.append(f"req/s at c=32, best gateway ({best.target}) vs {nginx[0].target}: "
                   f"{best.rps / nginx[0].rps:.2f}x (target >= 0.5x)")
    direct, gw = _find(rows, "cached", "direct", 1), _find(rows, "cached", "gateway", 1)
    if direct and gw:
        out.append(f"added p50 at c=1: {gw.p50_ms - direct.p50_ms:.2f} ms (target <= 0.5 ms)")
    for r in rows:
        for key, minimum in r.minimum.items():
            if r.scenario == "cached" or (r.target.startswith("nginx") and key == "me"):
                continue
            got = r.backend.get(key, 0)
            out.append(f"backend {key} calls, {r.scenario} {r.target}: {got:,} "
                       f"(minimum {minimum:,})")
        if r.scenario == "zipf":
            dup = r.backend.get("me_dup", 0)
            out.append(f"backend me calls, zipf {r.target}: {r.backend.get('me', 0):,}, of which "
                       f"{dup:,} above the minimum")
        if r.scenario == "rss":
            out.append(f"{r.note} (target <= 100 MB)")
    return "\n".join(out)


def chart(rows: list[Row], path: Path, compare: list[Row] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = [(s, c) for s, c in (("cached", 1), ("cached", 32), ("cached", 128), ("zipf", 32),
                                 ("guest-reuse", 32), ("storm", 128))]
    names = [n for n in dict.fromkeys(r.target for r in rows if r.scenario == "cached")]
    if not names:  # e.g. --only rss: no per-request cells to chart
        return
    series: list[tuple[str, list[Row]]] = [(n, rows) for n in names]
    if compare:
        series.insert(names.index("gateway") if "gateway" in names else 0,
                      ("gateway (before)", [r for r in compare if r.target == "gateway"]))
    fig, axes = plt.subplots(1, 2, figsize=(14, 5))
    width = 0.8 / len(series)
    for metric, ax, title in (("cpu_us", axes[0], "CPU microseconds per request (lower is "
                               "better)"), ("rps", axes[1], "requests/s (higher is better)")):
        for i, (label, source) in enumerate(series):
            target = "gateway" if label == "gateway (before)" else label
            values = []
            for scenario, c in cells:
                row = _find(source, scenario, target, c)
                values.append(getattr(row, metric) if row else 0.0)
            ax.bar([x + i * width for x in range(len(cells))], values, width, label=label)
        ax.set_xticks([x + width * (len(series) - 1) / 2 for x in range(len(cells))])
        ax.set_xticklabels([f"{s}\nc={c}" for s, c in cells])
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("gateway vs direct, nginx auth_request and the Python floor "
                 "(benchmarks/suite.py)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 s runs, 20,000 tokens for RSS")
    parser.add_argument("--duration", type=float, help="seconds per wrk run (default 8, quick 3)")
    parser.add_argument("--label", default="latest", help="results file name")
    parser.add_argument("--compare", type=Path, help="an earlier results JSON for the chart")
    parser.add_argument("--nginx-workers", type=int, default=1)
    parser.add_argument("--rss-tokens", type=int, help="default 100,000 (quick 20,000)")
    parser.add_argument("--no-granian", action="store_true")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32, 128])
    parser.add_argument("--only", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    parser.add_argument("--source", type=Path,
                        help="run the gateway package found in this directory (e.g. an earlier "
                             "commit: git archive <rev> gateway | tar -x -C DIR)")
    args = parser.parse_args()
    if args.duration is None:
        args.duration = 3.0 if args.quick else 8.0
    if args.rss_tokens is None:
        args.rss_tokens = 20_000 if args.quick else 100_000
    for tool in ("wrk", "nginx", "curl"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is needed (Debian package {tool})")
    rows = run_suite(args)
    RESULTS.mkdir(exist_ok=True)
    meta = {"label": args.label, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "cores": os.cpu_count(), "duration_s": args.duration, "quick": args.quick}
    out = RESULTS / f"{args.label}.json"
    if set(args.only) != set(SCENARIOS) and out.exists():
        # a partial run completes or replaces the scenarios it ran in an earlier full one
        ran = {r.scenario for r in rows}
        rows = [r for r in (Row(**d) for d in json.loads(out.read_text())["rows"])
                if r.scenario not in ran] + rows
    out.write_text(json.dumps({"meta": meta, "rows": [asdict(r) for r in rows]}, indent=1))
    compare = None
    if args.compare:
        compare = [Row(**r) for r in json.loads(args.compare.read_text())["rows"]]
    try:
        chart(rows, RESULTS / f"{args.label}.png", compare)
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[bench]'): no chart")
    print()
    print(f"{meta['date']}, {meta['cores']} cores, {args.duration:g} s per run")
    print(table(rows))
    print()
    print(targets_report(rows))
    print(f"\nresults: {out}")


if __name__ == "__main__":
    main()
