"""Unit tests for gateway.globs: the route pattern language."""

from __future__ import annotations

import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.globs import InvalidGlob, compile_glob

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
