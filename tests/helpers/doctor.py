"""Running ``gateway doctor`` against the reference backend: configs from the presets in
``config/``, the command as a subprocess (exit codes, output) or in-process (details)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

from gateway.doctor import DoctorOptions, Report, diagnose
from gateway.settings import Settings, settings_from_mapping
from tests.conftest import PRESETS, merge, to_toml

ROOT = Path(__file__).resolve().parents[2]
USERNAME = "demo@example.com"
PASSWORD = "demo-password"
PASSWORD_ENV = "DOCTOR_TEST_PASSWORD"
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}")


def preset_config(preset: str, backend_url: str,
                  overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """``config/<preset>.toml`` pointed at the backend, plain-http cookies, fast retries."""
    data = tomllib.loads((PRESETS / f"{preset}.toml").read_text())
    merge(data, {"upstream": {"url": backend_url}, "cookies": {"secure": False},
                 "auth": {"retry_backoff_s": 0.01}})
    merge(data, overrides or {})
    return data


def write_config(directory: Path, data: dict[str, Any], name: str = "gateway.toml") -> Path:
    path = directory / name
    path.write_text(to_toml(data), encoding="utf-8")
    return path


def run_doctor(*args: str, env: dict[str, str] | None = None, password: str | None = PASSWORD,
               timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``python -m gateway doctor ...`` with the test password in ``$DOCTOR_TEST_PASSWORD``."""
    full_env = {k: v for k, v in os.environ.items()
                if k not in ("GATEWAY_CONFIG", PASSWORD_ENV)}
    full_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    if password is not None:
        full_env[PASSWORD_ENV] = password
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "gateway", "doctor", *args], cwd=ROOT,
                          env=full_env, capture_output=True, text=True, timeout=timeout)


def doctor_args(config: Path, *extra: str, username: str = USERNAME) -> list[str]:
    return ["--config", str(config), "--username", username, "--password-env", PASSWORD_ENV,
            *extra]


def verdicts_of_json(stdout: str) -> dict[str, str]:
    document = json.loads(stdout)
    return {c["id"]: c["verdict"] for c in document["checks"]}


def verdicts_of_text(stdout: str) -> dict[str, str]:
    """``{"login": "pass", ...}`` from the checklist lines (``PASS  login  ...``)."""
    found: dict[str, str] = {}
    for line in stdout.splitlines():
        match = re.match(r"^(PASS|WARN|FAIL|SKIP)\s+(\w+)\s", line)
        if match:
            found[match.group(2)] = match.group(1).lower()
    return found


async def diagnose_preset(preset: str, backend_url: str, overrides: dict[str, Any] | None = None,
                          *, password: str = PASSWORD, username: str = USERNAME,
                          **options: Any) -> Report:
    settings: Settings = settings_from_mapping(preset_config(preset, backend_url, overrides))
    return await diagnose(settings, DoctorOptions(username=username, password=password,
                                                  **options))


def assert_no_secrets(text: str, secrets: frozenset[str] | set[str] = frozenset(),
                      password: str = PASSWORD) -> None:
    """No password, no token the doctor held, nothing JWT-shaped in ``text``."""
    assert password not in text
    assert not _JWT.search(text), _JWT.search(text)
    for secret in secrets:
        assert secret not in text
