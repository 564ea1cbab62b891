"""Real nginx and Caddy in front of a forward-auth gateway, for tests and benchmarks.

The shipped configs in ``config/forward-auth/`` are used as they are, with their example
addresses (nginx/Caddy ``127.0.0.1:8000``, gateway ``127.0.0.1:8080``, app ``127.0.0.1:3000``)
and nginx's cache directory replaced by free loopback ports and a temp directory. Each proxy
runs as the current user, in the foreground, and is stopped by its pid.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import RunningGateway, StartGateway
from tests.servers import free_port, stop_process

CONFIGS = Path(__file__).resolve().parents[2] / "config" / "forward-auth"
EXAMPLE_PROXY = "127.0.0.1:8000"
EXAMPLE_GATEWAY = "127.0.0.1:8080"
EXAMPLE_APP = "127.0.0.1:3000"
EXAMPLE_CACHE = "/var/cache/nginx/gateway-auth"


def forward_auth_gateway(start: StartGateway, *, trusted: list[str] | None = None,
                         overrides: dict[str, Any] | None = None,
                         routes: Sequence[dict[str, Any]] = ()) -> RunningGateway:
    """The next-api-layer preset (the reference backend's first family) with forward-auth on;
    nginx/Caddy talk to it from 127.0.0.1, which is also trusted for X-Forwarded-For."""
    forward: dict[str, Any] = {"enabled": True}
    if trusted is not None:
        forward["trusted"] = trusted
    changes: dict[str, Any] = {"forward_auth": forward,
                               "server": {"trusted_proxies": ["127.0.0.1/32"]}}
    for key, value in (overrides or {}).items():
        changes[key] = {**changes.get(key, {}), **value} if isinstance(value, dict) else value
    return start("next-api-layer", changes, routes)


def _hostport(url: str) -> str:
    return url.removeprefix("http://").rstrip("/")


def templated(name: str, *, proxy_port: int, gateway_url: str, app_url: str,
              workdir: Path, text: str | None = None) -> str:
    """``config/forward-auth/<name>`` (or ``text`` written the same way) with its example
    addresses and cache directory replaced."""
    text = text if text is not None else (CONFIGS / name).read_text()
    for example in (EXAMPLE_PROXY, EXAMPLE_APP):
        assert example in text, f"{name} no longer has {example}"
    return (text.replace(EXAMPLE_PROXY, f"127.0.0.1:{proxy_port}")
            .replace(EXAMPLE_GATEWAY, _hostport(gateway_url))
            .replace(EXAMPLE_APP, _hostport(app_url))
            .replace(EXAMPLE_CACHE, str(workdir / "auth-cache")))


class ProxyProcess:
    """A proxy binary serving on ``port``, started from ``workdir``, stopped by pid."""

    def __init__(self, args: list[str], port: int, workdir: Path,
                 env: dict[str, str] | None = None) -> None:
        self.args = args
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.workdir = workdir
        self.env = {**os.environ, **(env or {})}
        self.log = workdir / "proxy-output.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20) -> ProxyProcess:
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(self.args, cwd=self.workdir, env=self.env,
                                         stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.args[0]} exited {self.proc.returncode}:\n"
                                   f"{self.output()}")
            with contextlib.suppress(OSError):  # noqa: SIM117
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.args[0]} did not listen on {self.port}:\n{self.output()}")

    def output(self) -> str:
        texts = [p.read_text(errors="replace") for p in (self.log, self.workdir / "error.log")
                 if p.exists()]
        return "\n".join(texts)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        stop_process(self.proc)  # SIGTERM: nginx's fast shutdown, Caddy's graceful stop

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        kwargs.setdefault("timeout", 30)
        return httpx.AsyncClient(base_url=self.url, **kwargs)


def nginx(workdir: Path, *, gateway_url: str, app_url: str, workers: int = 1,
          cache: bool = True, site_text: str | None = None) -> ProxyProcess:
    """nginx with ``config/forward-auth/nginx.conf`` (or ``site_text``, written with the same
    example addresses) inside a minimal main config that keeps every file in ``workdir``."""
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    port = free_port()
    site = templated("nginx.conf", proxy_port=port, gateway_url=gateway_url, app_url=app_url,
                     workdir=workdir, text=site_text)
    if not cache:
        site = "\n".join(line for line in site.splitlines()
                         if not line.strip().startswith(("proxy_cache", "max_size=")))
    (workdir / "site.conf").write_text(site)
    user = "user root;\n" if os.geteuid() == 0 else ""  # workers stay the current user
    temp = "\n".join(f"    {kind}_temp_path {workdir / kind};"
                     for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (workdir / "nginx.conf").write_text(
        f"{user}worker_processes {workers};\npid {workdir / 'nginx.pid'};\n"
        f"error_log {workdir / 'error.log'} warn;\ndaemon off;\n"
        "events { worker_connections 4096; }\n"
        f"http {{\n    access_log off;\n{temp}\n    include {workdir / 'site.conf'};\n}}\n")
    return ProxyProcess([binary, "-p", str(workdir), "-c", str(workdir / "nginx.conf"),
                         "-e", str(workdir / "error.log")], port, workdir)


def caddy(workdir: Path, *, gateway_url: str, app_url: str) -> ProxyProcess:
    """Caddy with ``config/forward-auth/Caddyfile`` behind a global block that turns off its
    admin API and automatic HTTPS and keeps its state in ``workdir``."""
    binary = shutil.which("caddy") or "/usr/bin/caddy"
    port = free_port()
    site = templated("Caddyfile", proxy_port=port, gateway_url=gateway_url, app_url=app_url,
                     workdir=workdir)
    (workdir / "Caddyfile").write_text(
        "{\n\tadmin off\n\tauto_https off\n}\n\n" + site)
    env = {"HOME": str(workdir), "XDG_DATA_HOME": str(workdir / "data"),
           "XDG_CONFIG_HOME": str(workdir / "config")}
    return ProxyProcess([binary, "run", "--adapter", "caddyfile", "--config",
                         str(workdir / "Caddyfile")], port, workdir, env)


def have(binary: str) -> bool:
    return shutil.which(binary) is not None or Path(f"/usr/sbin/{binary}").exists()
