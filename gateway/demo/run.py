"""``gateway demo``: the reference backend on a free port with the gateway in front of it.

The gateway's audit stream goes to ``audit.jsonl`` in a new temporary directory (printed at
start, removed when the demo stops); the backend reads the same file to show each user what
the gateway did for their session (the dashboard's activity log). The backend's test-control
API is not started at all, and its proxy probes (which echo request headers) are off.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import shutil
import signal
import socket
import sys
import tempfile
import tomllib
from pathlib import Path

import uvicorn

from gateway.app import create_app
from gateway.demo.backend import BackendOptions, create_backend
from gateway.demo.state import DEMO_USERS
from gateway.settings import Settings, settings_from_mapping

#: Short enough to watch a token expire and be refreshed on the dashboard.
ACCESS_TTL_S = 60
EXIT_CANNOT_LISTEN = 2

DEMO_CONFIG = """
[upstream]
url = "{backend}"

[auth.login]
path = "/auth/login"

[auth.logout]
path = "/auth/logout"
send = "access_header"

[guest]
enabled = true            # backend mode: the backend's POST /auth/guest mints guest tokens

[cookies]
secure = false            # the demo runs on plain http://127.0.0.1

[audit]
sink = "{audit}"
log_cache_hits = true     # the dashboard shows "validated from cache" too
flush_interval_s = 0.2    # and shows it promptly

[[routes]]
match = "/"
access = "public"

[[routes]]
match = "/login"
access = "public"

[[routes]]
match = "/auth/**"
access = "public"

[[routes]]
match = "/api/public/**"
access = "public"

[[routes]]
match = "/guest"
access = "guest"

[[routes]]
match = "/api/admin/**"
access = "user"
roles = ["admin"]

[default_route]           # /dashboard, /three-tabs, /admin, /api/demo/*, /ws/demo
access = "user"
"""


def demo_settings(backend_url: str, audit_sink: str = "stderr") -> Settings:
    """The gateway config of ``gateway demo`` (also used by the browser tests)."""
    text = DEMO_CONFIG.format(backend=backend_url, audit=audit_sink)
    return settings_from_mapping(tomllib.loads(text))


def demo_backend_options(audit_log: str) -> BackendOptions:
    return BackendOptions(access_ttl_s=ACCESS_TTL_S, audit_log=audit_log, probes=False)


def _bind(port: int) -> socket.socket:
    # IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on such sockets (else +40 ms).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def _banner(gateway_url: str, backend_url: str, audit: Path) -> str:
    width = max(len(user.email) + len(user.password) for user in DEMO_USERS) + 3
    accounts = [
        f"{user.email} / {user.password}".ljust(width) + f"  roles: {', '.join(user.roles)}"
        for user in DEMO_USERS
    ]
    lines = [
        "gateway demo: the reference backend with the gateway in front of it",
        f"  open       {gateway_url}/   <- open this",
        f"  log in as  {accounts[0]}",
        *(f"         or  {account}" for account in accounts[1:]),
        f"  tokens     access tokens live {ACCESS_TTL_S} s: watch one expire and be refreshed "
        "on the dashboard",
        f"  audit log  {audit}  (JSON lines; removed when the demo stops)",
        f"  backend    {backend_url}  (the browser only ever talks to the gateway)",
        "Ctrl-C to stop.",
    ]
    return "\n".join(lines)


async def _serve(gateway_sock: socket.socket, audit: Path) -> None:
    backend_sock = _bind(0)
    backend_url = f"http://127.0.0.1:{backend_sock.getsockname()[1]}"
    gateway_url = f"http://127.0.0.1:{gateway_sock.getsockname()[1]}"
    backend = uvicorn.Server(
        uvicorn.Config(create_backend(demo_backend_options(str(audit))), log_level="warning",
                       date_header=False)  # the backend sets Date from its own clock
    )
    gateway = uvicorn.Server(
        uvicorn.Config(
            create_app(demo_settings(backend_url, str(audit))), log_level="info",
            proxy_headers=False,
            access_log=False,  # it prints raw query strings; the audit log is the record
        )
    )
    print(_banner(gateway_url, backend_url, audit), flush=True)
    await asyncio.gather(
        backend.serve(sockets=[backend_sock]), gateway.serve(sockets=[gateway_sock])
    )


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_demo(port: int = 8080) -> int:
    try:
        gateway_sock = _bind(port)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            problem = f"port {port} is already in use; pick another with --port"
        else:
            problem = f"cannot listen on 127.0.0.1:{port}: {exc.strerror or exc}"
        print(f"gateway demo: {problem}", file=sys.stderr)
        return EXIT_CANNOT_LISTEN
    directory = Path(tempfile.mkdtemp(prefix="gateway-demo-"))
    # uvicorn re-raises the signal that stopped it once it is done; as KeyboardInterrupt
    # (SIGTERM too) it ends here, so the audit directory is removed either way.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_serve(gateway_sock, directory / "audit.jsonl"))
    finally:
        gateway_sock.close()
        shutil.rmtree(directory, ignore_errors=True)
    return 0
