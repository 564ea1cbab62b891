"""Unit tests of the configuration loader (gateway/settings.py, docs/configuration.md): the
default of every key, a full document read back, and settings files on disk (TOML errors,
missing, unreadable or non-UTF-8 files).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway.settings import (
    CorsSettings,
    RouteSettings,
    Settings,
    SettingsError,
    load_settings,
    settings_from_mapping,
)
from tests.helpers.settings import UPSTREAM, get, minimal

# --------------------------------------------------------------------------- defaults

# docs/configuration.md, key by key.
DOCUMENTED_DEFAULTS: list[tuple[str, Any]] = [
    ("server.host", "127.0.0.1"),
    ("server.port", 8080),
    ("server.workers", 1),
    ("server.reserved_prefix", "/__gateway"),
    ("server.trusted_proxies", ()),
    ("upstream.connect_timeout_s", 5.0),
    ("upstream.read_timeout_s", 30.0),
    ("upstream.max_connections", 256),
    ("auth.url", ""),
    ("auth.scheme", "Bearer"),
    ("auth.cache_ttl_s", 2.0),
    ("auth.cache_max_entries", 100000),
    ("auth.retries", 2),
    ("auth.retry_backoff_s", 0.1),
    ("auth.validate.path", "/auth/me"),
    ("auth.validate.method", "GET"),
    ("auth.validate.user_path", "data"),
    ("auth.validate.id_field", "id"),
    ("auth.validate.roles_field", "roles"),
    ("auth.refresh.path", "/auth/refresh"),
    ("auth.refresh.send", "access_header"),
    ("auth.refresh.body_field", "refresh"),
    ("auth.refresh.access_path", "data.accessToken"),
    ("auth.refresh.refresh_path", "data.refreshToken"),
    ("auth.refresh.proactive_s", 0),
    ("auth.refresh.clock_skew_s", 30),
    ("auth.refresh.grace_s", 30),
    ("auth.login.path", ""),
    ("auth.login.access_path", "data.accessToken"),
    ("auth.login.refresh_path", "data.refreshToken"),
    ("auth.login.strip_tokens", True),
    ("auth.logout.path", ""),
    ("auth.logout.send", "refresh_body"),
    ("auth.logout.body_field", "refresh"),
    ("auth.logout.backend_path", ""),
    ("guest.enabled", False),
    ("guest.mode", "backend"),
    ("guest.path", "/auth/guest"),
    ("guest.token_path", "data.accessToken"),
    ("guest.username", ""),
    ("guest.password_env", ""),
    ("guest.secret_env", "GATEWAY_GUEST_SECRET"),
    ("guest.ttl_s", 3600),
    ("cookies.access", "userToken"),
    ("cookies.refresh", "refreshToken"),
    ("cookies.guest", "guestToken"),
    ("cookies.path", "/"),
    ("cookies.domain", ""),
    ("cookies.secure", True),
    ("cookies.http_only", True),
    ("cookies.same_site", "lax"),
    ("cookies.access_max_age_s", 604800),
    ("cookies.refresh_max_age_s", 604800),
    ("cookies.guest_max_age_s", 3600),
    ("login.url", "/login"),
    ("login.return_param", "next"),
    ("default_route.access", "user"),
    ("default_route.unauthenticated", "auto"),
    ("audit.sink", "stdout"),
    ("state.backend", "memory"),
    ("state.redis_url", "redis://127.0.0.1:6379/0"),
    ("state.key_env", "GATEWAY_STATE_KEY"),
]


@pytest.fixture(scope="module")
def minimal_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    path = tmp_path_factory.mktemp("cfg") / "gateway.toml"
    path.write_text(f'[upstream]\nurl = "{UPSTREAM}"\n', encoding="utf-8")
    return load_settings(path)


@pytest.mark.parametrize(
    ("key", "expected"), DOCUMENTED_DEFAULTS, ids=[k for k, _ in DOCUMENTED_DEFAULTS]
)
def test_minimal_file_gives_contract_default(
    minimal_settings: Settings, key: str, expected: Any
) -> None:
    value = get(minimal_settings, key)
    assert value == expected
    assert type(value) is type(expected) or isinstance(expected, int | float)


def test_minimal_file_other_defaults(minimal_settings: Settings) -> None:
    s = minimal_settings
    assert s.upstream.url == UPSTREAM
    assert s.auth_url == UPSTREAM  # auth.url "" = upstream.url
    assert s.routes == ()
    assert s.cors is None  # absent [cors] = no CORS handling
    assert s.default_route == RouteSettings(match="/**", access="user", methods=(), roles=(),
                                            unauthenticated="auto")
    assert s == settings_from_mapping({"upstream": {"url": UPSTREAM}})


def test_float_fields_accept_integers() -> None:
    s = settings_from_mapping(minimal(upstream={"read_timeout_s": 7}, guest={"ttl_s": 60}))
    assert s.upstream.read_timeout_s == 7.0
    assert isinstance(s.upstream.read_timeout_s, float)
    assert s.guest.ttl_s == 60.0


def test_auth_url_overrides_upstream_and_drops_trailing_slash() -> None:
    s = settings_from_mapping(minimal(auth={"url": "https://auth.example.com/"}))
    assert s.auth_url == "https://auth.example.com"


def test_settings_are_frozen(minimal_settings: Settings) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        minimal_settings.server.port = 1  # type: ignore[misc]


# --------------------------------------------------------------------------- a full file


def test_full_document_is_read() -> None:
    data = minimal(
        server={"host": "0.0.0.0", "port": 9090, "workers": 4, "reserved_prefix": "/_gw",
                "trusted_proxies": ["10.0.0.0/8", "::1"]},
        auth={"scheme": "JWT", "validate": {"path": "/me/", "user_path": ""},
              "refresh": {"send": "refresh_body", "access_path": "access",
                          "refresh_path": "", "proactive_s": 60},
              "login": {"path": "/login/", "strip_tokens": False},
              "logout": {"path": "/logout/", "backend_path": "/revoke/"}},
        guest={"enabled": True, "mode": "local", "ttl_s": 120},
        cookies={"same_site": "none", "secure": True, "domain": "example.com"},
        routes=[
            {"match": "/api/public/**", "access": "public"},
            {"match": "/api/admin/**", "access": "user", "roles": ["admin"],
             "methods": ["get", "Post"], "unauthenticated": "401"},
        ],
        default_route={"access": "guest", "unauthenticated": "redirect"},
        cors={"allow_origins": ["https://app.example.com"]},
        state={"backend": "redis", "redis_url": "rediss://cache:6380/1"},
        audit={"sink": "/var/log/gateway-audit.jsonl"},
    )
    s = settings_from_mapping(data)
    assert s.server.trusted_proxies == ("10.0.0.0/8", "::1")
    assert s.auth.scheme == "JWT"
    assert s.auth.validate.user_path == ""
    assert s.auth.refresh.refresh_path == ""
    assert s.auth.refresh.proactive_s == 60.0
    assert s.auth.login.strip_tokens is False
    assert s.guest.mode == "local"
    assert s.routes == (
        RouteSettings("/api/public/**", "public", (), (), "auto"),
        RouteSettings("/api/admin/**", "user", ("GET", "POST"), ("admin",), "401"),
    )
    assert s.default_route.access == "guest"
    assert s.default_route.unauthenticated == "redirect"
    assert s.cors == CorsSettings(allow_origins=("https://app.example.com",))
    assert s.state.backend == "redis"
    assert s.audit.sink == "/var/log/gateway-audit.jsonl"


def test_routes_keep_file_order(tmp_path: Path) -> None:
    path = tmp_path / "g.toml"
    path.write_text(
        '[upstream]\nurl = "http://app:8000"\n'
        '[[routes]]\nmatch = "/b/**"\naccess = "user"\n'
        '[[routes]]\nmatch = "/a/**"\naccess = "public"\n'
        '[[routes]]\nmatch = "/c"\naccess = "guest"\n',
        encoding="utf-8",
    )
    s = load_settings(path)
    assert [r.match for r in s.routes] == ["/b/**", "/a/**", "/c"]
    assert [r.access for r in s.routes] == ["user", "public", "guest"]


def test_empty_cors_table_enables_cors_with_defaults() -> None:
    s = settings_from_mapping(minimal(cors={}))
    assert s.cors == CorsSettings()


# --------------------------------------------------------------------------- files


def test_load_settings_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(
        '[upstream]\nurl = "http://app:8000"\n\n[auth]\nscheme = "JWT"\n'
        '\n[[routes]]\nmatch = "/api/public/**"\naccess = "public"\n',
        encoding="utf-8",
    )
    s = load_settings(str(path))
    assert s.upstream.url == "http://app:8000"
    assert s.auth.scheme == "JWT"
    assert s.routes[0].match == "/api/public/**"
    assert load_settings(path) == s  # str and PathLike alike


@pytest.mark.parametrize(
    "text",
    ['[upstream]\nurl = "http://app:8000', "[upstream\nurl = 1\n",
     '[upstream]\nurl = "a"\nurl = "b"\n', "upstream.url = \n"],
)
def test_invalid_toml_text(tmp_path: Path, text: str) -> None:
    path = tmp_path / "broken.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(SettingsError) as info:
        load_settings(path)
    assert len(info.value.problems) == 1
    assert info.value.problems[0].startswith(f"{path}: not valid TOML")


def test_validation_problems_from_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[upstream]\nurl = "http://app"\n[server]\nport = "x"\n', encoding="utf-8")
    with pytest.raises(SettingsError) as info:
        load_settings(path)
    assert info.value.problems == ["server.port: must be an integer"]


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(SettingsError) as info:
        load_settings(path)
    (line,) = info.value.problems
    assert line.startswith(f"{path}: cannot read config file")
    assert "No such file" in line


def test_directory_is_unreadable(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(tmp_path)
    (line,) = info.value.problems
    assert line.startswith(f"{tmp_path}: cannot read config file")


@pytest.mark.skipif(sys.platform == "win32" or os.geteuid() == 0,
                    reason="root (or Windows) can read a mode-000 file")
def test_permission_denied(tmp_path: Path) -> None:
    path = tmp_path / "secret.toml"
    path.write_text('[upstream]\nurl = "http://app"\n', encoding="utf-8")
    path.chmod(0)
    try:
        with pytest.raises(SettingsError) as info:
            load_settings(path)
    finally:
        path.chmod(0o600)
    (line,) = info.value.problems
    assert line.startswith(f"{path}: cannot read config file")
    assert "Permission denied" in line


def test_non_utf8_file_is_a_problem(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[upstream]\nurl = "http://app"\n# caf\xe9\n')
    with pytest.raises(SettingsError) as info:
        load_settings(path)
    assert info.value.problems[0].startswith(f"{path}: ")
