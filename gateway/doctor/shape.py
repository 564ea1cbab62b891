"""What a backend reply looked like, told by its keys only (never its values).

When ``access_path`` finds nothing, the useful answer is "the reply had ``access``,
``refresh``": the keys, as dotted paths the config takes, and which of them hold
something token-shaped. Values are never returned, so nothing here can leak a token.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from gateway.tokens import is_token, jwt_claims, parse_cookies

_MAX_DEPTH = 4
_MIN_TOKEN_CHARS = 16  # shorter strings (ids, "Bearer") are not taken for tokens


def _entries(document: Any, prefix: str = "", depth: int = 0) -> Iterator[tuple[str, Any]]:
    """Every (dotted key path, value) of a JSON document, objects only, a few levels deep,
    each key before the keys inside it: the one walk the three views below share."""
    if not isinstance(document, dict) or depth >= _MAX_DEPTH:
        return
    for key, value in document.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        yield path, value
        yield from _entries(value, path, depth + 1)


def key_paths(document: Any) -> list[str]:
    """Every dotted key path of a JSON document, objects only, a few levels deep."""
    return [path for path, _ in _entries(document)]


def token_paths(document: Any) -> list[str]:
    """Dotted paths whose value looks like a token (a JWT, or a long token-shaped string)."""
    return [path for path, value in _entries(document) if looks_like_token(value)]


def token_values(document: Any) -> list[str]:
    """The token-like values of a reply: for the report's redaction list, never for output."""
    return [value for _, value in _entries(document) if looks_like_token(value)]


def looks_like_token(value: object) -> bool:
    return is_token(value) and (jwt_claims(value) is not None or len(value) >= _MIN_TOKEN_CHARS)


def _pair(header: str) -> tuple[str, str] | None:
    """The ``name=value`` of one ``Set-Cookie`` header, read by the gateway's cookie parser."""
    cookies = parse_cookies(header.split(";", 1)[0].encode("latin-1", "replace"))
    return next(iter(cookies.items()), None)


def set_cookie_names(set_cookies: tuple[str, ...]) -> list[str]:
    """The cookie names a reply set (``Set-Cookie`` headers), in order."""
    names: list[str] = []
    for header in set_cookies:
        pair = _pair(header)
        if pair is not None and pair[0] not in names:
            names.append(pair[0])
    return names


def set_cookie_value(set_cookies: tuple[str, ...], name: str) -> str | None:
    """The value a reply set for cookie ``name`` (empty values, i.e. deletions, are None)."""
    for header in set_cookies:
        pair = _pair(header)
        if pair is not None and pair[0] == name and pair[1]:
            return pair[1]
    return None


def token_cookie_names(set_cookies: tuple[str, ...]) -> list[str]:
    """The names of the cookies a reply set to something token-shaped."""
    found: list[str] = []
    for header in set_cookies:
        pair = _pair(header)
        if pair is not None and looks_like_token(pair[1]) and pair[0] not in found:
            found.append(pair[0])
    return found
