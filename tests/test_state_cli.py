"""The command line and ``[state]``: a missing ``redis`` extra and a missing Redis password
are one clear line and exit 2 from ``gateway check`` and ``gateway serve``, never a
traceback. Real subprocesses; the extra is "uninstalled" by a ``sitecustomize`` that makes
``import redis`` fail, as it does where the package is absent."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from tests.servers import free_port

ROOT = Path(__file__).resolve().parent.parent
STATE_KEY = secrets.token_hex(32)


def write_config(directory: Path, state: str) -> Path:
    path = directory / "gateway.toml"
    path.write_text(f'[upstream]\nurl = "http://127.0.0.1:9"\n[state]\n{state}\n')
    return path


def gateway(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k not in ("GATEWAY_CONFIG", "PYTHONPATH")}
    full.update(env)
    return subprocess.run([sys.executable, "-m", "gateway", *args], cwd=ROOT, env=full,
                          capture_output=True, text=True, timeout=30)


@pytest.fixture
def without_redis(tmp_path: Path) -> dict[str, str]:
    """An environment in which ``import redis`` fails like an absent package."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import sys\n"
        "class _Absent:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'redis' or name.startswith('redis.'):\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "        return None\n"
        "sys.meta_path.insert(0, _Absent())\n")
    return {"PYTHONPATH": os.pathsep.join([str(site), str(ROOT)]),
            "GATEWAY_STATE_KEY": STATE_KEY}


def test_the_block_works(without_redis: dict[str, str]) -> None:
    probe = subprocess.run([sys.executable, "-c", "import redis"], capture_output=True,
                           text=True, env={**os.environ, **without_redis}, timeout=30)
    assert probe.returncode == 1 and "ModuleNotFoundError" in probe.stderr


@pytest.mark.parametrize("command", ["check", "serve"])
def test_missing_redis_extra_exits_2_with_one_line(command: str, tmp_path: Path,
                                                    without_redis: dict[str, str]) -> None:
    config = write_config(tmp_path, 'backend = "redis"')
    args = [command, "--config", str(config)]
    if command == "serve":
        args += ["--port", str(free_port())]
    result = gateway(args, without_redis)
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("state.backend:")
    assert "pip install 'gateway[redis]'" in lines[0]
    assert "Traceback" not in result.stderr + result.stdout


def test_memory_backend_needs_no_extra(tmp_path: Path, without_redis: dict[str, str]) -> None:
    config = write_config(tmp_path, 'backend = "memory"')
    result = gateway(["check", "--config", str(config)], without_redis)
    assert result.returncode == 0, result


def test_password_env_must_be_set(tmp_path: Path) -> None:
    config = write_config(tmp_path, 'backend = "redis"\npassword_env = "TEST_REDIS_PASSWORD"')
    env = {"GATEWAY_STATE_KEY": STATE_KEY, "PYTHONPATH": str(ROOT)}
    missing = gateway(["check", "--config", str(config)], env)
    assert missing.returncode == 2, missing
    assert missing.stderr.strip().splitlines() == [
        "state.password_env: environment variable TEST_REDIS_PASSWORD is not set"]
    ok = gateway(["check", "--config", str(config)],
                 {**env, "TEST_REDIS_PASSWORD": "s3cret-pass"})
    assert ok.returncode == 0, ok
    assert "s3cret-pass" not in ok.stdout + ok.stderr


def test_bad_state_keys_are_named(tmp_path: Path) -> None:
    config = write_config(tmp_path, 'backend = "redis"\nredis_url = "redis://h:6379/zero"\n'
                          'sentinels = ["h:26379", "no-port"]\ntimeout_s = 0\n'
                          'tls_ca_file = "/ca.pem"')
    result = gateway(["check", "--config", str(config)],
                     {"GATEWAY_STATE_KEY": STATE_KEY, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 2, result
    assert sorted(result.stderr.strip().splitlines()) == sorted([
        "state.redis_url: the path must be a database number, like /0",
        "state.sentinels[1]: must be host:port, not 'no-port'",
        "state.timeout_s: must be > 0 and <= 60",
        "state.tls_ca_file: only used with a rediss:// redis_url",
    ])
