"""Reading the request path: normalizing it, refusing what can't be read safely, and the
readings a decoding backend would make of it.

It is its own module because everything else works on its result: the router matches
normalized paths (gateway/routes.py), globs are normalized like paths (gateway/globs.py), the
login redirect re-normalizes its return target (gateway/redirects.py), and the forwarder sends
the normalized path upstream. Everything here is pure (no I/O) and runs on every request.

Path normalization (:func:`normalize_path`)
-------------------------------------------
The input is the request's *raw* path (ASGI ``raw_path``, no query string).
The result is the canonical form that route globs are matched against:

* ``%XX`` escapes of unreserved characters (``A-Z a-z 0-9 - . _ ~``,
  RFC 3986 section 2.3) are decoded (``%41`` -> ``A``, ``%2e`` -> ``.``).
  Every other escape is kept, with its hex digits upper-cased (``%2f`` ->
  ``%2F``).  An encoded slash or backslash (``%2F``, ``%5C``) is *not* a
  segment separator, but a segment that would hold a dot segment once they
  are decoded (``..%2Fadmin``) is refused (below).
* Printable ASCII characters that are not allowed raw in a path
  (space ``" < > [ ] ^ ` { | }``) are percent-encoded (space -> ``%20``), so
  ``/a b`` and ``/a%20b`` normalize to the same thing.
* Runs of ``/`` are merged *first*, then ``.`` and ``..`` segments are
  removed (RFC 3986 remove_dot_segments); ``..`` above the root stays at the
  root.  So ``/a//../b`` is ``/b``, as it would be on a server that merges
  slashes.
* The result always starts with exactly one ``/``.  A trailing slash is kept
  (``/a/b/`` stays ``/a/b/``) and a final dot segment leaves one
  (``/a/b/..`` -> ``/a/``, ``/a/.`` -> ``/a/``).

:class:`InvalidPath` (the caller answers 400) is raised for:

* an empty path, or one not starting with ``/`` (including ``*`` and
  absolute-form ``https://host/...``);
* control characters (bytes below 0x20 and 0x7F), raw or as ``%00`` (other
  encoded control characters such as ``%0A`` stay encoded; only NUL is refused
  in encoded form);
* raw non-ASCII bytes (or non-ASCII characters in a ``str``): clients must
  percent-encode them;
* a raw backslash: some servers treat ``\\`` as ``/``, so the path the
  router sees would differ from the one the backend resolves (browsers never
  send one: they turn ``\\`` into ``/`` themselves);
* a raw ``?`` or ``#``: they cannot be part of a raw path, so the caller
  passed something else (such as the full request target);
* a ``%`` that isn't followed by two hex digits;
* a segment ``.;...`` or ``..;...``, which Java servers (Tomcat, Jetty) treat
  as a dot segment with path parameters: a known access-control bypass;
* a ``.`` or ``..`` between encoded slashes (``..%2F``, ``x%5C..``, and the
  Java form ``x%2F..;y``): a hop that decodes them and resolves dot segments
  would reach another route.

Encoded separators (:func:`read_path`)
--------------------------------------
A route is decided on the path as the backend will read it, and backends differ: Starlette
(uvicorn ``unquote``s the path), Django (``PATH_INFO`` is decoded) and an Express ``*``
param (``decodeURIComponent``) read ``%2F`` as ``/``; others keep it as a character. So a
path holding ``%2F`` or ``%5C`` (any case, also behind ``%25``: ``%252F``) is refused by
default (:class:`EncodedSeparator`). With ``server.allow_encoded_slash = true`` it is let
through unchanged, and routed as the stricter of its encoded and its decoded readings
(:func:`decoded_readings`, ``Router.match`` in gateway/routes.py).
"""

from __future__ import annotations

import re

__all__ = [
    "EncodedSeparator",
    "InvalidPath",
    "decoded_readings",
    "has_encoded_separator",
    "normalize_path",
    "read_path",
    "resolve_dots",
]


class InvalidPath(ValueError):
    """The request path can't be normalized safely; answer 400."""


class EncodedSeparator(InvalidPath):
    """The path holds an encoded slash or backslash, which ``server.allow_encoded_slash``
    does not allow (answer 400)."""



_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")

# pchar (RFC 3986) minus "%", plus "/": characters that may appear raw in a path.
_PATH_CHARS = r"A-Za-z0-9\-._~!$&'()*+,;=:@/"

# An already canonical path: non-empty segments that contain no "%" and don't
# start with "." (which rules out dot segments, conservatively).
_CANONICAL = re.compile(r"(?:/[A-Za-z0-9\-_~!$&'()*+,;=:@][A-Za-z0-9\-._~!$&'()*+,;=:@]*)+/?|/")

# A percent-escape, a stray "%", or a character that isn't allowed raw.
_TOKEN = re.compile(rf"%[0-9A-Fa-f]{{2}}|%|[^{_PATH_CHARS}]")

# Printable ASCII that is refused rather than percent-encoded.
_REFUSED = {
    "\\": "a raw backslash is not allowed in the path",
    "?": "a raw '?' is not allowed in the path",
    "#": "a raw '#' is not allowed in the path",
}

# A segment Java servers would read as "." or ".." plus path parameters.
_DOT_WITH_PARAMS = re.compile(r"\.\.?;")


def _canonical_token(match: re.Match[str]) -> str:
    token = match.group()
    if token[0] == "%":
        if len(token) != 3:
            raise InvalidPath("malformed percent-escape in path")
        char = chr(int(token[1:], 16))
        if char == "\x00":
            raise InvalidPath("NUL (%00) in path")
        if char in _UNRESERVED:
            return char
        return token.upper()
    code = ord(token)
    if code < 0x20 or code == 0x7F:
        raise InvalidPath("control character in path")
    if code > 0x7F:
        raise InvalidPath("non-ASCII character in path (must be percent-encoded)")
    refused = _REFUSED.get(token)
    if refused is not None:
        raise InvalidPath(refused)
    return f"%{code:02X}"


_ENCODED_SLASH = re.compile(r"%2F|%5C")


def _refuse_encoded_dots(segment: str) -> None:
    """``..%2Fadmin`` is one segment here, but a server or proxy that decodes ``%2F`` (or
    treats ``%5C`` as a separator) and then resolves dot segments reaches another path than
    the one the route was chosen for."""
    for part in _ENCODED_SLASH.split(segment):
        # ``x%2F..;y`` too: once decoded, Tomcat reads ``..;y`` as ``..`` (see below).
        if part in (".", "..") or _DOT_WITH_PARAMS.match(part):
            raise InvalidPath("dot segment hidden behind an encoded slash in path")


def normalize_path(raw_path: bytes | str) -> str:
    """Return the canonical form of a raw request path, or raise InvalidPath.

    See the module docstring for the rules.
    """
    text = raw_path.decode("latin-1") if isinstance(raw_path, bytes) else raw_path
    if _CANONICAL.fullmatch(text):
        return text
    if not text.startswith("/"):
        raise InvalidPath("path must start with '/'")
    text = _TOKEN.sub(_canonical_token, text)
    parts = text.split("/")
    last = parts[-1]
    trailing = last in ("", ".", "..")
    stack: list[str] = []
    for segment in parts[1:]:
        if segment in ("", "."):
            continue
        if segment == "..":
            if stack:
                stack.pop()
            continue
        if segment[0] == "." and _DOT_WITH_PARAMS.match(segment):
            raise InvalidPath("dot segment with path parameters (';') in path")
        if "%2F" in segment or "%5C" in segment:
            _refuse_encoded_dots(segment)
        stack.append(segment)
    if not stack:
        return "/"
    return "/" + "/".join(stack) + ("/" if trailing else "")


def resolve_dots(path: str) -> str:
    """RFC 3986 remove_dot_segments, *without* merging slashes: how a backend that keeps
    empty segments resolves ``..`` (:func:`decoded_readings`, and the login redirect's checks
    in gateway/redirects.py)."""
    parts = path.split("/")
    out: list[str] = []
    for segment in parts[1:]:
        if segment == ".":
            continue
        if segment == "..":
            if out:
                out.pop()
            continue
        out.append(segment)
    if parts[-1] in (".", ".."):
        out.append("")
    return "/" + "/".join(out)


# An escape that a decoding backend reads as a segment separator, in any case.
_SEPARATOR_ESCAPE = re.compile(r"%(?:2[Ff]|5[Cc])")
_PERCENT_ESCAPE = "%25"
# Decoding rounds looked through; a path encoded deeper than this is refused outright.
_MAX_SEPARATOR_ROUNDS = 8


def has_encoded_separator(path: str) -> bool:
    """Whether ``path`` holds ``%2F`` or ``%5C``, directly or behind any number of ``%25``
    (``%252F``, ``%25252f``): a backend (or a hop in front of it) that decodes once, or
    twice, reads a ``/`` there. Only ``%25`` can hide an escape, so only it is unwrapped."""
    for _ in range(_MAX_SEPARATOR_ROUNDS):
        if _SEPARATOR_ESCAPE.search(path):
            return True
        if _PERCENT_ESCAPE not in path:
            return False
        path = path.replace(_PERCENT_ESCAPE, "%")
    return True  # encoded deeper than any real client does: fail closed


def decoded_readings(path: str) -> tuple[str, ...]:
    """The normalized path as a backend that decodes ``%2F`` and ``%5C`` into separators
    before routing reads it (Starlette, Django, an Express ``*`` param), decoding ``%25``
    again as often as it takes (double-decoding hops). Two readings, since backends differ on
    the empty segments decoding may leave (``/%2Fapi`` is ``//api``): kept as they are
    (Starlette, Django and Express route ``//api`` as it is, usually to a catch-all) and
    merged (a hop that merges slashes, as nginx does, sends ``/api``)."""
    for _ in range(_MAX_SEPARATOR_ROUNDS):
        decoded = _SEPARATOR_ESCAPE.sub("/", path).replace(_PERCENT_ESCAPE, "%")
        if decoded == path:
            kept = resolve_dots(_TOKEN.sub(_canonical_token, path))
            return tuple(dict.fromkeys((normalize_path(path), kept)))
        path = decoded
    raise InvalidPath("path is encoded too many times over")


def read_path(raw_path: bytes | str, *, allow_encoded_slash: bool = False
              ) -> tuple[str, tuple[str, ...]]:
    """The normalized path (matched and forwarded) and, when it holds an encoded separator
    that ``allow_encoded_slash`` lets through, its decoded readings, which the router must
    also satisfy (``Router.match`` in gateway/routes.py); else no readings. Raises
    :class:`EncodedSeparator` when such a path is not allowed, :class:`InvalidPath` for any
    other unacceptable path."""
    path = normalize_path(raw_path)
    if not has_encoded_separator(path):
        return path, ()
    if not allow_encoded_slash:
        raise EncodedSeparator("encoded slash or backslash in path")
    return path, decoded_readings(path)

