"""Path normalization, route matching, access decisions and safe login redirects.

Everything here is pure (no I/O) and runs on every request, so the expensive
parts (glob compilation) happen once, in :class:`Router`'s constructor.

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

Globs (:func:`compile_glob`)
----------------------------
Patterns are matched against the normalized path.  ``*`` matches one or more
characters within a single segment (``/api/*``, ``/api/*.json``), ``**`` (a
whole segment) matches any number of segments, including none (``/api/**``
matches ``/api``, ``/api/``, ``/api/x`` and ``/api/x/y``).  Everything else is
literal; the literal parts are normalized like a path, so ``/%7euser``
matches ``/~user``.  A trailing slash is not significant on either side:
``/a/*`` matches ``/a/x`` and ``/a/x/``, and pattern ``/docs/`` is the same
as ``/docs``.  (This is deliberate: apps tend to treat ``/x`` and ``/x/`` as
the same resource, and a rule that silently failed to cover one of them would
be a bypass.)  ``?``, ``[``, ``]``, ``{`` and ``}`` are reserved, and empty or
dot segments in a pattern are errors.  There is no escape for a literal
``*``.  The regular expressions use atomic groups so that patterns with
several stars can't make matching a hostile path take super-linear time.

Routing (:class:`Router`)
-------------------------
The first route whose glob matches and whose methods allow the request's
method wins; otherwise the default route (whose ``match`` is not used).  The
folded path (lower case, ``;params`` dropped and the slashes they leave
merged: how Express, Tomcat and Spring see it) is matched too, against folded
globs; if it picks another route, the request must satisfy both
(:attr:`Route.requires`), so folding only ever tightens.
Methods are compared case-insensitively (``get`` is treated as ``GET``, since
a backend may fold case).  A route that lists ``GET`` also matches ``HEAD``:
servers answer HEAD with the GET handler, so a rule protecting GET must
protect HEAD too.  No other implicit aliases (``OPTIONS`` is not implied).

Encoded separators (:func:`read_path`)
--------------------------------------
A route is decided on the path as the backend will read it, and backends differ: Starlette
(uvicorn ``unquote``s the path), Django (``PATH_INFO`` is decoded) and an Express ``*``
param (``decodeURIComponent``) read ``%2F`` as ``/``; others keep it as a character. So a
path holding ``%2F`` or ``%5C`` (any case, also behind ``%25``: ``%252F``) is refused by
default (:class:`EncodedSeparator`). With ``server.allow_encoded_slash = true`` it is let
through unchanged, and routed as the stricter of its encoded and its decoded reading.

Access (:func:`decide`)
-----------------------
``public`` always allows; ``guest`` needs a guest or user token; anything
else is handled as ``user`` (fail closed): it needs a user token and, when
the route lists roles, at least one of them.  Unknown token types count as no
token.

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

import enum
import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote, unquote, urlsplit

__all__ = [
    "Decision",
    "EncodedSeparator",
    "InvalidGlob",
    "InvalidPath",
    "Route",
    "Router",
    "compile_glob",
    "decide",
    "is_browser_navigation",
    "login_location",
    "normalize_path",
    "read_path",
    "safe_next",
    "unauthenticated_answer",
]


class InvalidPath(ValueError):
    """The request path can't be normalized safely; answer 400."""


class EncodedSeparator(InvalidPath):
    """The path holds an encoded slash or backslash, which ``server.allow_encoded_slash``
    does not allow (answer 400)."""


class InvalidGlob(ValueError):
    """A route pattern can't be parsed.  The message is meant for humans."""


# --------------------------------------------------------------------------
# Path normalization
# --------------------------------------------------------------------------

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
            kept = _resolve_dots(_TOKEN.sub(_canonical_token, path))
            return tuple(dict.fromkeys((normalize_path(path), kept)))
        path = decoded
    raise InvalidPath("path is encoded too many times over")


def read_path(raw_path: bytes | str, *, allow_encoded_slash: bool = False
              ) -> tuple[str, tuple[str, ...]]:
    """The normalized path (matched and forwarded) and, when it holds an encoded separator
    that ``allow_encoded_slash`` lets through, its decoded readings, which the router must
    also satisfy (:meth:`Router.match`); else no readings. Raises :class:`EncodedSeparator`
    when such a path is not allowed, :class:`InvalidPath` for any other unacceptable path."""
    path = normalize_path(raw_path)
    if not has_encoded_separator(path):
        return path, ()
    if not allow_encoded_slash:
        raise EncodedSeparator("encoded slash or backslash in path")
    return path, decoded_readings(path)


# --------------------------------------------------------------------------
# Globs
# --------------------------------------------------------------------------

_GLOB_RESERVED = "?[]{}"

# One whole segment, possessively, so failed attempts never re-scan it.
_ANY_SEGMENTS = r"(?:/[^/]++)*"
# What must follow a segment: its end.
_SEGMENT_END = r"(?![^/])"


def _segment_regex(segment: str) -> str:
    """Regex for one pattern segment (no "**"), not including its "/"."""
    literals = segment.split("*")
    if len(literals) == 1:
        return re.escape(segment)
    out = [re.escape(literals[0])]
    # Every star but the last, with the literal after it, takes the leftmost
    # match and commits (atomic group): a later star can absorb whatever is
    # skipped, so this never loses a match, and it keeps matching linear.
    for literal in literals[1:-1]:
        out.append(f"(?>[^/]+?{re.escape(literal)})")
    out.append(f"[^/]+{re.escape(literals[-1])}")
    return "".join(out)


def _segments_regex(segments: list[str]) -> str:
    return "".join(f"/{_segment_regex(s)}{_SEGMENT_END}" for s in segments)


def compile_glob(pattern: str) -> re.Pattern[str]:
    """Compile a route glob into an anchored regex over normalized paths.

    The result is anchored at both ends (``\\A...\\Z``), so ``.match``,
    ``.fullmatch`` and ``.search`` all agree.  Raises InvalidGlob.
    """
    if not pattern:
        raise InvalidGlob("pattern is empty")
    if not pattern.startswith("/"):
        raise InvalidGlob(f"pattern must start with '/' (got {pattern!r})")
    for char in _GLOB_RESERVED:
        if char in pattern:
            raise InvalidGlob(
                f"{char!r} is not supported in patterns (only '*' and '**' are special)"
            )
    raw_segments = pattern.split("/")[1:]
    if raw_segments and raw_segments[-1] == "":
        raw_segments.pop()  # a trailing slash is not significant
    for raw in raw_segments:
        if raw == "":
            raise InvalidGlob("pattern has an empty segment ('//')")
        if raw.lower().replace("%2e", ".") in (".", ".."):
            raise InvalidGlob("pattern has a '.' or '..' segment")
        if "***" in raw:
            raise InvalidGlob("'***' is not valid; use '*' (one segment) or '**' (any depth)")
        if "**" in raw and raw != "**":
            raise InvalidGlob(f"'**' must be a whole segment (got {raw!r})")
    try:
        normalized = normalize_path(pattern)
    except InvalidPath as exc:
        raise InvalidGlob(f"pattern is not a valid path: {exc}") from None
    if normalized == "/":
        return re.compile(r"\A/\Z")
    segments = normalized.strip("/").split("/")

    # Split into runs of plain segments separated by "**".
    runs: list[list[str]] = [[]]
    for segment in segments:
        if segment == "**":
            runs.append([])
        else:
            runs[-1].append(segment)
    body = [r"\A", _segments_regex(runs[0])]
    if len(runs) > 1:
        # Runs between two "**" take their leftmost occurrence and commit:
        # the next "**" absorbs anything skipped, so this loses no match.
        for run in runs[1:-1]:
            if run:
                body.append(f"(?>{_ANY_SEGMENTS}?{_segments_regex(run)})")
        body.append(_ANY_SEGMENTS)
        body.append(_segments_regex(runs[-1]))
    body.append(r"/?\Z")
    return re.compile("".join(body), re.DOTALL)


# --------------------------------------------------------------------------
# Routes
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Route:
    """One row of the route table.  The settings module validates the values.

    ``access`` is "public", "guest" or "user"; ``methods`` are upper-case, and
    empty means any method; ``unauthenticated`` is "auto", "redirect" or "401".
    """

    match: str
    access: str
    methods: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()
    unauthenticated: str = "auto"
    # Set by the router when the path and its folded form pick different routes: the request
    # must then satisfy each of them.
    requires: tuple[Route, ...] = ()


_LEVEL = {"public": 0, "guest": 1}  # anything else ranks as "user" (fail closed)
_ESCAPE = re.compile(r"%[0-9a-f]{2}")
_PARAMS = re.compile(r";[^/]*")
_SLASHES = re.compile(r"//+")


def _folded(path: str) -> str:
    """The path as a case-insensitive server that ignores ``;params`` (Express, Tomcat) sees
    it: lower case, path parameters removed, escapes kept canonical.  A segment that was only
    parameters leaves an empty one, which those servers merge (``/api/;x/admin`` is
    ``/api/admin`` to Tomcat and Spring), so repeated slashes are merged again."""
    folded = path.lower()
    if ";" in folded:
        folded = _SLASHES.sub("/", _PARAMS.sub("", folded))
    if "%" in folded:
        folded = _ESCAPE.sub(lambda m: m.group().upper(), folded)
    return folded


def _both(first: Route, second: Route) -> Route:
    stricter = max((first, second), key=lambda r: _LEVEL.get(r.access, 2))
    return Route(match=first.match, access=stricter.access,
                 unauthenticated=stricter.unauthenticated, requires=(first, second))


_Matcher = Callable[[str], re.Match[str] | None]


class Router:
    """First-match route table over normalized paths.

    Globs are compiled once, here; InvalidGlob propagates.  ``default.match``
    is not used.
    """

    def __init__(self, routes: Sequence[Route], default: Route) -> None:
        self._routes = tuple(routes)
        self._default = default
        table: list[tuple[_Matcher, frozenset[str], Route]] = []
        folded: list[tuple[_Matcher, frozenset[str], Route]] = []
        for route in self._routes:
            methods = {m.upper() for m in route.methods}
            if "GET" in methods:
                methods.add("HEAD")
            table.append((compile_glob(route.match).match, frozenset(methods), route))
            folded.append((compile_glob(_folded(route.match)).match, frozenset(methods), route))
        self._table = tuple(table)
        self._folded_table = tuple(folded)

    @property
    def routes(self) -> tuple[Route, ...]:
        return self._routes

    @property
    def default(self) -> Route:
        return self._default

    def match(self, method: str, normalized_path: str, decoded: Sequence[str] = ()) -> Route:
        """Return the first route matching the method and path, else the default.

        Backends differ on case and ``;params``: Express matches ``/api/Admin`` against its
        ``/api/admin`` handler, Tomcat serves ``/admin;x/stats`` as ``/admin/stats``. So the
        folded form of the path is matched too (against folded globs), and when it picks
        another route the answer is a route that requires both. ``decoded`` are the path's
        decoded readings (:func:`read_path`), when it has any: each is matched the same way,
        and a different route found for one is required as well (the strictest reading wins).
        """
        route = self._match(method, normalized_path)
        for reading in decoded:
            if reading != normalized_path:
                other = self._match(method, reading)
                if other is not route:
                    route = _both(route, other)
        return route

    def _match(self, method: str, normalized_path: str) -> Route:
        method = method.upper()
        route = self._first(self._table, method, normalized_path)
        folded = _folded(normalized_path)
        if folded != normalized_path:
            other = self._first(self._folded_table, method, folded)
            if other is not route:
                return _both(route, other)
        return route

    def _first(self, table: tuple[tuple[_Matcher, frozenset[str], Route], ...], method: str,
               path: str) -> Route:
        for matcher, methods, route in table:
            if methods and method not in methods:
                continue
            if matcher(path) is not None:
                return route
        return self._default


# --------------------------------------------------------------------------
# Access decisions
# --------------------------------------------------------------------------


class Decision(enum.Enum):
    ALLOW = "allow"
    UNAUTHENTICATED = "unauthenticated"
    FORBIDDEN = "forbidden"


_SEVERITY = {Decision.ALLOW: 0, Decision.FORBIDDEN: 1, Decision.UNAUTHENTICATED: 2}


def decide(route: Route, token_type: str | None, roles: Sequence[str]) -> Decision:
    """Decide access to ``route`` for a request with the given token.

    ``token_type`` is None (no valid token), "guest" or "user"; anything else
    counts as no token.  ``roles`` are the token's roles.
    """
    if route.requires:
        return max((decide(r, token_type, roles) for r in route.requires),
                   key=lambda d: _SEVERITY[d])
    access = route.access
    if access == "public":
        return Decision.ALLOW
    if access == "guest":
        if token_type in ("guest", "user"):
            return Decision.ALLOW
        return Decision.UNAUTHENTICATED
    # "user", and anything unexpected (fail closed).
    if token_type != "user":
        return Decision.UNAUTHENTICATED
    if route.roles and not any(role in route.roles for role in roles):
        return Decision.FORBIDDEN
    return Decision.ALLOW


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


def unauthenticated_answer(route: Route, browser: bool) -> Literal["redirect", "401"]:
    """How to answer an unauthenticated request: redirect to login, or 401."""
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


def _resolve_dots(path: str) -> str:
    """RFC 3986 remove_dot_segments, *without* merging slashes."""
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


def _path_is_hostile(decoded: str) -> bool:
    if _has_control(decoded):
        return True
    forms = [decoded] if decoded.isascii() else [decoded, unicodedata.normalize("NFKC", decoded)]
    for form in forms:
        # What a sloppy consumer might make of it: whitespace dropped, "\" as "/".
        squashed = "".join(form.split()).replace("\\", "/")
        if not _starts_with_one_slash(squashed):
            return True
        if not _starts_with_one_slash(_resolve_dots(squashed)):
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
