"""`gateway check` run as a real subprocess (CONTRACT.md §1)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.settings import load_settings

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
