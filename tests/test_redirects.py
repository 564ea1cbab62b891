"""Unit tests for gateway.redirects: redirect or 401, and the safe login return target."""

from __future__ import annotations

from urllib.parse import parse_qs, unquote, urljoin, urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.paths import InvalidPath, normalize_path
from gateway.redirects import (
    is_browser_navigation,
    login_location,
    safe_next,
    unauthenticated_answer,
)
from gateway.routes import Route

# --------------------------------------------------------------------------
# Redirect or 401
# --------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("mode", "browser", "expected"),
    [
        ("auto", True, "redirect"),
        ("auto", False, "401"),
        ("redirect", True, "redirect"),
        ("redirect", False, "redirect"),
        ("401", True, "401"),
        ("401", False, "401"),
    ],
)
def test_unauthenticated_answer(mode: str, browser: bool, expected: str) -> None:
    route = Route(match="/x", access="user", unauthenticated=mode)
    assert unauthenticated_answer(route, browser) == expected


HTML = (b"accept", b"text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8")

BROWSER_CASES: list[tuple[str, list[tuple[bytes, bytes]], bool]] = [
    ("GET", [HTML], True),
    ("HEAD", [HTML], True),
    ("get", [HTML], True),
    ("POST", [HTML], False),
    ("PUT", [HTML], False),
    ("GET", [], False),
    ("GET", [(b"accept", b"*/*")], False),
    ("GET", [(b"accept", b"application/json")], False),
    ("GET", [(b"accept", b"text/*")], False),
    ("GET", [(b"accept", b"text/html")], True),
    ("GET", [(b"accept", b"TEXT/HTML")], True),
    ("GET", [(b"accept", b"application/json, text/html;q=0.5")], True),
    ("GET", [(b"accept", b"text/html;q=0")], False),
    ("GET", [(b"accept", b"text/html; q=0.0, */*")], False),
    ("GET", [(b"accept", b"text/html;level=1")], True),
    ("GET", [(b"accept", b"text/htmlx")], False),
    ("GET", [(b"accept", b"application/json"), (b"accept", b"text/html")], True),
    ("GET", [HTML, (b"x-requested-with", b"XMLHttpRequest")], False),
    ("GET", [(b"x-requested-with", b"XMLHttpRequest"), HTML], False),
    ("GET", [HTML, (b"x-requested-with", b"")], False),
    ("GET", [(b"Accept", b"text/html")], True),
    ("GET", [HTML, (b"X-Requested-With", b"fetch")], False),
    ("GET", [(b"user-agent", b"text/html"), (b"accept", b"application/json")], False),
]


@pytest.mark.parametrize(("method", "headers", "expected"), BROWSER_CASES)
def test_is_browser_navigation(
    method: str, headers: list[tuple[bytes, bytes]], expected: bool
) -> None:
    assert is_browser_navigation(method, headers) is expected


# --------------------------------------------------------------------------
# Login redirect
# --------------------------------------------------------------------------

BASE = "https://app.example"


def _next_of(location: str) -> str:
    values = parse_qs(urlsplit(location).query, keep_blank_values=True)["next"]
    assert len(values) == 1
    return values[0]


def _assert_stays_on_app(next_value: str) -> None:
    """The value stays on BASE however it is decoded, the way a browser reads it."""
    candidates = [next_value]
    value = next_value
    for _ in range(5):
        value = unquote(value)
        candidates.append(value)
    for candidate in candidates:
        browser = candidate.replace("\t", "").replace("\r", "").replace("\n", "")
        browser = browser.replace("\\", "/")
        browser = browser.strip(" \x00\x01\x02\x03\x04\x05\x06\x07\x08\x0b\x0c\x0e\x0f")
        assert urlsplit(urljoin(BASE + "/login", browser)).netloc == "app.example", candidate
        assert browser.startswith("/"), candidate
        assert browser[1:2] not in ("/", "\\"), candidate


OPEN_REDIRECT_SHAPES = [
    b"//evil.com",
    b"///evil.com",
    b"////evil.com/x",
    b"/\\evil.com",
    b"/\\\\evil.com",
    b"\\\\evil.com",
    b"/%09/evil.com",
    b"/%2F%2Fevil.com",
    b"/%2f%2fevil.com",
    b"/%2F/evil.com",
    b"/%5cevil.com",
    b"/%5c%5cevil.com",
    b"/%5C/evil.com",
    b"/\t/evil.com",
    b"/ /evil.com",
    b"/%20/evil.com",
    b"/.//evil.com",
    b"/..//evil.com",
    b"/%2e%2e//evil.com",
    b"/%2e%2e%2f%2fevil.com",
    b"/x/..//evil.com",
    b"/%252e%252e//evil.com",
    b"/x/%252e%252e/%252f%252fevil.com",
    b"https://evil.com",
    b"http:evil.com",
    b"javascript:alert(1)",
    b"/%0d%0aSet-Cookie:x",
    b"/%0aevil.com",
    b"/%E2%80%8B/evil.com",
    b"/%E2%80%AE/evil.com",
    b"/%EF%BC%8F/evil.com",  # fullwidth solidus, NFKC -> "/"
    b"/%EF%BC%BCevil.com",  # fullwidth reverse solidus
    b"/%09%2Fevil.com",
    b"/%252F%252Fevil.com",
    b"/%25252F%25252Fevil.com",
    b"/%2525252F%2525252F%2525252F%2525252Fevil.com",
    b"/%00/evil.com",
    b"/%C2%A0/evil.com",  # no-break space
    b"/%E3%80%80/evil.com",  # ideographic space
    b"/@evil.com",
    b"/evil.com%2F%2F",
    b"/a/../../..//evil.com",
    b"/;/evil.com",
]


@pytest.mark.parametrize("raw", OPEN_REDIRECT_SHAPES)
@pytest.mark.parametrize("query", [b"", b"a=1", b"next=//evil.com", b"x=%0d%0a"])
def test_open_redirect_shapes(raw: bytes, query: bytes) -> None:
    try:
        path = normalize_path(raw)
    except InvalidPath:
        return  # the caller answers 400
    location = login_location("/login", "next", path, query)
    assert location.startswith("/login?next=")
    next_value = _next_of(location)
    _assert_stays_on_app(next_value)
    assert next_value == safe_next(path, query)


@pytest.mark.parametrize(
    "hostile",
    [
        "//evil.com",
        "\\\\evil.com",
        "/\\/evil.com",
        "\\/evil.com",
        "evil.com",
        "https://evil.com",
        "",
        "/\t/evil.com",
        "/ /evil.com",
        "/\u200b/evil.com",
        "/\uff0f/evil.com",
        "/a/../..//evil.com",
        "/%2F%2Fevil.com",
        "/\r\nSet-Cookie: x",
        "/x\\..\\..\\/evil.com",
    ],
)
def test_safe_next_with_unnormalized_hostile_input(hostile: str) -> None:
    value = safe_next(hostile, b"")
    _assert_stays_on_app(value)
    assert value == "/" or value == normalize_path(value)


@settings(max_examples=1000, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                *"/\\.%2fFeE5cC0dDaA9 \t\r\n:@?#;x",
                *("\u200b", "\uff0f", "\uff3c", "\u3000", "\x00"),
                *("%25", "%2e", "%2F", "%5C", "%09", "%0a", "%E2%80%8B", "%EF%BC%8F"),
            ]
        ),
        max_size=20,
    ).map("".join),
    st.binary(max_size=10),
)
def test_safe_next_property(raw: str, query: bytes) -> None:
    value = safe_next(raw, query)
    _assert_stays_on_app(value)
    path = value.partition("?")[0]
    assert path == "/" or path == normalize_path(path)
    location = login_location("/login", "next", raw, query)
    assert _next_of(location) == value


SAFE_NEXT_CASES = [
    ("/", b"", "/"),
    ("/dashboard", b"", "/dashboard"),
    ("/a/b/", b"", "/a/b/"),
    ("/a/b", b"x=1&y=2", "/a/b?x=1&y=2"),
    ("/a/b", b"q=%2F%2Fevil.com", "/a/b?q=%2F%2Fevil.com"),  # query can't change the host
    ("/a/b", b"q=a b", "/a/b"),  # not a valid raw query: dropped
    ("/a/b", b"q=%0d%0a", "/a/b"),  # control characters: dropped
    ("/a/b", b"q=\xff", "/a/b"),
    ("/a/b", b"q=1#frag", "/a/b"),
    ("/a%2Fb", b"", "/a%2Fb"),
    ("/~user/caf%C3%A9", b"", "/~user/caf%C3%A9"),
    ("/my%20docs", b"", "/my%20docs"),
    ("//a", b"", "/a"),
    ("\\a", b"", "/a"),
    ("/a/../b", b"", "/b"),
    ("/%2F%2Fevil.com", b"", "/"),
    ("evil.com", b"", "/"),
]


@pytest.mark.parametrize(("path", "query", "expected"), SAFE_NEXT_CASES)
def test_safe_next(path: str, query: bytes, expected: str) -> None:
    assert safe_next(path, query) == expected


LOCATION_CASES = [
    ("/login", "next", "/a", b"", "/login?next=/a"),
    ("/login", "next", "/a/b", b"x=1&y=2", "/login?next=/a/b%3Fx%3D1%26y%3D2"),
    ("/login?lang=en", "next", "/a", b"", "/login?lang=en&next=/a"),
    ("/login?", "next", "/a", b"", "/login?next=/a"),
    ("/login?lang=en&", "next", "/a", b"", "/login?lang=en&next=/a"),
    ("/login#top", "next", "/a", b"", "/login?next=/a#top"),
    (
        "https://auth.example/login",
        "return_to",
        "/a",
        b"",
        "https://auth.example/login?return_to=/a",
    ),
    ("/login", "re turn&x", "/a", b"", "/login?re%20turn%26x=/a"),
    ("/login", "next", "/a%2Fb", b"", "/login?next=/a%252Fb"),
    ("/login", "next", "//evil.com", b"", "/login?next=/evil.com"),
    ("/login", "next", "/%2F%2Fevil.com", b"", "/login?next=/"),
]


@pytest.mark.parametrize(("login_url", "param", "path", "query", "expected"), LOCATION_CASES)
def test_login_location(login_url: str, param: str, path: str, query: bytes, expected: str) -> None:
    assert login_location(login_url, param, path, query) == expected


def test_login_location_round_trips_next() -> None:
    location = login_location("/login", "next", "/a%2Fb/c d", b"x=%2F&y=1")
    # The login page decodes the parameter once and gets safe_next's value back.
    assert _next_of(location) == "/a%2Fb/c%20d?x=%2F&y=1"
