"""Unit tests of the configuration loader's refusals (gateway/settings.py,
docs/configuration.md): unknown keys, wrong types, bad values and missing required keys,
each named by its key, all problems of a document reported together.
"""

from __future__ import annotations

import math
import re
from typing import Any

import pytest

from gateway.settings import RouteSettings, settings_from_mapping
from tests.helpers.settings import minimal, problems_of

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
