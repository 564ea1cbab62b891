"""The configuration files shipped in the repository (docs/configuration.md):
``gateway.toml.example`` documents every key with its default and a comment, and each preset
in ``config/`` loads and fits its backend.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from typing import Any

import pytest

from gateway.settings import CorsSettings, RouteSettings, load_settings, settings_from_mapping
from tests.helpers.settings import EXAMPLE, PRESETS, ROOT, get

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
