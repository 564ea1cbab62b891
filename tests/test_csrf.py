"""The pieces of the cross-site verdict (gateway/csrf.py); tests/e2e/test_security_csrf.py
drives the whole of it over real sockets."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.csrf import CsrfGuard, canonical_origin
from gateway.request import TrustedProxies
from gateway.settings import settings_from_mapping


@pytest.mark.parametrize(("value", "expected"), [
    ("https://App.Example.COM", "https://app.example.com"),
    ("https://app.example.com:443", "https://app.example.com"),
    ("http://app.example.com:80/", "http://app.example.com"),
    ("http://app.example.com:8080", "http://app.example.com:8080"),
    ("http://[::1]:8080", "http://[::1]:8080"),
    ("null", None),
    ("", None),
    ("ftp://app.example.com", None),
    ("https://app.example.com/path", None),
    ("https://user@app.example.com", None),
    ("https://app.example.com:99999", None),
    ("https://", None),
])
def test_canonical_origin(value: str, expected: str | None) -> None:
    assert canonical_origin(value) == expected


def _guard(trusted: tuple[str, ...] = (), **csrf: Any) -> CsrfGuard:
    settings = settings_from_mapping({"upstream": {"url": "http://127.0.0.1:1"},
                                      "server": {"trusted_proxies": list(trusted)},
                                      "csrf": csrf})
    return CsrfGuard(settings, TrustedProxies(trusted))


def _scope(headers: list[tuple[bytes, bytes]], *, peer: str = "10.0.0.1",
           scheme: str = "http") -> dict[str, Any]:
    return {"type": "http", "scheme": scheme, "client": (peer, 5000), "headers": headers}


def test_own_origin_is_scheme_and_host() -> None:
    guard = _guard()
    assert guard.own_origin(_scope([(b"host", b"App.example:80")])) == "http://app.example"
    assert guard.own_origin(_scope([(b"host", b"app.example")], scheme="https")) == \
        "https://app.example"
    assert guard.own_origin(_scope([(b"host", b"app.example")], scheme="wss")) == \
        "https://app.example"
    assert guard.own_origin(_scope([])) is None
    # X-Forwarded-* from an untrusted peer are ignored ...
    forwarded = [(b"host", b"internal:8080"), (b"x-forwarded-host", b"app.example"),
                 (b"x-forwarded-proto", b"https")]
    assert guard.own_origin(_scope(forwarded)) == "http://internal:8080"
    # ... and from a trusted one, their last value (the nearest proxy's) counts.
    trusting = _guard(("10.0.0.0/8",))
    assert trusting.own_origin(_scope(forwarded)) == "https://app.example"
    chained = [(b"host", b"internal"), (b"x-forwarded-host", b"evil.example, app.example"),
               (b"x-forwarded-proto", b"http, https")]
    assert trusting.own_origin(_scope(chained)) == "https://app.example"


def test_verdicts() -> None:
    guard = _guard(trusted_origins=["https://partner.example"])
    host = (b"host", b"app.example")

    def refusal(*headers: tuple[bytes, bytes]) -> str | None:
        return guard.refusal(_scope([host, *headers]))

    assert refusal() is None
    assert refusal((b"origin", b"http://app.example")) is None
    assert refusal((b"origin", b"https://partner.example"),
                   (b"sec-fetch-site", b"cross-site")) is None
    assert refusal((b"sec-fetch-site", b"cross-site")) == "sec_fetch_site"
    assert refusal((b"origin", b"https://evil.example")) == "origin"
    assert refusal((b"origin", b"null")) == "origin"
    assert refusal((b"origin", b"http://app.example"), (b"origin", b"https://evil.example")) \
        == "origin"
    assert refusal((b"origin", b"https://evil.example"),
                   (b"sec-fetch-site", b"same-site")) == "origin"
    # The browser's own word for same-origin holds even when a proxy rewrote Host.
    assert refusal((b"origin", b"https://public.example"),
                   (b"sec-fetch-site", b"same-origin")) is None
