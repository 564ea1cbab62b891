"""Shared fixtures: the reference backend and gateways in front of it, on real sockets."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.app import Gateway, create_app
from gateway.demo import BackendOptions, create_backend, create_control
from gateway.settings import settings_from_mapping
from tests.helpers.audit import read_events
from tests.servers import ServerThread


class Backend:
    """The reference backend under uvicorn, with its counters and fault switches.

    ``url`` is the app a gateway proxies to; ``control_url`` is its control API (``/__demo/*``)
    on a listener of its own, which no gateway in front of ``url`` can reach."""

    def __init__(self, server: ServerThread, control: ServerThread) -> None:
        self.server = server
        self.control = control
        self.url = server.url
        self.control_url = control.url

    @classmethod
    def start(cls, options: BackendOptions | None = None) -> Backend:
        """A backend (app and control API) on two free ports; `stop` ends both."""
        app = create_backend(options or BackendOptions())
        # The backend sets Date itself, from its own clock (BackendOptions.clock_offset_s).
        server = ServerThread(app, date_header=False).start()
        try:
            control = ServerThread(create_control(app.state.demo)).start()
        except BaseException:
            server.stop()
            raise
        return cls(server, control)

    def stop(self) -> None:
        self.control.stop()
        self.server.stop()

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stats(self) -> dict[str, Any]:
        data: dict[str, Any] = httpx.get(self.control_url + "/__demo/stats").json()
        return data

    def calls(self, key: str) -> int:
        return int(self.stats()["calls"].get(key, 0))

    def reset(self) -> None:
        httpx.post(self.control_url + "/__demo/reset").raise_for_status()

    def fault(self, key: str, status: int, count: int = -1, delay_s: float = 0.0) -> None:
        httpx.post(self.control_url + "/__demo/faults",
                   json={key: {"status": status, "count": count, "delay_s": delay_s}}
                   ).raise_for_status()

    def configure(self, **options: float) -> None:
        httpx.post(self.control_url + "/__demo/config", json=options).raise_for_status()

    def token(self, user_id: int | str = 1, typ: str = "access", ttl_s: float = 900,
              age_s: float = 0.0) -> str:
        """A token the backend signs; ``age_s`` backdates its issue time."""
        reply = httpx.post(self.control_url + "/__demo/token",
                           json={"user_id": user_id, "typ": typ, "ttl_s": ttl_s,
                                 "age_s": age_s})
        reply.raise_for_status()
        return str(reply.json()["token"])

    def login(self, email: str = "demo@example.com", password: str = "demo-password"
              ) -> dict[str, str]:
        reply = httpx.post(self.url + "/auth/login", json={"email": email, "password": password})
        reply.raise_for_status()
        data: dict[str, str] = reply.json()["data"]
        return data


class RunningGateway:
    """A gateway under uvicorn on a free port, with its audit stream in a file."""

    def __init__(self, app: Gateway, server: ServerThread, audit_path: Path) -> None:
        self.app = app
        self.server = server
        self.url = server.url
        self.audit_path = audit_path

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        return read_events(self.audit_path, name)

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, **kwargs)


@pytest.fixture(scope="session")
def backend() -> Iterator[Backend]:
    with Backend.start() as running:
        yield running


MakeGateway = Callable[..., RunningGateway]


@pytest.fixture
def make_gateway(tmp_path: Path, backend: Backend) -> Iterator[MakeGateway]:
    """``make_gateway(toml_text, upstream=url)``: a gateway with ``[upstream] url`` and
    ``[audit] sink`` filled in (the backend and a temp file unless given)."""
    running: list[RunningGateway] = []
    backend.reset()

    def factory(toml: str = "", *, upstream: str | None = None, **server_options: Any
                ) -> RunningGateway:
        data = tomllib.loads(toml)
        data.setdefault("upstream", {}).setdefault("url", upstream or backend.url)
        audit_path = tmp_path / f"audit-{len(running)}.jsonl"
        data.setdefault("audit", {}).setdefault("sink", str(audit_path))
        # Tests read the file right after a response: each line written at once (buffering
        # has its own tests in tests/e2e/test_audit_stream.py).
        data["audit"].setdefault("flush_interval_s", 0)
        app = create_app(settings_from_mapping(data))
        server = ServerThread(app, **server_options).start()
        gateway = RunningGateway(app, server, Path(data["audit"]["sink"]))
        running.append(gateway)
        return gateway

    yield factory
    for gateway in running:
        gateway.server.stop()


# -- gateways built from the presets in config/ ---------------------------------------------

PRESETS = Path(__file__).resolve().parents[1] / "config"


def to_toml(data: dict[str, Any], prefix: str = "") -> str:
    """Just enough TOML for a gateway config: scalars, lists of scalars, tables, [[arrays]]."""
    scalars: list[str] = []
    tables: list[str] = []
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            tables.append(f"[{name}]\n{to_toml(value, name)}")
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            tables.extend(f"[[{name}]]\n{to_toml(v, name)}" for v in value)
        else:
            scalars.append(f"{key} = {json.dumps(value)}")
    return "\n".join([*scalars, *tables]) + "\n"


def merge(into: dict[str, Any], changes: dict[str, Any]) -> None:
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            merge(into[key], value)
        else:
            into[key] = value


StartGateway = Callable[..., RunningGateway]


@pytest.fixture
def start(make_gateway: MakeGateway, backend: Backend) -> StartGateway:
    """``start(preset, overrides, routes)``: a gateway from ``config/<preset>.toml`` pointed at
    the reference backend, plain-http cookies, fast retries, ``routes`` matched first."""

    def factory(preset: str, overrides: dict[str, Any] | None = None,
                routes: Sequence[dict[str, Any]] = ()) -> RunningGateway:
        data = tomllib.loads((PRESETS / f"{preset}.toml").read_text())
        merge(data, {"upstream": {"url": backend.url}, "cookies": {"secure": False},
                     "auth": {"retry_backoff_s": 0.01}})
        merge(data, overrides or {})
        data["routes"] = [*routes, *data.get("routes", [])]
        return make_gateway(to_toml(data))

    return factory
