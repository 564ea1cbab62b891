"""Unit tests for gateway.paths: reading and normalizing the request path."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.paths import InvalidPath, normalize_path

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
