"""Every failure a user can fix ends ``gateway check``/``gateway serve`` with exit 2 and one line
that names it, never a traceback (docs/deployment.md#exit-codes). Run as real processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MINIMAL = '[upstream]\nurl = "http://127.0.0.1:8000"\n[audit]\nsink = "stderr"\n'


def gateway(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "GATEWAY_CONFIG"}
    return subprocess.run([sys.executable, "-m", "gateway", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)


def assert_one_line(result: subprocess.CompletedProcess[str], expected: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert result.stderr.splitlines() == [expected], result.stderr
    assert "Traceback" not in result.stdout + result.stderr


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(MINIMAL, encoding="utf-8")
    return path


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_serve_on_a_port_in_use(config: Path, taken_port: int) -> None:
    for workers in ("1", "2"):
        result = gateway("serve", "--config", str(config), "--port", str(taken_port),
                         "--workers", workers)
        assert_one_line(result, f"cannot listen on 127.0.0.1:{taken_port}: the port is "
                                "already in use (stop the other server or choose another --port)")


def test_serve_on_an_address_this_host_does_not_have(config: Path) -> None:
    result = gateway("serve", "--config", str(config), "--host", "192.0.2.1", "--port", "8080")
    assert_one_line(result, "cannot listen on 192.0.2.1:8080: Cannot assign requested address")


def test_serve_on_a_host_name_that_does_not_resolve(config: Path) -> None:
    result = gateway("serve", "--config", str(config), "--host", "no-such-host.invalid")
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("cannot listen on no-such-host.invalid:8080: the host cannot be "
                           "resolved")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["check", "serve"])
def test_a_config_that_is_a_directory(command: str, tmp_path: Path) -> None:
    assert_one_line(gateway(command, "--config", str(tmp_path)),
                    f"{tmp_path}: cannot read config file (Is a directory)")


@pytest.mark.parametrize("command", ["check", "serve"])
def test_a_missing_config(command: str, tmp_path: Path) -> None:
    assert_one_line(gateway(command, cwd=tmp_path),
                    "gateway.toml: cannot read config file (No such file or directory)")


@pytest.mark.parametrize("command", ["check", "serve"])
def test_a_config_that_is_not_text(command: str, tmp_path: Path) -> None:
    path = tmp_path / "binary.toml"
    path.write_bytes(b"\xff\xfe[upstream]\n")
    assert_one_line(gateway(command, "--config", str(path)), f"{path}: not valid UTF-8")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
@pytest.mark.parametrize("command", ["check", "serve"])
def test_an_unreadable_config(command: str, config: Path) -> None:
    config.chmod(0)
    try:
        assert_one_line(gateway(command, "--config", str(config)),
                        f"{config}: cannot read config file (Permission denied)")
    finally:
        config.chmod(0o600)


@pytest.mark.parametrize("command", ["check", "serve"])
def test_an_access_log_in_a_missing_directory(command: str, config: Path,
                                              tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir" / "access.jsonl"
    config.write_text(MINIMAL + f'[access_log]\nenabled = true\nsink = "{missing}"\n',
                      encoding="utf-8")
    assert_one_line(gateway(command, "--config", str(config)),
                    f"access_log.sink: directory {missing.parent} does not exist")


def test_a_metrics_directory_that_does_not_exist(config: Path, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir"
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(missing)}
    result = subprocess.run([sys.executable, "-m", "gateway", "serve", "--config", str(config)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert_one_line(result, f"PROMETHEUS_MULTIPROC_DIR: {missing} is not a writable directory "
                            "(unset it, and gateway serve makes its own)")
