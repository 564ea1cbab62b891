"""Route bypass through encoded slashes, on real sockets (README "Routes", SECURITY.md).

The reference backend runs under uvicorn, which decodes ``%2F`` before Starlette routes:
``/api%2Fadmin/stats`` reaches its ``/api/admin/stats`` handler. The gateway must never
route such a path by its encoded reading alone.
"""

from __future__ import annotations

import pytest

from tests.conftest import Backend, MakeGateway
from tests.helpers.raw_http import send

ADMIN_ROUTES = """
[[routes]]
match = "/api/echo/**"
access = "public"

[[routes]]
match = "/api/admin/**"
access = "user"
roles = ["admin"]
"""

BYPASSES = ["/api%2Fadmin/stats", "/api%2fadmin%2fstats", "/api%5Cadmin/stats",
            "/api%5cadmin/stats", "/api%252Fadmin/stats", "/api%25252fadmin/stats",
            "/api%25%32%46admin/stats", "/api/echo%2F..%2Fadmin/stats"]
XHR = ("x-requested-with", "XMLHttpRequest")


@pytest.mark.parametrize("target", BYPASSES)
def test_encoded_slash_refused_for_a_non_admin(make_gateway: MakeGateway, backend: Backend,
                                               target: str) -> None:
    gateway = make_gateway(ADMIN_ROUTES)
    user = backend.token(1)  # roles: user
    before = backend.calls("admin_stats")
    reply = send(gateway.url, target, [("authorization", f"Bearer {user}"), XHR])
    assert reply.status == 400, reply.body
    assert reply.json()["error"] == "invalid_path"
    assert "detail" in reply.json()
    assert backend.calls("admin_stats") == before
    # The plain path is still the admin route it always was.
    assert send(gateway.url, "/api/admin/stats",
                [("authorization", f"Bearer {user}"), XHR]).status == 403


@pytest.mark.parametrize("target", BYPASSES)
def test_encoded_slash_refused_with_a_public_default_route(make_gateway: MakeGateway,
                                                           backend: Backend,
                                                           target: str) -> None:
    gateway = make_gateway(ADMIN_ROUTES + '[default_route]\naccess = "public"\n')
    before = backend.calls("admin_stats")
    reply = send(gateway.url, target, [XHR])
    assert reply.status == 400
    assert reply.json()["error"] == "invalid_path"
    assert backend.calls("admin_stats") == before
    # Refused before any route matching: a gateway endpoint behind %2F is no exception.
    assert send(gateway.url, "/__gateway%2Fhealth").status == 400


def test_allowed_encoded_slash_takes_the_stricter_reading(make_gateway: MakeGateway,
                                                          backend: Backend) -> None:
    gateway = make_gateway("[server]\nallow_encoded_slash = true\n" + ADMIN_ROUTES
                           + '[default_route]\naccess = "public"\n')
    user, admin = backend.token(1), backend.token(2)
    before = backend.calls("admin_stats")
    for target in ("/api%2Fadmin/stats", "/api%5Cadmin/stats", "/api%252Fadmin/stats"):
        assert send(gateway.url, target, [XHR]).status == 401, target
        reply = send(gateway.url, target, [("authorization", f"Bearer {user}"), XHR])
        assert reply.status == 403, target
        assert reply.json()["error"] == "forbidden"
    assert backend.calls("admin_stats") == before
    # An admin gets through, and the upstream gets the path as sent (uvicorn decodes it).
    reply = send(gateway.url, "/api%2Fadmin/stats", [("authorization", f"Bearer {admin}")])
    assert reply.status == 200, reply.body
    assert reply.json()["user_id"] == "2"
    assert backend.calls("admin_stats") == before + 1
    # A path whose both readings are public is forwarded with its escape kept.
    reply = send(gateway.url, "/api/echo/a%2Fb?x=%2F", [XHR])
    assert reply.status == 200
    assert (reply.json()["path"], reply.json()["query"]) == ("/api/echo/a%2Fb", "x=%2F")
