"""What an unauthenticated request is answered: a redirect to the login page, with a return
target that is safe to follow, or a 401.

Its own module because it is about the answer, not the decision: the router says *that* a
request is unauthenticated (gateway/routes.py), this says *how* to tell the client, and the
login endpoints (gateway/login.py) use the same browser test for their own answers.

Redirect or 401 (:func:`unauthenticated_answer`)
------------------------------------------------
A route's ``unauthenticated`` is ``redirect``, ``401`` or ``auto``; ``auto`` redirects a
top-level browser navigation (:func:`is_browser_navigation`: GET or HEAD that accepts
``text/html``, without ``X-Requested-With``) and answers 401 to anything else (fetch, XHR,
API clients), which could not follow a redirect to a login page anyway.

Login redirects (:func:`safe_next`, :func:`login_location`)
-----------------------------------------------------------
The ``next`` value given to the login page is always a relative reference
that starts with exactly one ``/``.  Hostile input falls back to ``/``; the
checks assume that whoever eventually uses the value may URL-decode it more
than once, strip whitespace, treat ``\\`` as ``/``, apply NFKC or resolve dot
segments, and that none of those may turn it into a network-path reference
(``//evil.com``) or an absolute URL.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from typing import TYPE_CHECKING
from urllib.parse import quote, unquote, urlsplit

from gateway.paths import InvalidPath, normalize_path, resolve_dots
from gateway.vocabulary import UnauthenticatedAnswer

if TYPE_CHECKING:  # the router imports this module (it re-exports its names)
    from gateway.routes import Route

__all__ = [
    "is_browser_navigation",
    "login_location",
    "safe_next",
    "unauthenticated_answer",
]


def is_browser_navigation(method: str, headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Whether a request looks like a top-level browser navigation.

    True for GET or HEAD with an ``Accept`` header that lists ``text/html``
    (with a non-zero q) and no ``X-Requested-With`` header.  ``headers`` is
    the ASGI header list (names are compared case-insensitively anyway).
    """
    if method.upper() not in ("GET", "HEAD"):
        return False
    accepts_html = False
    for name, value in headers:
        name = name.lower()
        if name == b"x-requested-with":
            return False
        if name == b"accept" and not accepts_html:
            accepts_html = _accepts_html(value)
    return accepts_html


def _accepts_html(value: bytes) -> bool:
    value = value.lower()
    if b"text/html" not in value:
        return False
    for media_range in value.split(b","):
        media_type, _, params = media_range.partition(b";")
        if media_type.strip() != b"text/html":
            continue
        if not _q_is_zero(params):
            return True
    return False


def _q_is_zero(params: bytes) -> bool:
    for param in params.split(b";"):
        key, _, val = param.partition(b"=")
        if key.strip() == b"q":
            try:
                return float(val.strip()) == 0.0
            except ValueError:
                return False
    return False


def unauthenticated_answer(route: Route, browser: bool) -> UnauthenticatedAnswer:
    """How to answer an unauthenticated request: redirect to login, or 401 (``auto``: a
    redirect for a browser navigation, see :func:`is_browser_navigation`)."""
    mode = route.unauthenticated
    if mode == "redirect":
        return "redirect"
    if mode == "401":
        return "401"
    return "redirect" if browser else "401"


# --------------------------------------------------------------------------
# Login redirect
# --------------------------------------------------------------------------

_LEADING_SLASHES = re.compile(r"\A[/\\]+")
# Raw query strings: printable ASCII except space and "#".
_QUERY_OK = re.compile(r"[!-\"$-~]*")
_ASCII_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_MAX_DECODE_ROUNDS = 4


def _fully_decoded(value: str) -> str | None:
    """URL-decode until stable; None if it takes suspiciously many rounds."""
    for _ in range(_MAX_DECODE_ROUNDS):
        decoded = unquote(value, errors="replace")
        if decoded == value:
            return value
        value = decoded
    return None


def _has_control(value: str) -> bool:
    """Control, format (zero-width, bidi), private-use or unassigned characters."""
    if value.isascii():
        return _ASCII_CONTROL.search(value) is not None
    return any(unicodedata.category(c)[0] == "C" for c in value)


def _starts_with_one_slash(path: str) -> bool:
    return path.startswith("/") and not path.startswith("//")


def _path_is_hostile(decoded: str) -> bool:
    if _has_control(decoded):
        return True
    forms = [decoded] if decoded.isascii() else [decoded, unicodedata.normalize("NFKC", decoded)]
    for form in forms:
        # What a sloppy consumer might make of it: whitespace dropped, "\" as "/".
        squashed = "".join(form.split()).replace("\\", "/")
        if not _starts_with_one_slash(squashed):
            return True
        if not _starts_with_one_slash(resolve_dots(squashed)):
            return True
        parts = urlsplit(squashed)
        if parts.scheme or parts.netloc:
            return True
    return False


def _safe_query(query_string: bytes) -> str:
    query = query_string.decode("latin-1")
    if not query or not _QUERY_OK.fullmatch(query):
        return ""
    decoded = _fully_decoded(query)
    if decoded is None or _has_control(decoded):
        return ""
    return query


def safe_next(normalized_path: str, query_string: bytes) -> str:
    """The post-login return target: a relative reference starting with one "/".

    Leading slashes and backslashes are collapsed to one "/" and the path is
    normalized again; if the result (or its fully decoded form) is in any way
    suspicious the path falls back to "/".  A query string that is not plain
    printable ASCII, or decodes to control characters, is dropped.
    """
    path = _LEADING_SLASHES.sub("/", normalized_path, count=1)
    try:
        path = normalize_path(path)
    except InvalidPath:
        return "/"
    decoded = _fully_decoded(path)
    if decoded is None or _path_is_hostile(decoded):
        return "/"
    query = _safe_query(query_string)
    return f"{path}?{query}" if query else path


def login_location(
    login_url: str, return_param: str, normalized_path: str, query_string: bytes
) -> str:
    """``login_url`` with ``<return_param>=<safe next>`` added to its query."""
    next_value = safe_next(normalized_path, query_string)
    base, hash_mark, fragment = login_url.partition("#")
    if "?" not in base:
        separator = "?"
    elif base.endswith(("?", "&")):
        separator = ""
    else:
        separator = "&"
    param = f"{quote(return_param, safe='')}={quote(next_value, safe='/')}"
    return f"{base}{separator}{param}{hash_mark}{fragment}"
