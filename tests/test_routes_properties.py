"""Property tests for the encoded-slash rule (gateway/paths.py, "Encoded separators", and
the router's use of the decoded readings in gateway/routes.py).

For any request path, the route the gateway decides must never be less strict than the route
of the path as the backend will read it. The backend receives the gateway's normalized path;
three small models say how common backends decode it before routing:

* Starlette under uvicorn (httptools and h11 alike): ``scope["path"]`` is
  ``urllib.parse.unquote(raw_path.decode("ascii"))`` (UTF-8, invalid bytes replaced), and
  routes match it case-sensitively, ``//`` and all.
* Django under a WSGI server: gunicorn sets ``PATH_INFO`` to
  ``unquote_to_bytes(path).decode("latin-1")``; Django's ``get_path_info`` encodes that back to
  bytes and decodes it as UTF-8 after ``repercent_broken_unicode`` (invalid sequences are
  percent-encoded again). URL patterns match case-sensitively.
* Express: path-to-regexp matches case-insensitively (``sensitive: false``), and params,
  ``*`` splats included, are ``decodeURIComponent``-ed (a malformed one is a 400). An app
  that routes on a decoded splat sees the fully decoded path, so both the raw path and its
  decoded form are matched, case-insensitively.

"Strictness" is judged by :func:`gateway.routes.decide` over every kind of caller (no token,
a guest, a user with no role, a user with each role of the table): whenever the backend's
route would refuse a caller, the gateway must refuse it too (or refuse the path outright).
Each model reading is matched both as is and with slashes merged, the stricter of the two
counting, so the property also holds for a hop that merges slashes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from urllib.parse import quote, unquote, unquote_to_bytes

from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.globs import compile_glob
from gateway.paths import InvalidPath, normalize_path, read_path
from gateway.routes import Decision, Route, Router, decide

# -- the three backends' readings of a forwarded path ------------------------------------------


def starlette_reading(path: str) -> str | None:
    """uvicorn's ``scope["path"]``, which Starlette's router matches."""
    return unquote(path)


_DJANGO_SAFE = b"/#%[]=:;$&()+,!?*@'~"


def _repercent_broken_unicode(path: bytes) -> bytes:
    """Django's ``django.utils.encoding.repercent_broken_unicode`` (iterative since
    CVE-2019-14235): invalid UTF-8 sequences are percent-encoded, the rest kept."""
    while True:
        try:
            path.decode()
        except UnicodeDecodeError as exc:
            repercent = quote(path[exc.start:exc.end], safe=_DJANGO_SAFE)
            path = path[:exc.start] + repercent.encode() + path[exc.end:]
        else:
            return path


def django_reading(path: str) -> str | None:
    """``request.path_info`` under gunicorn: PATH_INFO, then Django's ``get_path_info``."""
    path_info = unquote_to_bytes(path).decode("latin-1")
    return _repercent_broken_unicode(path_info.encode("latin-1")).decode()


def express_reading(path: str) -> str | None:
    """``decodeURIComponent`` of the path (a splat param): None where it throws URIError,
    which Express answers with 400 (no handler reached)."""
    try:
        return unquote_to_bytes(path).decode("utf-8", errors="strict")
    except UnicodeDecodeError:
        return None


# -- the backend's routing, over the gateway's route table --------------------------------------

# Characters a path may hold raw (RFC 3986 pchar, and "/"): everything else a decoded path
# holds is a character of a segment, written as its escape in the gateway's glob space.
_RAW_OK = "/!$&'()*+,;=:@-._~"
_SLASHES = re.compile(r"/+")


def _glob_space(decoded: str, *, merge: bool) -> str:
    text = quote(decoded, safe=_RAW_OK)
    return _SLASHES.sub("/", text) if merge else text


class BackendRouter:
    """First-match over the same globs and methods as the gateway, on a decoded path."""

    def __init__(self, routes: Sequence[Route], default: Route, *, case_insensitive: bool
                 ) -> None:
        flags = re.IGNORECASE if case_insensitive else 0
        self._table = [(re.compile(compile_glob(r.match).pattern, re.DOTALL | flags),
                        _methods(r), r) for r in routes]
        self._default = default

    def match(self, method: str, decoded: str) -> list[Route]:
        """The routes the backend's reading may fall under (as is, and slashes merged)."""
        found = []
        for merge in (False, True):
            path = _glob_space(decoded, merge=merge)
            route = self._default
            for regex, methods, candidate in self._table:
                if (not methods or method in methods) and regex.match(path):
                    route = candidate
                    break
            found.append(route)
        return found


def _methods(route: Route) -> frozenset[str]:
    methods = set(route.methods)
    if "GET" in methods:
        methods.add("HEAD")
    return frozenset(methods)


Reading = Callable[[str], str | None]
MODELS: dict[str, tuple[Reading, bool, bool]] = {
    # name: (reading, case-insensitive routing, also match the raw forwarded path)
    "starlette": (starlette_reading, False, False),
    "django": (django_reading, False, False),
    "express": (express_reading, True, True),
}


def _callers(routes: Sequence[Route]) -> list[tuple[str | None, tuple[str, ...]]]:
    roles = sorted({role for route in routes for role in route.roles})
    return [(None, ()), ("guest", ()), ("user", ()), *(("user", (role,)) for role in roles)]


def assert_never_looser(routes: Sequence[Route], default: Route, method: str, raw: str,
                        *, allow_encoded_slash: bool) -> None:
    try:
        path, decoded = read_path(raw, allow_encoded_slash=allow_encoded_slash)
    except InvalidPath:
        return  # refused with 400: stricter than any route
    gateway_route = Router(routes, default).match(method, path, decoded)
    callers = _callers([*routes, default])
    for name, (reading, case_insensitive, raw_too) in MODELS.items():
        backend = BackendRouter(routes, default, case_insensitive=case_insensitive)
        seen = reading(path)
        if seen is None:
            continue  # the backend refuses the path itself
        readings = [seen, path] if raw_too else [seen]
        for text in readings:
            for backend_route in backend.match(method, text):
                for token_type, roles in callers:
                    if decide(backend_route, token_type, roles) is Decision.ALLOW:
                        continue
                    assert decide(gateway_route, token_type, roles) is not Decision.ALLOW, (
                        f"{name} reads {raw!r} (forwarded as {path!r}) as {text!r}: route "
                        f"{backend_route.match!r} refuses {token_type}/{roles} but the "
                        f"gateway's {gateway_route.match!r} allows it")


# -- strategies --------------------------------------------------------------------------------

_WORDS = ["api", "admin", "Admin", "ADMIN", "public", "stats", "guest", "secret", "items",
          "x", "a.css", "%61dmin", "adm%69n", "%41pi", "api;v=1", ";p", "%3B", "%3Bp", "..",
          ".", "%2e", "%2E%2E", "%25", "%2541", "%C3%A9", "%FF", "%E2%80%8B", "%20", "~u"]
_SEPARATORS = ["/", "/", "/", "//", "%2F", "%2f", "%5C", "%5c", "%252F", "%252f", "%255C",
               "%25252F", "%25%32%46", "%2F%2F"]

paths = st.lists(st.tuples(st.sampled_from(_SEPARATORS), st.sampled_from(_WORDS)),
                 min_size=1, max_size=6).map(
    lambda parts: "/" + "".join(sep + word for sep, word in parts).lstrip("/"))
methods = st.sampled_from(["GET", "HEAD", "POST", "DELETE"])
accesses = st.sampled_from(["public", "guest", "user"])

FIXED_ROUTES = (
    Route(match="/api/public/**", access="public"),
    Route(match="/api/admin/**", access="user", roles=("admin",), unauthenticated="401"),
    Route(match="/api/*/secret", access="user"),
    Route(match="/api/guest/**", access="guest"),
    Route(match="/static/*.css", access="public"),
    Route(match="/api/items", access="public", methods=("GET",)),
)

_GLOB_WORDS = ["api", "admin", "public", "stats", "guest", "secret", "items", "*", "**",
               "*.css", "a*"]


@st.composite
def route_tables(draw: st.DrawFn) -> tuple[tuple[Route, ...], Route]:
    routes = []
    for _ in range(draw(st.integers(min_value=1, max_value=5))):
        words = draw(st.lists(st.sampled_from(_GLOB_WORDS), min_size=1, max_size=4))
        access = draw(accesses)
        roles = draw(st.sampled_from([(), ("admin",)])) if access == "user" else ()
        verbs = draw(st.sampled_from([(), ("GET",), ("POST", "DELETE")]))
        routes.append(Route(match="/" + "/".join(words), access=access, roles=roles,
                            methods=verbs))
    return tuple(routes), Route(match="/**", access=draw(accesses))


# -- the properties ----------------------------------------------------------------------------

# derandomize: the same 400 examples every run (a test that fails now and then is a failing
# test); the shapes found by earlier random runs are pinned with @example.
BOUNDED = settings(max_examples=400, deadline=None, derandomize=True)


@BOUNDED
@given(raw=paths, method=methods, default=accesses)
def test_default_refuses_or_is_never_looser(raw: str, method: str, default: str) -> None:
    assert_never_looser(FIXED_ROUTES, Route(match="/**", access=default), method, raw,
                        allow_encoded_slash=False)


@BOUNDED
@given(raw=paths, method=methods, default=accesses)
def test_allowed_encoded_slash_is_never_looser(raw: str, method: str, default: str) -> None:
    assert_never_looser(FIXED_ROUTES, Route(match="/**", access=default), method, raw,
                        allow_encoded_slash=True)


@BOUNDED
@given(raw=paths, method=methods, table=route_tables(), allow=st.booleans())
@example(raw="/%2Fapi", method="GET",
         table=((Route(match="/*", access="public"),), Route(match="/**", access="guest")),
         allow=True)  # an empty segment left by decoding: Starlette routes "//api" as it is
def test_any_route_table_is_never_looser(raw: str, method: str,
                                         table: tuple[tuple[Route, ...], Route],
                                         allow: bool) -> None:
    routes, default = table
    assert_never_looser(routes, default, method, raw, allow_encoded_slash=allow)


# Arbitrary strings over the characters that matter: escapes are formed (and malformed) at
# random rather than picked from a list.
raw_strings = st.text(alphabet="/%.;\\25FfCcEe0AaPpIidmnsu", min_size=1, max_size=30).map(
    lambda text: "/" + text)


@BOUNDED
@given(raw=raw_strings, method=methods, table=route_tables(), allow=st.booleans())
def test_any_string_is_never_looser(raw: str, method: str,
                                    table: tuple[tuple[Route, ...], Route], allow: bool) -> None:
    routes, default = table
    assert_never_looser(routes, default, method, raw, allow_encoded_slash=allow)


@BOUNDED
@given(raw=paths)
def test_every_encoded_separator_is_refused_by_default(raw: str) -> None:
    """Whatever a path holds, no decoding of the path the upstream gets adds a separator."""
    try:
        path, decoded = read_path(raw)
    except InvalidPath:
        return
    assert decoded == ()
    for reading in (starlette_reading, django_reading, express_reading):
        seen = reading(path)
        if seen is not None:
            assert seen.count("/") == path.count("/"), (raw, path, seen)
            assert "\\" not in seen
    twice = unquote(unquote(path))
    assert twice.count("/") == path.count("/"), (raw, path, twice)


# -- the examples of the report ----------------------------------------------------------------


def test_reported_bypass_is_refused_or_routed_strictly() -> None:
    public_default = Route(match="/**", access="public")
    router = Router(FIXED_ROUTES, public_default)
    for raw in ("/api%2Fadmin/stats", "/api%2fadmin%2fstats", "/api%5Cadmin/stats",
                "/api%252Fadmin/stats", "/api/public%2F..%2Fadmin/stats"):
        try:
            read_path(raw)
        except InvalidPath:
            pass
        else:  # pragma: no cover - the assertion message says what went wrong
            raise AssertionError(f"{raw!r} was not refused")
    path, decoded = read_path("/api%2Fadmin/stats", allow_encoded_slash=True)
    assert (path, decoded) == ("/api%2Fadmin/stats", ("/api/admin/stats",))
    route = router.match("GET", path, decoded)
    assert decide(route, None, ()) is Decision.UNAUTHENTICATED
    assert decide(route, "user", ()) is Decision.FORBIDDEN
    assert decide(route, "user", ("admin",)) is Decision.ALLOW
    assert route.unauthenticated == "401"
    # Decoding may leave an empty segment, which backends route as it is (or merge).
    assert read_path("/%2Fapi", allow_encoded_slash=True) == ("/%2Fapi", ("/api", "//api"))
    path, decoded = read_path("/api%252Fadmin/stats", allow_encoded_slash=True)
    assert decoded == ("/api/admin/stats",)
    assert decide(router.match("GET", path, decoded), "user", ()) is Decision.FORBIDDEN


def test_models_decode_like_their_servers() -> None:
    assert starlette_reading("/a%2Fb%C3%A9%FF") == "/a/bé\ufffd"
    assert django_reading("/a%2Fb%C3%A9%FF") == "/a/bé%FF"
    assert express_reading("/a%2Fb%C3%A9") == "/a/bé"
    assert express_reading("/a%FF") is None
    assert normalize_path("/a%2fb") == "/a%2Fb"
