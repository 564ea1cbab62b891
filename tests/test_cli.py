"""`gateway check` run as a real subprocess (README.md#configure, docs/deployment.md#exit-codes)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from gateway.settings import load_settings
from tests.conftest import Backend
from tests.servers import free_port

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = [ROOT / "gateway.toml.example", *sorted((ROOT / "config").glob("*.toml"))]


def run_check(
    *args: str, cwd: Path = ROOT, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != "GATEWAY_CONFIG"}
    full_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
    )
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "gateway", "check", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def route_lines(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if re.match(r"^  (\[\d+\]|default) ", line)]


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_configs_pass(path: Path) -> None:
    result = run_check("--config", str(path.relative_to(ROOT)))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    settings = load_settings(path)
    out = result.stdout
    assert f"upstream: {settings.upstream.url}" in out
    assert settings.auth.validate.path in out
    assert settings.auth.refresh.path in out
    if settings.auth.login.path:
        assert settings.auth.login.path in out
    # Every route, in match order, then the default route last.
    lines = route_lines(out)
    assert len(lines) == len(settings.routes) + 1
    for index, (line, route) in enumerate(zip(lines, settings.routes, strict=False)):
        assert line.startswith(f"  [{index}] {route.match} "), line
        assert f"-> {route.access}" in line
    assert lines[-1].startswith("  default ")
    assert f"-> {settings.default_route.access}" in lines[-1]


def test_summary_lists_routes_in_file_order(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(
        '[upstream]\nurl = "http://app.internal:8000"\n'
        '[[routes]]\nmatch = "/z/**"\naccess = "user"\nroles = ["admin"]\n'
        '[[routes]]\nmatch = "/a/**"\naccess = "public"\nmethods = ["GET"]\n'
        '[[routes]]\nmatch = "/m"\naccess = "guest"\n'
        '[default_route]\naccess = "public"\n',
        encoding="utf-8",
    )
    result = run_check("--config", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "upstream: http://app.internal:8000" in result.stdout
    lines = route_lines(result.stdout)
    assert [line.split()[:2] for line in lines] == [
        ["[0]", "/z/**"], ["[1]", "/a/**"], ["[2]", "/m"], ["default", "/**"],
    ]
    assert "roles=admin" in lines[0]
    assert "GET" in lines[1]
    assert lines[3].split("->")[1].split()[0] == "public"


def test_bad_config_exits_2_with_one_line_per_problem(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(
        '[upstream]\nurl = "ftp://app"\n'
        '[server]\nport = "8080"\nprot = 1\n'
        '[cookies]\nsame_site = "none"\nsecure = false\n'
        '[[routes]]\nmatch = "/a"\n'
        '[[routes]]\nmatch = "/b"\n'
        '[[routes]]\nmatch = "/c"\naccess = "admin"\n',
        encoding="utf-8",
    )
    result = run_check("--config", str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert "routes[2].access: must be one of public, guest, user" in lines
    assert "server.port: must be an integer" in lines
    assert "server.prot: unknown key" in lines
    assert 'cookies.same_site: "none" requires cookies.secure = true' in lines
    assert any(line.startswith("upstream.url: ") for line in lines)
    assert len(lines) == 5, lines
    assert "Traceback" not in result.stderr


def test_invalid_toml_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text('[upstream\nurl = "http://app"\n', encoding="utf-8")
    result = run_check("--config", str(path), cwd=tmp_path)
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert "not valid TOML" in line
    assert str(path) in line


def test_gateway_config_env_is_used_without_flag(tmp_path: Path) -> None:
    path = tmp_path / "from-env.toml"
    path.write_text('[upstream]\nurl = "http://from-env:8000"\n', encoding="utf-8")
    result = run_check(cwd=tmp_path, env={"GATEWAY_CONFIG": str(path)})
    assert result.returncode == 0, result.stderr
    assert "upstream: http://from-env:8000" in result.stdout


def test_flag_wins_over_env(tmp_path: Path) -> None:
    env_file = tmp_path / "env.toml"
    env_file.write_text('[upstream]\nurl = "http://from-env:8000"\n', encoding="utf-8")
    flag_file = tmp_path / "flag.toml"
    flag_file.write_text('[upstream]\nurl = "http://from-flag:8000"\n', encoding="utf-8")
    result = run_check("--config", str(flag_file), cwd=tmp_path,
                       env={"GATEWAY_CONFIG": str(env_file)})
    assert result.returncode == 0, result.stderr
    assert "upstream: http://from-flag:8000" in result.stdout
    assert "from-env" not in result.stdout


def test_bad_config_from_env_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[upstream]\nurl = "http://app"\nextra = 1\n', encoding="utf-8")
    result = run_check(cwd=tmp_path, env={"GATEWAY_CONFIG": str(path)})
    assert result.returncode == 2
    assert result.stderr.splitlines() == ["upstream.extra: unknown key"]


def test_default_is_gateway_toml_in_cwd(tmp_path: Path) -> None:
    (tmp_path / "gateway.toml").write_text(
        '[upstream]\nurl = "http://from-cwd:8000"\n', encoding="utf-8"
    )
    result = run_check(cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "upstream: http://from-cwd:8000" in result.stdout


def test_missing_file_exits_2_with_clear_message(tmp_path: Path) -> None:
    path = tmp_path / "does-not-exist.toml"
    result = run_check("--config", str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert str(path) in line
    assert "cannot read config file" in line
    assert "No such file" in line


def test_missing_default_file_exits_2(tmp_path: Path) -> None:
    result = run_check(cwd=tmp_path)  # no --config, no $GATEWAY_CONFIG, no ./gateway.toml
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith("gateway.toml: cannot read config file")


def test_missing_file_named_by_env_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "gone.toml"
    result = run_check(cwd=tmp_path, env={"GATEWAY_CONFIG": str(path)})
    assert result.returncode == 2
    assert str(path) in result.stderr
    assert "Traceback" not in result.stderr


# -- serve and demo as real processes -----------------------------------------------------------


def gateway_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--port", "70000", "must be 1..65535"),
    ("--port", "0", "must be 1..65535"),
    ("--port", "eighty", "must be a whole number"),
    ("--workers", "0", "must be at least 1"),
    ("--workers", "-1", "must be at least 1"),
])
def test_serve_refuses_bad_flags(flag: str, value: str, message: str) -> None:
    result = gateway_cli("serve", "--config", str(ROOT / "gateway.toml.example"), flag, value)
    assert result.returncode == 2
    assert flag in result.stderr and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_unwritable_audit_sink_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "sink.toml"
    missing = tmp_path / "no-such-dir" / "audit.jsonl"
    path.write_text(f'[upstream]\nurl = "http://app:8000"\n[audit]\nsink = "{missing}"\n',
                    encoding="utf-8")
    for command in ("check", "serve"):
        result = gateway_cli(command, "--config", str(path))
        assert result.returncode == 2, result.stderr
        assert result.stderr.splitlines() == [
            f"audit.sink: directory {missing.parent} does not exist"]
    assert not missing.parent.exists()


def _started(proc: subprocess.Popen[str], url: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[0]
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/__gateway/health", timeout=1).status_code == 200:
                return
        time.sleep(0.05)
    raise AssertionError(f"{proc.args} did not start")


def _interrupted(proc: subprocess.Popen[str]) -> tuple[int, str]:
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=20)
    return proc.returncode, output


def test_demo_runs_logs_in_and_stops_on_ctrl_c() -> None:
    """``gateway demo`` prints the URL and a login, and serves until Ctrl-C
    (README.md#two-commands)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "demo", "--port", str(port)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        _started(proc, url)
        with httpx.Client(base_url=url) as client:
            anonymous = client.get("/dashboard", headers={"accept": "text/html"})
            assert anonymous.status_code == 302
            assert anonymous.headers["location"] == "/login?next=/dashboard"
            login = client.post("/auth/login", json={"email": "demo@example.com",
                                                      "password": "demo-password"})
            assert login.status_code == 200, login.text
            assert "accessToken" not in login.text  # kept in an HttpOnly cookie instead
            dashboard = client.get("/dashboard", headers={"accept": "text/html"})
            assert dashboard.status_code == 200
            assert '<span id="user-id">1</span>' in dashboard.text
    finally:
        code, output = _interrupted(proc)
    assert code == 0, output
    assert f"{url}" in output and "demo@example.com / demo-password" in output
    assert "Traceback" not in output


def test_asgi_app_under_plain_uvicorn_keeps_queries_out_of_the_logs(
        tmp_path: Path, backend: Backend) -> None:
    """README: ``GATEWAY_CONFIG=... uvicorn gateway.asgi:app``; and ``gateway serve`` does not
    print raw query strings (uvicorn's access log would: ``?access_token=...``)."""
    config = tmp_path / "gateway.toml"
    config.write_text(f'[upstream]\nurl = "{backend.url}"\n[[routes]]\n'
                      f'match = "/api/public/**"\naccess = "public"\n', encoding="utf-8")
    secret = "query-secret-0123456789"
    runs = {
        "uvicorn": [sys.executable, "-m", "uvicorn", "gateway.asgi:app", "--no-proxy-headers",
                    "--no-access-log"],
        "serve": [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
    }
    for name, command in runs.items():
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = subprocess.Popen([*command, "--port", str(port)], cwd=tmp_path,
                                env={**os.environ, "GATEWAY_CONFIG": str(config)},
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            _started(proc, url)
            reply = httpx.get(f"{url}/api/public/hello?access_token={secret}")
            assert reply.status_code == 200, (name, reply.text)
            assert reply.json() == {"hello": "world"}
            refused = httpx.get(f"{url}/api/items", headers={"accept": "application/json"})
            assert refused.status_code == 401, name
        finally:
            _, output = _interrupted(proc)
        assert secret not in output, (name, output)
