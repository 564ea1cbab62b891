"""Unit tests for gateway.routes: routing (with case and ``;params`` folding) and access
decisions."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gateway.globs import InvalidGlob
from gateway.paths import normalize_path
from gateway.routes import Decision, Route, Router, decide
from gateway.settings import settings_from_mapping

# --------------------------------------------------------------------------
# Router
# --------------------------------------------------------------------------

DEFAULT = Route(match="/**", access="user")
PUBLIC_STATIC = Route(match="/static/**", access="public")
GET_REPORTS = Route(match="/reports/**", access="guest", methods=("GET",))
POST_REPORTS = Route(match="/reports/**", access="user", methods=("POST", "PUT"), roles=("editor",))
ANY_REPORTS = Route(match="/reports/**", access="public")
LOGIN = Route(match="/login", access="public")
ADMIN = Route(match="/admin/**", access="user", roles=("admin",))
ADMIN_PAGE_SHADOWED = Route(match="/admin/public", access="public")

ROUTER = Router(
    [PUBLIC_STATIC, GET_REPORTS, POST_REPORTS, ANY_REPORTS, LOGIN, ADMIN, ADMIN_PAGE_SHADOWED],
    DEFAULT,
)

ROUTER_CASES = [
    ("GET", "/static/app.js", PUBLIC_STATIC),
    ("POST", "/static/app.js", PUBLIC_STATIC),  # no methods = any method
    ("GET", "/static", PUBLIC_STATIC),
    ("GET", "/reports/1", GET_REPORTS),
    ("HEAD", "/reports/1", GET_REPORTS),  # HEAD goes with GET
    ("head", "/reports/1", GET_REPORTS),
    ("get", "/reports/1", GET_REPORTS),  # methods compare case-insensitively
    ("POST", "/reports/1", POST_REPORTS),
    ("PUT", "/reports", POST_REPORTS),
    ("DELETE", "/reports/1", ANY_REPORTS),  # falls through to the next route
    ("OPTIONS", "/reports/1", ANY_REPORTS),
    ("GET", "/login", LOGIN),
    ("GET", "/login/", LOGIN),
    ("GET", "/login/x", DEFAULT),
    ("GET", "/admin/public", ADMIN),  # first match wins
    ("GET", "/", DEFAULT),
    ("GET", "/other/x", DEFAULT),
    ("GET", "/staticx", DEFAULT),
]


@pytest.mark.parametrize(("method", "path", "expected"), ROUTER_CASES)
def test_router_match(method: str, path: str, expected: Route) -> None:
    assert ROUTER.match(method, path) is expected


def test_router_head_only_route_does_not_match_get() -> None:
    head_only = Route(match="/x", access="public", methods=("HEAD",))
    router = Router([head_only], DEFAULT)
    assert router.match("HEAD", "/x") is head_only
    assert router.match("GET", "/x") is DEFAULT


def test_router_empty_table_and_properties() -> None:
    router = Router([], DEFAULT)
    assert router.match("GET", "/anything") is DEFAULT
    assert router.default is DEFAULT
    assert ROUTER.routes[0] is PUBLIC_STATIC


def test_router_rejects_invalid_glob() -> None:
    with pytest.raises(InvalidGlob):
        Router([Route(match="/a**", access="public")], DEFAULT)


def test_router_default_match_is_not_compiled() -> None:
    router = Router([], Route(match="not a glob", access="user"))
    assert router.match("GET", "/").access == "user"


def test_route_is_frozen() -> None:
    with pytest.raises(AttributeError):
        LOGIN.access = "user"  # type: ignore[misc]


# --------------------------------------------------------------------------
# decide
# --------------------------------------------------------------------------

DECIDE_CASES = [
    ("public", (), None, (), Decision.ALLOW),
    ("public", (), "guest", (), Decision.ALLOW),
    ("public", ("admin",), None, (), Decision.ALLOW),
    ("guest", (), None, (), Decision.UNAUTHENTICATED),
    ("guest", (), "guest", (), Decision.ALLOW),
    ("guest", (), "user", (), Decision.ALLOW),
    ("guest", (), "bogus", (), Decision.UNAUTHENTICATED),
    ("user", (), None, (), Decision.UNAUTHENTICATED),
    ("user", (), "guest", (), Decision.UNAUTHENTICATED),
    ("user", ("admin",), "guest", ("admin",), Decision.UNAUTHENTICATED),
    ("user", (), "user", (), Decision.ALLOW),
    ("user", (), "user", ("x",), Decision.ALLOW),
    ("user", ("admin",), "user", (), Decision.FORBIDDEN),
    ("user", ("admin",), "user", ("editor",), Decision.FORBIDDEN),
    ("user", ("admin",), "user", ("editor", "admin"), Decision.ALLOW),
    ("user", ("admin", "ops"), "user", ["ops"], Decision.ALLOW),
    ("user", ("admin",), "user", ("Admin",), Decision.FORBIDDEN),
    ("user", (), "bogus", (), Decision.UNAUTHENTICATED),
    ("unknown", (), "guest", (), Decision.UNAUTHENTICATED),  # fails closed, like "user"
    ("unknown", (), "user", (), Decision.ALLOW),
]


@pytest.mark.parametrize(("access", "route_roles", "token_type", "roles", "expected"), DECIDE_CASES)
def test_decide(
    access: str,
    route_roles: tuple[str, ...],
    token_type: str | None,
    roles: tuple[str, ...],
    expected: Decision,
) -> None:
    route = Route(match="/x", access=access, roles=route_roles)
    assert decide(route, token_type, roles) is expected


# -- case and ;params: a route picked by the folded path applies too ----------------------------

EXPRESS_LIKE = Router(
    [Route("/api/public/**", "public"), Route("/api/admin/**", "user", roles=("admin",)),
     Route("/api/**", "user")],
    Route("", "user"),
)


@pytest.mark.parametrize("path", [
    "/api/Admin/stats", "/API/admin/stats", "/api/ADMIN/stats", "/api/admin;x/stats",
    "/api;jsessionid=1/admin/stats", "/api/Admin;v=2/stats",
    # A segment that is only parameters: Tomcat and Spring merge the empty segment it leaves.
    "/api/;x/admin/stats", "/;x/api/admin/stats", "/api/;/admin/stats", "/api;a/;b/Admin/stats",
])
def test_case_and_params_variants_need_the_admin_role(path: str) -> None:
    route = EXPRESS_LIKE.match("GET", normalize_path(path))
    assert decide(route, "user", ()) is Decision.FORBIDDEN
    assert decide(route, "user", ("admin",)) is Decision.ALLOW
    assert decide(route, None, ()) is Decision.UNAUTHENTICATED


def test_folding_never_loosens_a_route() -> None:
    # /API/PUBLIC/x folds onto the public route, but the path itself is a user route (default
    # or /api/**): both apply, so a token is still needed.
    route = EXPRESS_LIKE.match("GET", "/API/PUBLIC/x")
    assert decide(route, None, ()) is Decision.UNAUTHENTICATED
    assert route.access == "user"
    assert decide(route, "user", ()) is Decision.ALLOW


def test_plain_lowercase_paths_match_one_route() -> None:
    route = EXPRESS_LIKE.match("GET", "/api/admin/stats")
    assert route.requires == () and route.roles == ("admin",)
    assert EXPRESS_LIKE.match("GET", "/api/items").match == "/api/**"


def test_folded_globs_match_upper_case_patterns() -> None:
    router = Router([Route("/Docs/**", "public")], Route("", "user"))
    assert router.match("GET", "/Docs/a").access == "public"
    # /docs/a folds to the same route as its pattern folds: no second rule, still public.
    assert router.match("GET", "/docs/a").access == "user"
    assert decide(router.match("GET", "/DOCS/a"), None, ()) is Decision.UNAUTHENTICATED


def test_a_method_limited_route_picked_by_the_folded_path_applies_to_its_methods() -> None:
    router = Router([Route("/api/admin/**", "user", methods=("POST",), roles=("admin",)),
                     Route("/api/**", "public")], Route("", "user"))
    # GET is not limited: both forms pick the public route.
    assert decide(router.match("GET", "/api/Admin/x"), None, ()) is Decision.ALLOW
    # POST: the folded form picks the admin route, so its role applies.
    route = router.match("POST", "/api/Admin/x")
    assert decide(route, "user", ()) is Decision.FORBIDDEN
    assert decide(route, "user", ("admin",)) is Decision.ALLOW
    assert decide(route, None, ()) is Decision.UNAUTHENTICATED


def test_every_role_requirement_of_both_routes_applies() -> None:
    router = Router([Route("/api/x/**", "user", roles=("admin",)),
                     Route("/api/**/stats", "user", roles=("auditor",))], Route("", "user"))
    route = router.match("GET", "/api/X/stats")  # itself the auditor rule, folded the admin one
    assert decide(route, "user", ("auditor",)) is Decision.FORBIDDEN
    assert decide(route, "user", ("admin",)) is Decision.FORBIDDEN
    assert decide(route, "user", ("admin", "auditor")) is Decision.ALLOW


def test_patterns_with_params_fold_without_empty_segments() -> None:
    router = Router([Route("/a/;v/b/**", "public")], Route("", "user"))  # folds to /a/b/**
    assert router.match("GET", "/a/;v/b/x").access == "public"


# -- built from the loaded config ---------------------------------------------------------------


def test_router_from_settings_builds_the_configured_table() -> None:
    loaded = settings_from_mapping({
        "upstream": {"url": "http://127.0.0.1:8000"},
        "routes": [{"match": "/api/admin/**", "access": "user", "methods": ["get"],
                    "roles": ["admin"], "unauthenticated": "401"},
                   {"match": "/api/**", "access": "public"}],
        "default_route": {"access": "guest", "unauthenticated": "redirect"},
    })
    router = Router.from_settings(loaded.routes, loaded.default_route)
    admin = Route(match="/api/admin/**", access="user", methods=("GET",), roles=("admin",),
                  unauthenticated="401")
    assert router.routes == (admin, Route(match="/api/**", access="public"))
    assert router.default == Route(match="/**", access="guest", unauthenticated="redirect")
    assert router.match("HEAD", "/api/admin/x") == admin  # methods were upper-cased
    assert router.match("POST", "/api/admin/x").access == "public"
    assert router.match("GET", "/other") is router.default


def test_settings_hold_config_data_not_the_router() -> None:
    """The loader checks patterns (gateway/globs.py) without importing the runtime router."""
    code = ("import sys, gateway.settings; "
            "sys.exit('gateway.routes' in sys.modules or 'gateway.redirects' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], timeout=60, check=False)
    assert done.returncode == 0
