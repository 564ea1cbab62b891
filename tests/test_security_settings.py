"""The security keys of this release: defaults are the safe ones, bad values name the key."""

from __future__ import annotations

import pytest

from gateway.settings import SettingsError, settings_from_mapping

UPSTREAM = {"upstream": {"url": "http://127.0.0.1:8000"}}


def test_defaults_are_safe() -> None:
    settings = settings_from_mapping(UPSTREAM)
    assert settings.server.allow_encoded_slash is False
    assert settings.csrf.enabled is True
    assert settings.csrf.trusted_origins == ()
    assert settings.cookies.forward_access is False
    assert settings.auth.invalid_cache_ttl_s <= settings.auth.cache_ttl_s


@pytest.mark.parametrize(("data", "problem"), [
    ({"csrf": {"trusted_origins": ["app.example.com"]}},
     "csrf.trusted_origins[0]: must be an origin such as https://app.example.com"),
    ({"csrf": {"trusted_origins": ["https://app.example.com/path"]}},
     "csrf.trusted_origins[0]: must be an origin such as https://app.example.com"),
    ({"csrf": {"enabled": "no"}}, "csrf.enabled: must be true or false"),
    ({"csrf": {"enable": True}}, "csrf.enable: unknown key"),
    ({"server": {"allow_encoded_slash": 1}}, "server.allow_encoded_slash: must be true or false"),
    ({"cookies": {"forward_access": "yes"}}, "cookies.forward_access: must be true or false"),
    ({"auth": {"invalid_cache_ttl_s": -1}}, "auth.invalid_cache_ttl_s: must be >= 0"),
])
def test_bad_values_name_the_key(data: dict[str, object], problem: str) -> None:
    with pytest.raises(SettingsError) as error:
        settings_from_mapping({**UPSTREAM, **data})
    assert problem in error.value.problems
