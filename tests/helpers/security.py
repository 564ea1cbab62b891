"""The routes the security tests share, and what they read from the echo endpoint beyond
tests/helpers/replies.py: the cookies that reached the upstream. Requests with exact bytes
go through tests/helpers/raw_http.py."""

from __future__ import annotations

from tests.helpers.raw_http import Reply
from tests.helpers.replies import upstream_saw

#: The routes most security tests share: ``/api/echo/open/**`` public, the rest of
#: ``/api/echo/**`` for users.
OPEN_AND_USER_ROUTES = """
[[routes]]
match = "/api/echo/open/**"
access = "public"

[[routes]]
match = "/api/echo/**"
access = "user"
"""


def echoed_cookie_names(reply: Reply) -> list[str]:
    """Names of the cookies in the ``Cookie`` header(s) the echo endpoint saw."""
    names = []
    for header in upstream_saw(reply).get("cookie", []):
        names += [p.split("=", 1)[0].strip() for p in header.split(";") if p.strip()]
    return names
