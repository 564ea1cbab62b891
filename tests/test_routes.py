"""Unit tests for gateway.routes: normalization, globs, routing, access, login redirects."""

from __future__ import annotations

import re
import time
from urllib.parse import parse_qs, unquote, urljoin, urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.routes import (
    Decision,
    InvalidGlob,
    InvalidPath,
    Route,
    Router,
    compile_glob,
    decide,
    is_browser_navigation,
    login_location,
    normalize_path,
    safe_next,
    unauthenticated_answer,
)

# --------------------------------------------------------------------------
# normalize_path
# --------------------------------------------------------------------------

NORMALIZE_CASES = [
    ("/", "/"),
    ("/a", "/a"),
    ("/a/b", "/a/b"),
    ("/a/b/", "/a/b/"),
    ("/a/./b", "/a/b"),
    ("/a/../b", "/b"),
    ("/a/../../b", "/b"),
    ("/..", "/"),
    ("/../..", "/"),
    ("/../a", "/a"),
    ("/a/..", "/"),
    ("/a/b/..", "/a/"),
    ("/a/b/.", "/a/b/"),
    ("/a/.", "/a/"),
    ("//a///b", "/a/b"),
    ("//", "/"),
    ("///a//", "/a/"),
    ("/a//../b", "/b"),  # slashes are merged before dots are resolved
    ("/%2e%2e", "/"),
    ("/%2E", "/"),
    ("/%2e%2E/a", "/a"),
    ("/.%2e/a", "/a"),
    ("/a/%2e%2e/b", "/b"),
    ("/a/%2e/b", "/a/b"),
    ("/a%2fb", "/a%2Fb"),
    ("/a%2Fb", "/a%2Fb"),
    ("/a/b%2f..c", "/a/b%2F..c"),  # an encoded slash is not a separator
    ("/a/...%2Fb", "/a/...%2Fb"),
    ("/a/x%2F...;y", "/a/x%2F...;y"),  # "...;y" is no dot segment, even to Tomcat
    ("/%7Euser", "/~user"),
    ("/%7euser", "/~user"),
    ("/%41%62%63", "/Abc"),
    ("/%2D%5F%2e%7E%30", "/-_.~0"),
    ("/%e2%80%8b", "/%E2%80%8B"),
    ("/%3f", "/%3F"),
    ("/%25", "/%25"),
    ("/%252e%252e/a", "/%252e%252e/a"),  # no double decoding
    ("/a b", "/a%20b"),
    ('/"<>^`{|}[]', "/%22%3C%3E%5E%60%7B%7C%7D%5B%5D"),
    ("/a;b=c/d:e@f!$&'()*+,=", "/a;b=c/d:e@f!$&'()*+,="),
    ("/.well-known/x", "/.well-known/x"),
    ("/a/...", "/a/..."),
    ("/a/.b/..c", "/a/.b/..c"),
    ("/%0a", "/%0A"),  # encoded control characters stay encoded (only NUL is refused)
    (b"/bytes/%2e%2e/x", "/x"),
    (b"/bytes/%7e/x/", "/bytes/~/x/"),
]


@pytest.mark.parametrize(("raw", "expected"), NORMALIZE_CASES)
def test_normalize_path(raw: bytes | str, expected: str) -> None:
    assert normalize_path(raw) == expected
    # Normalizing is idempotent.
    assert normalize_path(expected) == expected


INVALID_PATHS = [
    # Dot segments behind an encoded slash: a decoding hop would resolve them.
    "/a/..%2f", "/a/..%2Fb/c", "/a/%2e%2e%2fb", "/a/..%5cb", "/p/.%2Fx", "/p/x%2F..",
    "/p/x%5C..%5Cy",
    # The audited example, and the Java form of a dot segment behind encoded slashes.
    "/api/public/..%2Fadmin%2Fstats", "/p/x%2F..;y%2F..;y%2Fadmin", "/p/x%5C.;y",
    b"",
    b"*",
    b"a/b",
    b"https://evil.com/",
    b"/a\x00b",
    b"/a%00b",
    b"/a\tb",
    b"/a\rb",
    b"/a\nb",
    b"/a\x1fb",
    b"/a\x7fb",
    b"/caf\xc3\xa9",
    b"/\xff",
    "/café",
    "/\u200b",
    b"/a\\b",
    b"/\\evil.com",
    b"/a?b",
    b"/a#b",
    b"/100%",
    b"/%zz",
    b"/%2",
    b"/%%32%65",
    b"/public/..;/admin",
    b"/public/.;/admin",
    b"/public/%2e%2e;x=1/admin",
]


@pytest.mark.parametrize("raw", INVALID_PATHS)
def test_normalize_path_rejects(raw: bytes | str) -> None:
    with pytest.raises(InvalidPath):
        normalize_path(raw)


def test_invalid_path_is_a_value_error() -> None:
    assert issubclass(InvalidPath, ValueError)


_path_chars = st.sampled_from(
    [
        *"abz09-._~!$&'()*+,;=:@/ \\?#%\"<>^`{|}[]",
        *("%2e", "%2E", "%2f", "%2F", "%5c", "%41", "%7e", "%00", "%0a", "..", ".", "//"),
        *("\t", "é"),
    ]
)


@settings(max_examples=500, deadline=None)
@given(st.lists(_path_chars, max_size=30).map(lambda parts: "/" + "".join(parts)))
def test_normalize_path_properties(raw: str) -> None:
    try:
        out = normalize_path(raw)
    except InvalidPath:
        return
    assert out.startswith("/")
    assert "//" not in out
    assert normalize_path(out) == out
    segments = out.split("/")[1:]
    assert "." not in segments
    assert ".." not in segments
    assert out.isascii()
    assert re.search(r"%(?![0-9A-F]{2})", out) is None
    # Escapes of unreserved characters were decoded.
    assert re.search(r"%(?:[46][1-9A-F]|[57][0-9A]|3[0-9]|2D|2E|5F|7E)", out) is None


# --------------------------------------------------------------------------
# Globs
# --------------------------------------------------------------------------

GLOB_CASES: list[tuple[str, str, bool]] = [
    ("/", "/", True),
    ("/", "/a", False),
    ("/a", "/a", True),
    ("/a", "/a/", True),  # a trailing slash is not significant
    ("/a/", "/a", True),
    ("/a", "/ab", False),
    ("/a", "/a/b", False),
    ("/api/*", "/api/x", True),
    ("/api/*", "/api/x/", True),
    ("/api/*", "/api", False),
    ("/api/*", "/api/", False),
    ("/api/*", "/api/x/y", False),
    ("/api/*.json", "/api/a.json", True),
    ("/api/*.json", "/api/a.b.json", True),
    ("/api/*.json", "/api/.json", False),
    ("/api/*.json", "/api/a.json/x", False),
    ("/api/*.json", "/api/a.jsonx", False),
    ("/api/v*", "/api/v1", True),
    ("/api/v*", "/api/v", False),
    ("/*/b", "/a/b", True),
    ("/*/b", "/b", False),
    ("/*.*", "/a.b", True),
    ("/*.*", "/a.b.c", True),
    ("/*.*", "/ab", False),
    ("/a*b*c", "/abbbc", True),
    ("/a*b*c", "/abbc", False),
    ("/a*b*c", "/axbyc", True),
    ("/a*b*c", "/abc", False),
    ("/api/**", "/api", True),
    ("/api/**", "/api/", True),
    ("/api/**", "/api/x", True),
    ("/api/**", "/api/x/y", True),
    ("/api/**", "/api/x/y/", True),
    ("/api/**", "/apix", False),
    ("/api/**", "/ap", False),
    ("/api/**", "/", False),
    ("/**", "/", True),
    ("/**", "/anything/at/all/", True),
    ("/**/*.js", "/a.js", True),
    ("/**/*.js", "/x/y/a.js", True),
    ("/**/*.js", "/a.js/b.js", True),
    ("/**/*.js", "/a.js/b", False),
    ("/a/**/b", "/a/b", True),
    ("/a/**/b", "/a/x/b", True),
    ("/a/**/b", "/a/x/y/b", True),
    ("/a/**/b", "/a/x/bb", False),
    ("/a/**/b", "/a/bx/b", True),
    ("/**/b/**", "/b", True),
    ("/**/b/**", "/x/b/y", True),
    ("/**/b/**", "/x/bc/y", False),
    ("/**/b/**/c", "/b/b/c", True),
    ("/**/b/**/c", "/x/bb/b/y/c", True),
    ("/**/b/**/c", "/c/b", False),
    ("/**/**", "/x/y", True),
    ("/a/**/**/b", "/a/b", True),
    ("/%7euser/*", "/~user/x", True),  # literal parts are normalized like paths
    ("/a%2fb", "/a%2Fb", True),
    ("/a%2Fb", "/a/b", False),
    ("/my docs/*", "/my%20docs/x", True),
    ("/a.b", "/axb", False),  # "." is literal, not a regex metacharacter
    ("/a+", "/aa", False),
    ("/a+", "/a+", True),
    ("/(x)", "/(x)", True),
    ("/api/x", "/api/x\n", False),  # anchored with \Z, not $
]


@pytest.mark.parametrize(("pattern", "path", "expected"), GLOB_CASES)
def test_glob(pattern: str, path: str, expected: bool) -> None:
    regex = compile_glob(pattern)
    assert (regex.match(path) is not None) is expected
    assert (regex.fullmatch(path) is not None) is expected
    assert (regex.search(path) is not None) is expected


INVALID_GLOBS = [
    ("", "empty"),
    ("api/**", "start with '/'"),
    ("*", "start with '/'"),
    ("/***", "'***'"),
    ("/a/***/b", "'***'"),
    ("/a**", "whole segment"),
    ("/**a", "whole segment"),
    ("/a/**.js", "whole segment"),
    ("/a?", "'?'"),
    ("/[ab]", "'['"),
    ("/a]", "']'"),
    ("/{a,b}", "'{'"),
    ("/a}", "'}'"),
    ("/a//b", "empty segment"),
    ("/a/./b", "'.' or '..'"),
    ("/a/../b", "'.' or '..'"),
    ("/a/%2e%2E", "'.' or '..'"),
    ("/a\\b", "not a valid path"),
    ("/a#b", "not a valid path"),
    ("/a%zz", "not a valid path"),
    ("/a\x00", "not a valid path"),
    ("/é", "not a valid path"),
]


@pytest.mark.parametrize(("pattern", "message"), INVALID_GLOBS)
def test_invalid_glob(pattern: str, message: str) -> None:
    with pytest.raises(InvalidGlob, match=re.escape(message)):
        compile_glob(pattern)


def test_invalid_glob_is_a_value_error() -> None:
    assert issubclass(InvalidGlob, ValueError)


def _glob_reference(pattern: str, path: str) -> bool:
    """Slow, obviously-correct segment matcher used to cross-check the regexes."""
    pat = pattern.strip("/").split("/") if pattern != "/" else []
    segs = path.strip("/").split("/") if path.strip("/") else []

    def seg_ok(p: str, s: str) -> bool:
        pieces = re.split(r"(\*)", p)
        regex = "".join(".+" if piece == "*" else re.escape(piece) for piece in pieces)
        return re.fullmatch(regex, s, re.DOTALL) is not None

    def rec(i: int, j: int) -> bool:
        if i == len(pat):
            return j == len(segs)
        if pat[i] == "**":
            return any(rec(i + 1, k) for k in range(j, len(segs) + 1))
        return j < len(segs) and seg_ok(pat[i], segs[j]) and rec(i + 1, j + 1)

    return rec(0, 0)


_glob_segment = st.sampled_from(["a", "b", "ab", "*", "a*", "*b", "*a*", "a*b", "**"])
_path_segment = st.sampled_from(["a", "b", "ab", "ba", "aab", "abb", "bab", "x"])


@settings(max_examples=1000, deadline=None)
@given(
    st.lists(_glob_segment, min_size=1, max_size=5),
    st.lists(_path_segment, max_size=6),
    st.booleans(),
)
def test_glob_matches_reference(pattern_segs: list[str], path_segs: list[str], slash: bool) -> None:
    pattern = "/" + "/".join(pattern_segs)
    path = "/" + "/".join(path_segs) + ("/" if slash and path_segs else "")
    expected = _glob_reference(pattern, path)
    assert (compile_glob(pattern).match(path) is not None) is expected


@pytest.mark.parametrize(
    "pattern",
    ["/**/a/**/a/**/a/**/b", "/*a*a*a*a*b", "/**/*a*a*a*b/**/c"],
)
def test_glob_has_no_catastrophic_backtracking(pattern: str) -> None:
    regex = compile_glob(pattern)
    hostile = ["/a" * 4000, "/" + "a" * 8000, ("/" + "a" * 30) * 250]
    start = time.perf_counter()
    for path in hostile:
        assert regex.match(path) is None
    assert time.perf_counter() - start < 1.0


# --------------------------------------------------------------------------
# Router
# --------------------------------------------------------------------------

DEFAULT = Route(match="/**", access="user")
PUBLIC_STATIC = Route(match="/static/**", access="public")
GET_REPORTS = Route(match="/reports/**", access="guest", methods=("GET",))
POST_REPORTS = Route(match="/reports/**", access="user", methods=("POST", "PUT"), roles=("editor",))
ANY_REPORTS = Route(match="/reports/**", access="public")
LOGIN = Route(match="/login", access="public")
ADMIN = Route(match="/admin/**", access="user", roles=("admin",))
ADMIN_PAGE_SHADOWED = Route(match="/admin/public", access="public")

ROUTER = Router(
    [PUBLIC_STATIC, GET_REPORTS, POST_REPORTS, ANY_REPORTS, LOGIN, ADMIN, ADMIN_PAGE_SHADOWED],
    DEFAULT,
)

ROUTER_CASES = [
    ("GET", "/static/app.js", PUBLIC_STATIC),
    ("POST", "/static/app.js", PUBLIC_STATIC),  # no methods = any method
    ("GET", "/static", PUBLIC_STATIC),
    ("GET", "/reports/1", GET_REPORTS),
    ("HEAD", "/reports/1", GET_REPORTS),  # HEAD goes with GET
    ("head", "/reports/1", GET_REPORTS),
    ("get", "/reports/1", GET_REPORTS),  # methods compare case-insensitively
    ("POST", "/reports/1", POST_REPORTS),
    ("PUT", "/reports", POST_REPORTS),
    ("DELETE", "/reports/1", ANY_REPORTS),  # falls through to the next route
    ("OPTIONS", "/reports/1", ANY_REPORTS),
    ("GET", "/login", LOGIN),
    ("GET", "/login/", LOGIN),
    ("GET", "/login/x", DEFAULT),
    ("GET", "/admin/public", ADMIN),  # first match wins
    ("GET", "/", DEFAULT),
    ("GET", "/other/x", DEFAULT),
    ("GET", "/staticx", DEFAULT),
]


@pytest.mark.parametrize(("method", "path", "expected"), ROUTER_CASES)
def test_router_match(method: str, path: str, expected: Route) -> None:
    assert ROUTER.match(method, path) is expected


def test_router_head_only_route_does_not_match_get() -> None:
    head_only = Route(match="/x", access="public", methods=("HEAD",))
    router = Router([head_only], DEFAULT)
    assert router.match("HEAD", "/x") is head_only
    assert router.match("GET", "/x") is DEFAULT


def test_router_empty_table_and_properties() -> None:
    router = Router([], DEFAULT)
    assert router.match("GET", "/anything") is DEFAULT
    assert router.default is DEFAULT
    assert ROUTER.routes[0] is PUBLIC_STATIC


def test_router_rejects_invalid_glob() -> None:
    with pytest.raises(InvalidGlob):
        Router([Route(match="/a**", access="public")], DEFAULT)


def test_router_default_match_is_not_compiled() -> None:
    router = Router([], Route(match="not a glob", access="user"))
    assert router.match("GET", "/").access == "user"


def test_route_is_frozen() -> None:
    with pytest.raises(AttributeError):
        LOGIN.access = "user"  # type: ignore[misc]


# --------------------------------------------------------------------------
# decide / unauthenticated answers
# --------------------------------------------------------------------------

DECIDE_CASES = [
    ("public", (), None, (), Decision.ALLOW),
    ("public", (), "guest", (), Decision.ALLOW),
    ("public", ("admin",), None, (), Decision.ALLOW),
    ("guest", (), None, (), Decision.UNAUTHENTICATED),
    ("guest", (), "guest", (), Decision.ALLOW),
    ("guest", (), "user", (), Decision.ALLOW),
    ("guest", (), "bogus", (), Decision.UNAUTHENTICATED),
    ("user", (), None, (), Decision.UNAUTHENTICATED),
    ("user", (), "guest", (), Decision.UNAUTHENTICATED),
    ("user", ("admin",), "guest", ("admin",), Decision.UNAUTHENTICATED),
    ("user", (), "user", (), Decision.ALLOW),
    ("user", (), "user", ("x",), Decision.ALLOW),
    ("user", ("admin",), "user", (), Decision.FORBIDDEN),
    ("user", ("admin",), "user", ("editor",), Decision.FORBIDDEN),
    ("user", ("admin",), "user", ("editor", "admin"), Decision.ALLOW),
    ("user", ("admin", "ops"), "user", ["ops"], Decision.ALLOW),
    ("user", ("admin",), "user", ("Admin",), Decision.FORBIDDEN),
    ("user", (), "bogus", (), Decision.UNAUTHENTICATED),
    ("unknown", (), "guest", (), Decision.UNAUTHENTICATED),  # fails closed, like "user"
    ("unknown", (), "user", (), Decision.ALLOW),
]


@pytest.mark.parametrize(("access", "route_roles", "token_type", "roles", "expected"), DECIDE_CASES)
def test_decide(
    access: str,
    route_roles: tuple[str, ...],
    token_type: str | None,
    roles: tuple[str, ...],
    expected: Decision,
) -> None:
    route = Route(match="/x", access=access, roles=route_roles)
    assert decide(route, token_type, roles) is expected


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


# -- case and ;params: a route picked by the folded path applies too ----------------------------

EXPRESS_LIKE = Router(
    [Route("/api/public/**", "public"), Route("/api/admin/**", "user", roles=("admin",)),
     Route("/api/**", "user")],
    Route("", "user"),
)


@pytest.mark.parametrize("path", [
    "/api/Admin/stats", "/API/admin/stats", "/api/ADMIN/stats", "/api/admin;x/stats",
    "/api;jsessionid=1/admin/stats", "/api/Admin;v=2/stats",
    # A segment that is only parameters: Tomcat and Spring merge the empty segment it leaves.
    "/api/;x/admin/stats", "/;x/api/admin/stats", "/api/;/admin/stats", "/api;a/;b/Admin/stats",
])
def test_case_and_params_variants_need_the_admin_role(path: str) -> None:
    route = EXPRESS_LIKE.match("GET", normalize_path(path))
    assert decide(route, "user", ()) is Decision.FORBIDDEN
    assert decide(route, "user", ("admin",)) is Decision.ALLOW
    assert decide(route, None, ()) is Decision.UNAUTHENTICATED


def test_folding_never_loosens_a_route() -> None:
    # /API/PUBLIC/x folds onto the public route, but the path itself is a user route (default
    # or /api/**): both apply, so a token is still needed.
    route = EXPRESS_LIKE.match("GET", "/API/PUBLIC/x")
    assert decide(route, None, ()) is Decision.UNAUTHENTICATED
    assert route.access == "user"
    assert decide(route, "user", ()) is Decision.ALLOW


def test_plain_lowercase_paths_match_one_route() -> None:
    route = EXPRESS_LIKE.match("GET", "/api/admin/stats")
    assert route.requires == () and route.roles == ("admin",)
    assert EXPRESS_LIKE.match("GET", "/api/items").match == "/api/**"


def test_folded_globs_match_upper_case_patterns() -> None:
    router = Router([Route("/Docs/**", "public")], Route("", "user"))
    assert router.match("GET", "/Docs/a").access == "public"
    # /docs/a folds to the same route as its pattern folds: no second rule, still public.
    assert router.match("GET", "/docs/a").access == "user"
    assert decide(router.match("GET", "/DOCS/a"), None, ()) is Decision.UNAUTHENTICATED


def test_a_method_limited_route_picked_by_the_folded_path_applies_to_its_methods() -> None:
    router = Router([Route("/api/admin/**", "user", methods=("POST",), roles=("admin",)),
                     Route("/api/**", "public")], Route("", "user"))
    # GET is not limited: both forms pick the public route.
    assert decide(router.match("GET", "/api/Admin/x"), None, ()) is Decision.ALLOW
    # POST: the folded form picks the admin route, so its role applies.
    route = router.match("POST", "/api/Admin/x")
    assert decide(route, "user", ()) is Decision.FORBIDDEN
    assert decide(route, "user", ("admin",)) is Decision.ALLOW
    assert decide(route, None, ()) is Decision.UNAUTHENTICATED


def test_every_role_requirement_of_both_routes_applies() -> None:
    router = Router([Route("/api/x/**", "user", roles=("admin",)),
                     Route("/api/**/stats", "user", roles=("auditor",))], Route("", "user"))
    route = router.match("GET", "/api/X/stats")  # itself the auditor rule, folded the admin one
    assert decide(route, "user", ("auditor",)) is Decision.FORBIDDEN
    assert decide(route, "user", ("admin",)) is Decision.FORBIDDEN
    assert decide(route, "user", ("admin", "auditor")) is Decision.ALLOW


def test_patterns_with_params_fold_without_empty_segments() -> None:
    router = Router([Route("/a/;v/b/**", "public")], Route("", "user"))  # folds to /a/b/**
    assert router.match("GET", "/a/;v/b/x").access == "public"
