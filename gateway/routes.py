"""The route table: which row of ``[[routes]]`` a request falls under, and what that row
lets it do.

Its own module because this is the gateway's access policy and nothing else: it works on
paths that gateway/paths.py has already read (normalized, refused or given their decoded
readings), compiles patterns with gateway/globs.py, and leaves how to answer an
unauthenticated request to gateway/redirects.py. Everything here is pure (no I/O) and runs on
every request, so the expensive part (glob compilation) happens once, in :class:`Router`'s
constructor.

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
With ``server.allow_encoded_slash = true``, a path holding an encoded separator is also
matched in its decoded readings (gateway/paths.py), and the strictest route wins.

Access (:func:`decide`)
-----------------------
``public`` always allows; ``guest`` needs a guest or user token; anything
else is handled as ``user`` (fail closed): it needs a user token and, when
the route lists roles, at least one of them.  Unknown token types count as no
token.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gateway.globs import compile_glob
from gateway.settings import RouteSettings
from gateway.vocabulary import RouteAccess, UnauthenticatedForm

# --------------------------------------------------------------------------
# Routes
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Route:
    """One row of the route table, as the router uses it.

    The config's rows are :class:`~gateway.settings.RouteSettings`, checked by the loader;
    :meth:`from_settings` makes a Route of one.  ``methods`` are upper-case, and empty means
    any method.  A Route also stands for a request that several rows apply to
    (:attr:`requires`), which no config row can say.
    """

    match: str
    access: RouteAccess
    methods: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()
    unauthenticated: UnauthenticatedForm = "auto"
    # Set by the router when the path and its folded form pick different routes: the request
    # must then satisfy each of them.
    requires: tuple[Route, ...] = ()

    @classmethod
    def from_settings(cls, spec: RouteSettings) -> Route:
        return cls(match=spec.match, access=spec.access, methods=spec.methods,
                   roles=spec.roles, unauthenticated=spec.unauthenticated)


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

    @classmethod
    def from_settings(cls, routes: Sequence[RouteSettings], default: RouteSettings) -> Router:
        """The router of a loaded config (``Settings.routes``, ``Settings.default_route``)."""
        return cls([Route.from_settings(spec) for spec in routes], Route.from_settings(default))

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
        decoded readings (:func:`~gateway.paths.read_path`), when it has any: each is matched
        the same way, and a different route found for one is required as well (the strictest
        reading wins).
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
