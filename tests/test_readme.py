"""The README's commands work as written (all but Docker's, which need an engine), and what it
says about the code stays true: its install and test lines are what CI runs, its layout lists
every module of ``gateway/``."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import httpx
import pytest

from gateway.settings import settings_from_mapping
from tests.conftest import Backend
from tests.servers import ServerProcess, free_port

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
CI = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
# The scripts of the environment running the tests: .venv/bin when run as the README says.
BIN = Path(sys.executable).parent


def blocks(language: str) -> list[str]:
    return [body for lang, body in re.findall(r"```(\w*)\n(.*?)```", README, re.S)
            if lang == language]


def shell_lines() -> list[str]:
    """Every command of the README's ``sh`` blocks, without its trailing comment."""
    lines: list[str] = []
    for block in blocks("sh"):
        for line in block.splitlines():
            command = re.sub(r"\s+#\s.*$", "", line).strip()
            if command:
                lines.append(command)
    return lines


def lines_starting(prefix: str) -> list[str]:
    return [line for line in shell_lines() if line.startswith(prefix)]


def test_the_install_and_test_lines_are_what_ci_runs() -> None:
    [test_line] = [line for line in shell_lines() if ".venv/bin/python -m pytest" in line]
    assert CI.rstrip().splitlines()[-1] == test_line
    [demo_line] = [line for line in shell_lines() if line.endswith("gateway demo")]
    [ci_demo] = [line.strip() for line in CI.splitlines() if ".venv/bin/gateway demo" in line]
    # CI installs quietly and execs the demo so that it can stop it by its pid.
    ci_demo = ci_demo.lstrip("(").split(")")[0].replace("-q ", "").replace("exec ", "")
    assert ci_demo == demo_line


def test_gateway_commands_work_in_an_unactivated_venv() -> None:
    """After ``python3 -m venv .venv && .venv/bin/pip install ...`` nothing is on PATH: every
    command the README gives for the installed package names it by its path."""
    for line in shell_lines():
        for word in ("gateway", "pip", "ruff", "mypy"):
            assert not re.search(rf"(^|&&\s*){word}\s", line), line


@pytest.mark.parametrize("line", lines_starting(".venv/bin/gateway check"))
def test_check_lines_run(line: str) -> None:
    args = shlex.split(line)
    assert args[0] == ".venv/bin/gateway"
    result = subprocess.run([str(BIN / "gateway"), *args[1:]], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    config = args[args.index("--config") + 1]
    assert result.stdout.startswith(f"{config}: ok\n")
    assert "routes (first match wins):" in result.stdout


@pytest.mark.timeout(120)
def test_serve_line_runs(tmp_path: Path, backend: Backend) -> None:
    [line] = lines_starting(".venv/bin/gateway serve")
    (tmp_path / "gateway.toml").write_text(
        f'[upstream]\nurl = "{backend.url}"\n[[routes]]\nmatch = "/api/public/**"\n'
        'access = "public"\n', encoding="utf-8")
    port = free_port()
    args = shlex.split(line.replace("8080", str(port)))
    server = ServerProcess([str(BIN / "gateway"), *args[1:]], port, cwd=str(tmp_path))
    server.start(timeout=60)
    try:
        assert httpx.get(server.url + "/api/public/hello", timeout=20).json() == {
            "hello": "world"}
    finally:
        output = server.stop()
    assert "Traceback" not in output


@pytest.mark.timeout(120)
@pytest.mark.parametrize("line", lines_starting("GATEWAY_CONFIG="))
def test_other_asgi_server_lines_run(line: str, tmp_path: Path, backend: Backend) -> None:
    env_part, server_name, *rest = shlex.split(line)
    if shutil.which(server_name, path=str(BIN)) is None:
        pytest.skip(f"{server_name} is not installed here")
    name, value = env_part.split("=", 1)
    (tmp_path / value).write_text(f'[upstream]\nurl = "{backend.url}"\n', encoding="utf-8")
    port = free_port()
    args = [str(BIN / server_name), *[str(port) if a == "8080" else a for a in rest]]
    server = ServerProcess(args, port, env={name: value}, cwd=str(tmp_path))
    server.start(timeout=60)
    try:
        reply = httpx.get(server.url + "/api/items", headers={"accept": "application/json"},
                          timeout=20)
        assert reply.status_code == 401
    finally:
        server.stop()


def test_toml_examples_load() -> None:
    found = blocks("toml")
    assert found
    for block in found:
        settings_from_mapping(tomllib.loads(block))


def test_layout_lists_every_module() -> None:
    [layout] = [block for block in blocks("") if block.startswith("gateway/\n")]
    listed: set[str] = set()
    top: set[str] = set()
    nested: dict[str, set[str]] = {}  # a subpackage's modules, when the layout lists them
    package_line = ""
    for line in layout.splitlines()[1:]:
        if line.startswith("    "):
            nested.setdefault(package_line, set()).add(line.split()[0])
        elif line.startswith("  "):
            package_line = line.split()[0]
            listed.add(package_line)
        else:
            top.add(line.split()[0])
    package = ROOT / "gateway"
    actual = {p.name for p in package.glob("*.py")}
    actual |= {f"{d.name}/" for d in package.iterdir() if (d / "__init__.py").is_file()}
    assert listed == actual, (f"missing from the README layout: {sorted(actual - listed)}; "
                              f"listed but absent: {sorted(listed - actual)}")
    for subpackage, modules in nested.items():
        present = {p.name for p in (package / subpackage).glob("*.py")} - {"__init__.py"}
        assert modules == present, (f"{subpackage}: missing {sorted(present - modules)}, "
                                    f"absent {sorted(modules - present)}")
    for directory in top:
        assert (ROOT / directory).is_dir(), directory


def test_docker_lines_use_the_image_s_config_path() -> None:
    """Docker cannot run here; its lines must at least match the Dockerfile."""
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    [run] = lines_starting("docker run")
    mounted = re.search(r":(/etc/gateway/gateway\.toml):ro", run)
    assert mounted and f"GATEWAY_CONFIG={mounted.group(1)}" in dockerfile
    assert "EXPOSE 8080" in dockerfile and "-p 8080:8080" in run
