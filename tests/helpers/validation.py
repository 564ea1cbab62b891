"""What the validation tests share (docs/behaviour.md#validation): the routes most of them
run with, request headers and the checks they make of what the upstream and the client saw."""

from __future__ import annotations

import json
import uuid
from typing import Any

from tests.conftest import Backend
from tests.helpers.replies import canonical

# Routes shared by most tests. Refresh is configured as "refresh_body" so that a request
# without a refresh cookie never triggers a refresh: these tests are about validation only.
ROUTES = """
[auth]
retry_backoff_s = 0.01

[auth.refresh]
send = "refresh_body"

[[routes]]
match = "/api/public/**"
access = "public"

[[routes]]
match = "/api/echo/public/**"
access = "public"

[[routes]]
match = "/api/echo/guest/**"
access = "guest"

[[routes]]
match = "/api/admin/**"
access = "user"
roles = ["admin"]

[[routes]]
match = "/api/echo/admin/**"
access = "user"
roles = ["admin"]

[[routes]]
match = "/api/echo/api401/**"
access = "user"
unauthenticated = "401"

[[routes]]
match = "/api/echo/redir/**"
access = "user"
unauthenticated = "redirect"

[[routes]]
match = "/api/echo/getonly/**"
access = "public"
methods = ["GET"]

[default_route]
access = "user"
"""


# Cache hits are counted in the metrics but written only with this key (tests that look at
# every validation turn it on).
LOG_CACHE_HITS = "\n[audit]\nlog_cache_hits = true\n"


def routes_with(*auth_lines: str, extra: str = "") -> str:
    """:data:`ROUTES` with more ``[auth]`` keys (and more tables after it)."""
    return ROUTES.replace("[auth]\n", "[auth]\n" + "".join(f"{line}\n" for line in auth_lines),
                          1) + extra


DEMO_USER = {"id": 1, "email": "demo@example.com", "username": "demo", "roles": ["user"],
             "type": "user"}
IDENTITY_NAMES = ("x-auth-user-id", "x-auth-token-type", "x-auth-user")


# -- helpers --------------------------------------------------------------------------------------


def bearer(token: str, scheme: str = "Bearer") -> dict[str, str]:
    return {"authorization": f"{scheme} {token}"}


def identity_seen(body: dict[str, Any]) -> dict[str, list[str]]:
    """The identity-ish headers the upstream saw, by canonical name."""
    seen: dict[str, list[str]] = {}
    for name, value in body["headers"]:
        key = canonical(name)
        if key.startswith("x-auth-") or key == "x-refreshed-token":
            seen.setdefault(key, []).append(value)
    return seen


def guest_token(backend: Backend) -> str:
    return backend.token(f"guest:{uuid.uuid4()}", typ="guest")


def me_calls(backend: Backend) -> int:
    return backend.calls("me")


def assert_unauthenticated_json(status: int, content_type: str | None, body: bytes) -> None:
    assert status == 401
    assert content_type is not None and content_type.startswith("application/json")
    data = json.loads(body)
    assert data["error"] == "unauthenticated"
    assert isinstance(data["detail"], str) and data["detail"]
