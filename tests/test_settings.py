"""Unit tests of the configuration loader (gateway/settings.py, docs/configuration.md)."""

from __future__ import annotations

import dataclasses
import math
import os
import re
import sys
import tomllib
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

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "gateway.toml.example"
PRESETS = sorted((ROOT / "config").glob("*.toml"))

UPSTREAM = "http://127.0.0.1:9000"


def minimal(**sections: Any) -> dict[str, Any]:
    """A valid document (upstream.url set) plus the given sections."""
    data: dict[str, Any] = {"upstream": {"url": UPSTREAM}}
    for name, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(name), dict):
            data[name] = {**data[name], **value}
        else:
            data[name] = value
    return data


def problems_of(data: dict[str, Any]) -> list[str]:
    with pytest.raises(SettingsError) as info:
        settings_from_mapping(data)
    assert info.value.problems, "SettingsError without problems"
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


def get(settings: Settings, dotted: str) -> Any:
    value: Any = settings
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


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


# --------------------------------------------------------------------------- unknown keys


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (minimal(servr={"port": 1}), "servr: unknown key"),
        (minimal(upstream_url="http://x"), "upstream_url: unknown key"),
        (minimal(server={"prot": 1}), "server.prot: unknown key"),
        (minimal(upstream={"timeout": 1}), "upstream.timeout: unknown key"),
        (minimal(auth={"validate": {"paht": "/me"}}), "auth.validate.paht: unknown key"),
        (minimal(auth={"refresh": {"proactive": 5}}), "auth.refresh.proactive: unknown key"),
        (minimal(cookies={"httponly": True}), "cookies.httponly: unknown key"),
        (minimal(cors={"allow_origin": []}), "cors.allow_origin: unknown key"),
        (minimal(default_route={"match": "/x"}), "default_route.match: unknown key"),
        (minimal(default_route={"roles": ["a"]}), "default_route.roles: unknown key"),
        (minimal(routes=[{"match": "/a"}, {"match": "/b", "acess": "user"}]),
         "routes[1].acess: unknown key"),
        (minimal(routes=[{"match": "/a", "role": ["x"]}]), "routes[0].role: unknown key"),
    ],
)
def test_unknown_key_is_named(data: dict[str, Any], expected: str) -> None:
    assert expected in problems_of(data)


# --------------------------------------------------------------------------- types


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (minimal(server={"port": "8080"}), "server.port: must be an integer"),
        (minimal(server={"port": 80.5}), "server.port: must be an integer"),
        (minimal(server={"workers": True}), "server.workers: must be an integer"),
        (minimal(upstream={"max_connections": "many"}),
         "upstream.max_connections: must be an integer"),
        (minimal(upstream={"read_timeout_s": "30"}), "upstream.read_timeout_s: must be a number"),
        (minimal(upstream={"read_timeout_s": False}), "upstream.read_timeout_s: must be a number"),
        (minimal(cookies={"secure": 1}), "cookies.secure: must be true or false"),
        (minimal(cookies={"http_only": "yes"}), "cookies.http_only: must be true or false"),
        (minimal(guest={"enabled": 0}), "guest.enabled: must be true or false"),
        (minimal(auth={"scheme": 1}), "auth.scheme: must be a string"),
        (minimal(upstream={"url": 8000}), "upstream.url: must be a string"),
        (minimal(server={"trusted_proxies": "10.0.0.1"}),
         "server.trusted_proxies: must be a list of strings"),
        (minimal(server={"trusted_proxies": [1, 2]}),
         "server.trusted_proxies: must be a list of strings"),
        (minimal(cors={"allow_origins": ["https://a.example", 3]}),
         "cors.allow_origins: must be a list of strings"),
        (minimal(routes=[{"match": "/a", "methods": "GET"}]),
         "routes[0].methods: must be a list of strings"),
        (minimal(routes=[{"match": "/a", "access": "user", "roles": [["admin"]]}]),
         "routes[0].roles: must be a list of strings"),
        (minimal(routes=[{"match": 5}]), "routes[0].match: must be a string"),
    ],
)
def test_wrong_type_is_named(data: dict[str, Any], expected: str) -> None:
    assert expected in problems_of(data)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (minimal(server=5), "server: must be a table"),
        (minimal(auth={"validate": "/auth/me"}), "auth.validate: must be a table"),
        (minimal(cookies=["a"]), "cookies: must be a table"),
        (minimal(cors=True), "cors: must be a table"),
        (minimal(default_route="user"), "default_route: must be a table"),
        (minimal(routes={"match": "/a"}), "routes: must be an array of tables ([[routes]])"),
        (minimal(routes=["/a"]), "routes[0]: must be a table"),
    ],
)
def test_not_a_table(data: dict[str, Any], expected: str) -> None:
    assert expected in problems_of(data)


def test_upstream_not_a_table() -> None:
    problems = problems_of({"upstream": "http://app:8000"})
    assert "upstream: must be a table" in problems


# --------------------------------------------------------------------------- values


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (minimal(routes=[{"match": "/a"}, {"match": "/b"}, {"match": "/c", "access": "admin"}]),
         "routes[2].access: must be one of public, guest, user"),
        (minimal(routes=[{"match": "/a", "unauthenticated": "login"}]),
         "routes[0].unauthenticated: must be one of auto, redirect, 401"),
        (minimal(default_route={"access": "everyone"}),
         "default_route.access: must be one of public, guest, user"),
        (minimal(default_route={"unauthenticated": "302"}),
         "default_route.unauthenticated: must be one of auto, redirect, 401"),
        (minimal(auth={"refresh": {"send": "cookie"}}),
         "auth.refresh.send: must be one of access_header, refresh_body, refresh_cookie"),
        (minimal(auth={"logout": {"send": "header"}}),
         "auth.logout.send: must be one of access_header, refresh_body, refresh_cookie"),
        (minimal(auth={"validate": {"method": "PUT"}}),
         "auth.validate.method: must be one of GET, POST"),
        (minimal(cookies={"same_site": "Lax "}),
         "cookies.same_site: must be one of lax, strict, none"),
        (minimal(guest={"mode": "remote"}), "guest.mode: must be one of backend, local"),
        (minimal(state={"backend": "memcached"}),
         "state.backend: must be one of memory, redis"),
    ],
)
def test_bad_enum_value(data: dict[str, Any], expected: str) -> None:
    assert expected in problems_of(data)


def test_contract_example_message_exactly() -> None:
    data = minimal(routes=[
        {"match": "/api/public/**", "access": "public"},
        {"match": "/api/**", "access": "user"},
        {"match": "/admin/**", "access": "admins"},
    ])
    assert problems_of(data) == ["routes[2].access: must be one of public, guest, user"]


@pytest.mark.parametrize(
    "url",
    ["", "127.0.0.1:8000", "ftp://app:21", "http://", "http:///path", "app",
     "http://app:99999", "http://app:port", "http://app/?x=1", "http://app/#top"],
)
def test_bad_upstream_url(url: str) -> None:
    problems = problems_of({"upstream": {"url": url}})
    assert len(problems) == 1
    assert problems[0].startswith("upstream.url: ")


@pytest.mark.parametrize(
    "url", ["http://app:8000", "https://app.example.com", "http://[::1]:8000/base", "http://x/"]
)
def test_good_upstream_url(url: str) -> None:
    assert settings_from_mapping({"upstream": {"url": url}}).upstream.url == url


@pytest.mark.parametrize("url", ["auth.example.com", "ws://auth", "http://auth:0x50"])
def test_bad_auth_url(url: str) -> None:
    problems = problems_of(minimal(auth={"url": url}))
    assert [p.split(":", 1)[0] for p in problems] == ["auth.url"]


@pytest.mark.parametrize(
    "key", ["upstream.url", "auth.url", "login.url"],
)
def test_malformed_ipv6_url_is_a_problem_not_a_crash(key: str) -> None:
    section, name = key.split(".")
    data = minimal(**{section: {name: "http://[::1:8000"}})
    problems = problems_of(data)
    assert any(p.startswith(f"{key}: ") for p in problems)


def test_login_url_may_be_path_or_absolute_url() -> None:
    assert settings_from_mapping(minimal(login={"url": "/sign-in"})).login.url == "/sign-in"
    url = "https://id.example.com/login"
    assert settings_from_mapping(minimal(login={"url": url})).login.url == url


@pytest.mark.parametrize("url", ["login", "//evil.example.com/login", "/\\evil.example.com"])
def test_bad_login_url(url: str) -> None:
    problems = problems_of(minimal(login={"url": url}))
    assert [p.split(":", 1)[0] for p in problems] == ["login.url"]


def test_same_site_none_requires_secure() -> None:
    problems = problems_of(minimal(cookies={"same_site": "none", "secure": False}))
    assert problems == ['cookies.same_site: "none" requires cookies.secure = true']
    s = settings_from_mapping(minimal(cookies={"same_site": "none"}))
    assert s.cookies.same_site == "none"
    s = settings_from_mapping(minimal(cookies={"same_site": "strict", "secure": False}))
    assert s.cookies.secure is False


@pytest.mark.parametrize(
    "pattern",
    ["api/**", "/api/**x", "/api/***", "/api//x", "/api/../admin", "/api/./x",
     "/api/[a-z]", "/api/?", "/api/{a,b}", "/a b\\c", "/a%zz"],
)
def test_unparseable_route_glob(pattern: str) -> None:
    problems = problems_of(minimal(routes=[{"match": "/ok"}, {"match": pattern}]))
    assert len(problems) == 1
    assert problems[0].startswith("routes[1].match: ")


def test_empty_route_glob_is_a_problem() -> None:
    problems = problems_of(minimal(routes=[{"match": ""}]))
    assert any(p.startswith("routes[0].match: ") for p in problems)


@pytest.mark.parametrize("pattern", ["/", "/api/*", "/api/**", "/**", "/api/*.json", "/docs/"])
def test_good_route_glob(pattern: str) -> None:
    s = settings_from_mapping(minimal(routes=[{"match": pattern}]))
    assert s.routes[0].match == pattern


def test_route_match_is_required() -> None:
    problems = problems_of(minimal(routes=[{"match": "/a"}, {"access": "user"}]))
    assert problems == ["routes[1].match: required"]


@pytest.mark.parametrize("access", ["public", "guest"])
def test_roles_only_on_user_routes(access: str) -> None:
    data = minimal(routes=[{"match": "/x/**", "access": access, "roles": ["admin"]}])
    assert problems_of(data) == ['routes[0].roles: only allowed with access = "user"']


def test_roles_on_user_route_are_kept() -> None:
    data = minimal(routes=[{"match": "/x/**", "access": "user", "roles": ["admin", "staff"]}])
    assert settings_from_mapping(data).routes[0].roles == ("admin", "staff")


def test_route_defaults() -> None:
    route = settings_from_mapping(minimal(routes=[{"match": "/x"}])).routes[0]
    assert route == RouteSettings(match="/x", access="public", methods=(), roles=(),
                                  unauthenticated="auto")


@pytest.mark.parametrize("method", ["", "GET POST", "GET/1", "ПОСТ"])
def test_bad_route_method(method: str) -> None:
    problems = problems_of(minimal(routes=[{"match": "/x", "methods": ["GET", method]}]))
    assert len(problems) == 1
    assert problems[0].startswith("routes[0].methods: ")


@pytest.mark.parametrize(
    ("data", "key"),
    [
        (minimal(server={"port": 70000}), "server.port"),
        (minimal(server={"port": -1}), "server.port"),
        (minimal(server={"workers": 0}), "server.workers"),
        (minimal(server={"reserved_prefix": "__gateway"}), "server.reserved_prefix"),
        (minimal(server={"reserved_prefix": "/"}), "server.reserved_prefix"),
        (minimal(server={"reserved_prefix": "/gw/"}), "server.reserved_prefix"),
        (minimal(server={"trusted_proxies": ["10.0.0.0/8", "proxy.local"]}),
         "server.trusted_proxies[1]"),
        (minimal(upstream={"connect_timeout_s": 0}), "upstream.connect_timeout_s"),
        (minimal(upstream={"read_timeout_s": -1}), "upstream.read_timeout_s"),
        (minimal(upstream={"max_connections": 0}), "upstream.max_connections"),
        (minimal(auth={"scheme": "Bearer token"}), "auth.scheme"),
        (minimal(auth={"scheme": ""}), "auth.scheme"),
        (minimal(auth={"retries": -1}), "auth.retries"),
        (minimal(auth={"retries": 11}), "auth.retries"),
        (minimal(auth={"cache_max_entries": 0}), "auth.cache_max_entries"),
        (minimal(auth={"cache_ttl_s": -0.5}), "auth.cache_ttl_s"),
        (minimal(auth={"validate": {"path": "auth/me"}}), "auth.validate.path"),
        (minimal(auth={"validate": {"path": "//evil/me"}}), "auth.validate.path"),
        (minimal(auth={"validate": {"path": "/me?x=1"}}), "auth.validate.path"),
        (minimal(auth={"validate": {"user_path": "data..user"}}), "auth.validate.user_path"),
        (minimal(auth={"validate": {"id_field": ""}}), "auth.validate.id_field"),
        (minimal(auth={"refresh": {"access_path": ""}}), "auth.refresh.access_path"),
        (minimal(auth={"refresh": {"send": "refresh_body", "body_field": ""}}),
         "auth.refresh.body_field"),
        (minimal(auth={"refresh": {"proactive_s": -1}}), "auth.refresh.proactive_s"),
        (minimal(auth={"refresh": {"grace_s": -1}}), "auth.refresh.grace_s"),
        (minimal(auth={"login": {"path": "login"}}), "auth.login.path"),
        (minimal(auth={"login": {"access_path": "."}}), "auth.login.access_path"),
        (minimal(auth={"logout": {"backend_path": "revoke"}}), "auth.logout.backend_path"),
        (minimal(guest={"path": "guest"}), "guest.path"),
        (minimal(guest={"ttl_s": 0}), "guest.ttl_s"),
        (minimal(guest={"username": "svc"}), "guest.password_env"),
        (minimal(guest={"mode": "local", "secret_env": ""}), "guest.secret_env"),
        (minimal(cookies={"access": "user token"}), "cookies.access"),
        (minimal(cookies={"refresh": ""}), "cookies.refresh"),
        (minimal(cookies={"guest": "userToken"}), "cookies"),
        (minimal(cookies={"path": "app"}), "cookies.path"),
        (minimal(cookies={"domain": "example.com; secure"}), "cookies.domain"),
        (minimal(cookies={"access_max_age_s": -1}), "cookies.access_max_age_s"),
        (minimal(login={"return_param": "next page"}), "login.return_param"),
        (minimal(audit={"sink": ""}), "audit.sink"),
        (minimal(cors={"allow_origins": ["*"]}), "cors.allow_origins[0]"),
        (minimal(cors={"allow_origins": ["https://a.example.com/"]}), "cors.allow_origins[0]"),
        (minimal(cors={"allow_origins": ["a.example.com"]}), "cors.allow_origins[0]"),
        (minimal(cors={"allow_methods": ["GET", "P0ST"]}), "cors.allow_methods[1]"),
        (minimal(cors={"allow_headers": ["x y"]}), "cors.allow_headers[0]"),
        (minimal(cors={"expose_headers": ["ok", ""]}), "cors.expose_headers[1]"),
        (minimal(cors={"max_age_s": -5}), "cors.max_age_s"),
        (minimal(state={"backend": "redis", "redis_url": "http://cache:6379"}),
         "state.redis_url"),
        (minimal(state={"backend": "redis", "key_env": ""}), "state.key_env"),
    ],
)
def test_bad_value_is_named(data: dict[str, Any], key: str) -> None:
    problems = problems_of(data)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{key}: "), problems


def test_star_origin_allowed_without_credentials() -> None:
    s = settings_from_mapping(minimal(cors={"allow_origins": ["*"], "allow_credentials": False}))
    assert s.cors is not None
    assert s.cors.allow_origins == ("*",)


def test_redis_url_only_checked_with_redis_backend() -> None:
    s = settings_from_mapping(minimal(state={"redis_url": "not a url"}))
    assert s.state.backend == "memory"


def test_nan_duration_is_rejected() -> None:
    problems = problems_of(minimal(upstream={"read_timeout_s": math.nan}))
    assert any(p.startswith("upstream.read_timeout_s: ") for p in problems)


# --------------------------------------------------------------------------- required, together


def test_missing_upstream_url() -> None:
    assert problems_of({}) == ["upstream.url: required"]
    assert problems_of({"upstream": {}}) == ["upstream.url: required"]
    assert problems_of({"upstream": {"read_timeout_s": 3}}) == ["upstream.url: required"]


def test_several_problems_reported_together() -> None:
    data = {
        "server": {"port": "80", "colour": "blue"},
        "auth": {"refresh": {"send": "carrier-pigeon"}},
        "cookies": {"same_site": "none", "secure": False},
        "routes": [
            {"match": "/ok"},
            {"match": "/api/**", "access": "public", "roles": ["admin"]},
            {"match": "/x/**y", "access": "admin"},
        ],
    }
    problems = problems_of(data)
    expected = {
        "upstream.url: required",
        "server.port: must be an integer",
        "server.colour: unknown key",
        "auth.refresh.send: must be one of access_header, refresh_body, refresh_cookie",
        'cookies.same_site: "none" requires cookies.secure = true',
        'routes[1].roles: only allowed with access = "user"',
        "routes[2].access: must be one of public, guest, user",
    }
    assert expected <= set(problems)
    assert any(p.startswith("routes[2].match: ") for p in problems)
    assert len(problems) == len(expected) + 1
    # One problem per line, each naming its key first.
    for line in problems:
        assert "\n" not in line
        assert re.match(r"^[a-z_]+(\[\d+\])?(\.[a-z_]+)*: ", line), line


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


# --------------------------------------------------------------------------- shipped files


def _uncommented_cors(text: str) -> str:
    """The example's commented-out [cors] section, uncommented."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.rstrip() == "# [cors]")
    block = []
    for line in lines[start:]:
        if not line.startswith("# "):
            break
        block.append(line[2:])
    return "\n".join(block) + "\n"


def test_example_documents_every_key_with_its_default() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    data = tomllib.loads(text)
    assert "cors" not in data, "[cors] must stay commented out: its presence enables CORS"
    example = settings_from_mapping(data)
    defaults = settings_from_mapping({"upstream": {"url": example.upstream.url}})
    # Every section other than the routes holds exactly the defaults...
    assert dataclasses.replace(example, routes=()) == defaults
    # ...and names every field explicitly.
    cors = tomllib.loads(_uncommented_cors(text))["cors"]
    assert CorsSettings(**{k: tuple(v) if isinstance(v, list) else v
                           for k, v in cors.items()}) == CorsSettings()
    data["cors"] = cors

    def keys(obj: object) -> set[str]:
        out: set[str] = set()
        for f in dataclasses.fields(obj):  # type: ignore[arg-type]
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value) and not isinstance(value, RouteSettings):
                out |= {f"{f.name}.{k}" for k in keys(value)}
            else:
                out.add(f.name)
        return out

    def present(table: dict[str, Any], prefix: str = "") -> set[str]:
        out: set[str] = set()
        for key, value in table.items():
            if isinstance(value, dict):
                out |= present(value, f"{prefix}{key}.")
            else:
                out.add(f"{prefix}{key}")
        return out

    expected = keys(dataclasses.replace(defaults, cors=CorsSettings())) - {
        "routes", "default_route"
    }
    expected |= {"default_route.access", "default_route.unauthenticated"}
    expected |= {"routes.match", "routes.access", "routes.methods", "routes.roles",
                 "routes.unauthenticated"}
    found = present({k: v for k, v in data.items() if k != "routes"})
    found |= {f"routes.{k}" for route in data["routes"] for k in route}
    assert expected - found == set()
    assert found - expected == set()


def test_example_cors_block_loads_when_uncommented() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    data = tomllib.loads(text + "\n" + _uncommented_cors(text))
    assert settings_from_mapping(data).cors == CorsSettings()


def test_example_has_a_comment_on_every_key() -> None:
    section = ""
    for number, line in enumerate(EXAMPLE.read_text(encoding="utf-8").splitlines(), 1):
        header = re.match(r"^(?:# )?(\[\[?[a-z_.]+\]\]?)", line)
        if header:
            section = header.group(1)
        # Keys, and those of the commented-out [cors] block ("# key = ...").
        key = re.match(r"^(?:# )?[a-z_]+ = (.*)$", line)
        if key is None or section == "[[routes]]":  # routes: documented in the block above
            continue
        assert "#" in key.group(1), f"line {number} has no comment: {line}"


PRESET_EXPECTATIONS: dict[str, dict[str, Any]] = {
    "next-api-layer": {
        "auth.scheme": "Bearer",
        "auth.validate.path": "/auth/me",
        "auth.validate.user_path": "data",
        "auth.refresh.path": "/auth/refresh",
        "auth.refresh.send": "access_header",
        "auth.refresh.access_path": "data.accessToken",
        "auth.refresh.refresh_path": "data.refreshToken",
        "auth.login.path": "/auth/login",
        "auth.login.access_path": "data.accessToken",
        "auth.login.refresh_path": "data.refreshToken",
        "auth.logout.path": "/auth/logout",
        "guest.enabled": True,
        "guest.mode": "backend",
        "guest.path": "/auth/guest",
        "guest.token_path": "data.accessToken",
        "cookies.access": "userToken",
        "cookies.refresh": "refreshToken",
        "cookies.guest": "guestToken",
        "cookies.access_max_age_s": 7 * 24 * 3600,
        "cookies.guest_max_age_s": 3600,
    },
    "django-simplejwt": {
        "auth.scheme": "JWT",
        "auth.validate.path": "/auth/users/me/",
        "auth.validate.user_path": "",
        "auth.refresh.path": "/auth/jwt/refresh/",
        "auth.refresh.send": "refresh_body",
        "auth.refresh.body_field": "refresh",
        "auth.refresh.access_path": "access",
        "auth.refresh.refresh_path": "refresh",
        "auth.login.path": "/auth/jwt/create/",
        "auth.login.access_path": "access",
        "auth.login.refresh_path": "refresh",
        "auth.logout.path": "/auth/logout/",
        "auth.logout.send": "refresh_body",
        "auth.logout.body_field": "refresh",
        "auth.logout.backend_path": "/auth/jwt/blacklist/",
    },
    "express": {
        "auth.scheme": "Bearer",
        "auth.validate.path": "/api/auth/me",
        "auth.validate.user_path": "user",
        "auth.refresh.path": "/auth/refresh-token",
        "auth.refresh.send": "refresh_cookie",
        "auth.refresh.access_path": "accessToken",
        "auth.refresh.refresh_path": "",
        "auth.login.path": "/api/auth/login",
        "auth.login.access_path": "accessToken",
        "auth.login.refresh_path": "",
        "cookies.refresh": "refreshToken",
    },
}


def test_every_preset_is_tested() -> None:
    assert sorted(p.stem for p in PRESETS) == sorted(PRESET_EXPECTATIONS)


@pytest.mark.parametrize("name", sorted(PRESET_EXPECTATIONS))
def test_preset_fits_its_backend(name: str) -> None:
    s = load_settings(ROOT / "config" / f"{name}.toml")
    for key, expected in PRESET_EXPECTATIONS[name].items():
        assert get(s, key) == expected, key
    assert 30 <= s.auth.refresh.proactive_s <= 120
    by_access = {r.access for r in s.routes}
    assert {"public", "user"} <= by_access
    assert any(r.roles for r in s.routes), "an admin role example"
    public = [r for r in s.routes if r.access == "public"]
    assert any(r.match == "/api/public/**" for r in public)
    # The login and refresh endpoints are reachable without a session.
    for path in (s.auth.login.path, s.auth.refresh.path):
        assert any(r.match == path for r in public), path
    # A catch-all /api/** comes after every more specific /api/ route.
    matches = [r.match for r in s.routes]
    api_all = matches.index("/api/**")
    assert all(not m.startswith("/api/") for m in matches[api_all + 1:])
    assert s.default_route.access == "user"
