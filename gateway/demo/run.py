"""``gateway demo``: the reference backend on a free port with the gateway in front of it."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import tomllib

import uvicorn

from gateway.app import create_app
from gateway.demo.backend import BackendOptions, create_backend
from gateway.settings import Settings, settings_from_mapping

DEMO_CONFIG = """
[upstream]
url = "{backend}"

[auth.login]
path = "/auth/login"

[auth.logout]
path = "/auth/logout"
send = "access_header"

[cookies]
secure = false            # the demo runs on plain http://127.0.0.1

[audit]
sink = "stderr"

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
match = "/api/admin/**"
access = "user"
roles = ["admin"]

[[routes]]
match = "/test/**"
access = "public"

[default_route]
access = "user"
"""


def demo_settings(backend_url: str) -> Settings:
    return settings_from_mapping(tomllib.loads(DEMO_CONFIG.format(backend=backend_url)))


def _bind(port: int) -> socket.socket:
    # IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on such sockets (else +40 ms).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    return sock


async def _serve(port: int) -> None:
    backend_sock = _bind(0)
    backend_url = f"http://127.0.0.1:{backend_sock.getsockname()[1]}"
    gateway_sock = _bind(port)
    gateway_url = f"http://127.0.0.1:{gateway_sock.getsockname()[1]}"
    backend = uvicorn.Server(
        uvicorn.Config(create_backend(BackendOptions(access_ttl_s=60)), log_level="warning")
    )
    gateway = uvicorn.Server(
        uvicorn.Config(
            create_app(demo_settings(backend_url)), log_level="info", proxy_headers=False,
            access_log=False,  # it prints raw query strings; the audit stream is on stdout
        )
    )
    print(f"reference backend: {backend_url}")
    print(f"gateway:           {gateway_url}   <- open this")
    print(
        "log in at /login as demo@example.com / demo-password "
        "(or admin@example.com / admin-password)"
    )
    print("try: /dashboard (needs a login), /api/public/hello, /api/admin/stats (admin only)")
    await asyncio.gather(
        backend.serve(sockets=[backend_sock]), gateway.serve(sockets=[gateway_sock])
    )


def run_demo(port: int = 8080) -> int:
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(port))
    return 0
