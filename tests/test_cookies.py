"""The Set-Cookie headers of ``[cookies]`` (gateway/cookies.py): attributes, and clearing with
the same name, path and domain plus ``Max-Age=0`` (docs/configuration.md#cookies,
docs/behaviour.md#refresh, docs/behaviour.md#login-and-logout)."""

from __future__ import annotations

from http.cookies import SimpleCookie

import pytest

from gateway.cookies import CookiePolicy, Kind
from gateway.settings import CookieSettings

TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl-_~+/="
KINDS: tuple[Kind, ...] = ("access", "refresh", "guest")


def header(pair: tuple[bytes, bytes]) -> str:
    name, value = pair
    assert name == b"set-cookie"
    return value.decode("ascii")


def parts(value: str) -> tuple[str, list[str]]:
    """``name=value`` and the attribute list, as written."""
    first, *attrs = [p.strip() for p in value.split(";")]
    return first, attrs


def attribute_map(value: str) -> dict[str, str]:
    _, attrs = parts(value)
    return {a.split("=", 1)[0].lower(): (a.split("=", 1)[1] if "=" in a else "") for a in attrs}


def test_defaults_for_every_kind() -> None:
    policy = CookiePolicy(CookieSettings())
    assert header(policy.set("access", TOKEN)) == (
        f"userToken={TOKEN}; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=604800")
    assert header(policy.set("refresh", "r1")) == (
        "refreshToken=r1; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=604800")
    assert header(policy.set("guest", "g1")) == (
        "guestToken=g1; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=3600")
    assert policy.names == {"access": "userToken", "refresh": "refreshToken",
                            "guest": "guestToken"}


def test_every_setting_reaches_the_header() -> None:
    settings = CookieSettings(access="a_tok", refresh="r_tok", guest="g_tok", path="/app",
                              domain="example.com", secure=True, http_only=True,
                              same_site="strict", access_max_age_s=60, refresh_max_age_s=120,
                              guest_max_age_s=30)
    policy = CookiePolicy(settings)
    expected: dict[Kind, tuple[str, str]] = {
        "access": ("a_tok", "60"), "refresh": ("r_tok", "120"), "guest": ("g_tok", "30")}
    for kind, (name, max_age) in expected.items():
        value = header(policy.set(kind, "v"))
        first, attrs = parts(value)
        assert first == f"{name}=v"
        assert attrs == ["Path=/app", "Domain=example.com", "Secure", "HttpOnly",
                         "SameSite=Strict", f"Max-Age={max_age}"]


def test_no_domain_attribute_when_domain_is_empty() -> None:
    value = header(CookiePolicy(CookieSettings(domain="")).set("access", "v"))
    assert "domain" not in attribute_map(value)


def test_insecure_and_script_readable_cookies_drop_those_flags() -> None:
    value = header(CookiePolicy(CookieSettings(secure=False, http_only=False)).set("access", "v"))
    attrs = attribute_map(value)
    assert "secure" not in attrs and "httponly" not in attrs
    assert attrs["samesite"] == "Lax" and attrs["path"] == "/" and attrs["max-age"] == "604800"


@pytest.mark.parametrize(("same_site", "written"),
                         [("lax", "Lax"), ("strict", "Strict"), ("none", "None")])
def test_same_site_values(same_site: str, written: str) -> None:
    value = header(CookiePolicy(CookieSettings(same_site=same_site)).set("refresh", "v"))
    assert attribute_map(value)["samesite"] == written


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("settings", [
    CookieSettings(),
    CookieSettings(path="/app", domain="example.com", same_site="strict"),
    CookieSettings(secure=False, http_only=False, path="/x/y"),
], ids=["defaults", "path-domain-strict", "insecure"])
def test_clear_matches_set_but_for_value_and_max_age(kind: Kind,
                                                     settings: CookieSettings) -> None:
    policy = CookiePolicy(settings)
    set_first, set_attrs = parts(header(policy.set(kind, TOKEN)))
    clear_first, clear_attrs = parts(header(policy.clear(kind)))
    assert clear_first == f"{policy.names[kind]}="
    assert set_first == f"{policy.names[kind]}={TOKEN}"
    assert set_attrs[-1].startswith("Max-Age=") and set_attrs[-1] != "Max-Age=0"
    assert clear_attrs[-1] == "Max-Age=0"
    assert clear_attrs[:-1] == set_attrs[:-1]  # Path, Domain, Secure, HttpOnly, SameSite


def test_clear_session_and_clear_all() -> None:
    policy = CookiePolicy(CookieSettings(access="a", refresh="r", guest="g"))
    session = [header(h) for h in policy.clear_session()]
    everything = [header(h) for h in policy.clear_all()]
    assert [parts(v)[0] for v in session] == ["a=", "r="]
    assert [parts(v)[0] for v in everything] == ["a=", "r=", "g="]
    for value in everything:
        assert attribute_map(value)["max-age"] == "0"
    assert session == [header(policy.clear("access")), header(policy.clear("refresh"))]


def test_standard_parser_reads_the_same_attributes() -> None:
    policy = CookiePolicy(CookieSettings(domain="example.com", path="/app", same_site="strict"))
    jar: SimpleCookie = SimpleCookie()
    jar.load(header(policy.set("access", TOKEN)))
    morsel = jar["userToken"]
    assert morsel.value == TOKEN
    assert morsel["path"] == "/app"
    assert morsel["domain"] == "example.com"
    assert morsel["secure"] is True
    assert morsel["httponly"] is True
    assert morsel["samesite"] == "Strict"
    assert morsel["max-age"] == "604800"

    cleared: SimpleCookie = SimpleCookie()
    cleared.load(header(policy.clear("access")))
    assert cleared["userToken"].value == ""
    assert cleared["userToken"]["max-age"] == "0"
    assert cleared["userToken"]["path"] == "/app"
    assert cleared["userToken"]["domain"] == "example.com"


def test_headers_are_ascii_bytes() -> None:
    name, value = CookiePolicy(CookieSettings()).set("access", TOKEN)
    assert isinstance(name, bytes) and isinstance(value, bytes)
    value.decode("ascii")
