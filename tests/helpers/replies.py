"""Reading what the gateway answers and what the upstream saw, the same way in every test:
``Set-Cookie`` headers by name, the echo endpoint's view of the request, token fingerprints as
the audit stream writes them (docs/audit.md), and a client that never keeps cookies.
"""

from __future__ import annotations

import base64
import hashlib
import json
from http.cookiejar import CookieJar, DefaultCookiePolicy
from pathlib import Path
from typing import Any, Protocol

import httpx

#: The cookie names of ``[cookies]`` by default (gateway.toml.example): access, refresh, guest.
ACCESS, REFRESH, GUEST = "userToken", "refreshToken", "guestToken"

#: What a browser navigating and a script calling an API send as ``accept`` (and more): the
#: gateway answers an unauthenticated request with a redirect or with a JSON 401.
BROWSER = {"accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
XHR = {"accept": "application/json", "x-requested-with": "XMLHttpRequest"}


class _JsonReply(Protocol):
    def json(self) -> Any: ...


class _HasAuditPath(Protocol):
    @property
    def audit_path(self) -> Path: ...


def fp(token: str) -> str:
    """A token's fingerprint, as audit events carry it (``token_fp``)."""
    return hashlib.sha256(token.encode()).hexdigest()[:12]


def cookieless_client(url: str, *, connections: int | None = None, timeout: float = 20
                      ) -> httpx.AsyncClient:
    """A client that never keeps cookies: every request states exactly what it sends (the
    gateway's cookies may be ``Secure`` and tests speak plain HTTP)."""
    jar = CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))
    if connections is None:
        return httpx.AsyncClient(base_url=url, cookies=jar, timeout=timeout)
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(base_url=url, cookies=jar, limits=limits, timeout=timeout)


def set_cookies(response: httpx.Response) -> dict[str, str]:
    """The whole ``Set-Cookie`` header by cookie name; each cookie in its own header and no
    name set twice (asserted)."""
    found: dict[str, str] = {}
    for header in response.headers.get_list("set-cookie"):
        name = header.split("=", 1)[0].strip()
        assert name not in found, f"{name} set twice: {response.headers.get_list('set-cookie')}"
        found[name] = header
    return found


def cookie_value(header: str) -> str:
    """The value a ``Set-Cookie`` header gives its cookie ("" when it clears it)."""
    return header.split(";", 1)[0].split("=", 1)[1]


def set_cookie_value(response: httpx.Response, name: str) -> str | None:
    """The value ``response`` sets for cookie ``name`` ("" when it clears it), None when it
    does not set it."""
    header = set_cookies(response).get(name)
    return None if header is None else cookie_value(header)


def attributes(header: str) -> dict[str, str]:
    """A ``Set-Cookie`` header's attributes by lower-cased name ("" for flags)."""
    parts = [p.strip() for p in header.split(";")[1:]]
    return {p.split("=", 1)[0].lower(): (p.split("=", 1)[1] if "=" in p else "") for p in parts}


def assert_cleared(response: httpx.Response, *names: str) -> None:
    """``response`` clears each cookie of ``names``: empty value, ``Max-Age=0``, ``Path=/``."""
    cookies = set_cookies(response)
    for name in names:
        assert name in cookies, f"{name} not cleared: {list(cookies.values())}"
        attrs = attributes(cookies[name])
        assert cookie_value(cookies[name]) == ""
        assert attrs.get("max-age") == "0", cookies[name]
        assert attrs.get("path") == "/", cookies[name]


def clears_any(response: httpx.Response) -> bool:
    """Whether ``response`` clears any cookie (``Max-Age=0``)."""
    return any("max-age=0" in h.lower() for h in response.headers.get_list("set-cookie"))


def assert_nothing_cleared(response: httpx.Response) -> None:
    assert not clears_any(response), response.headers.get_list("set-cookie")


def cookie_header(**cookies: str | None) -> dict[str, str]:
    """A ``cookie`` request header with the cookies given a value (none: no header)."""
    pairs = [f"{name}={value}" for name, value in cookies.items() if value]
    return {"cookie": "; ".join(pairs)} if pairs else {}


def upstream_saw(reply: _JsonReply) -> dict[str, list[str]]:
    """The request headers the reference backend's echo endpoint received, by lower-cased
    name (values in order)."""
    seen: dict[str, list[str]] = {}
    for name, value in reply.json()["headers"]:
        seen.setdefault(name.lower(), []).append(value)
    return seen


def assert_no_raw_tokens(gateway: _HasAuditPath, *secrets: str | None) -> None:
    """No secret (token, password), nor a long piece of a token, appears anywhere in the
    gateway's audit file."""
    text = gateway.audit_path.read_text() if gateway.audit_path.exists() else ""
    for secret in secrets:
        if not secret:
            continue
        assert secret not in text, "a raw token or password was written to the audit stream"
        for piece in secret.split("."):
            if len(piece) >= 16:
                assert piece not in text, "a piece of a raw token was written to the audit stream"


def canonical(name: str) -> str:
    """A header name as a server could read it: lower-case, ``_`` as ``-``."""
    return name.lower().replace("_", "-")


def echoed(body: dict[str, Any], name: str) -> list[str]:
    """Every value the echo endpoint received for header ``name``, from its JSON ``body``
    (any case, ``_`` read as ``-``: a header a server could take for it counts too)."""
    return [v for k, v in body["headers"] if canonical(k) == canonical(name)]


def decode_user(value: str) -> Any:
    """The JSON in an ``x-auth-user`` header (unpadded base64url)."""
    return json.loads(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
