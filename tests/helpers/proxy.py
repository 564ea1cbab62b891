"""What the proxying tests share (docs/behaviour.md#proxying): the public routes they run with,
the request headers the upstream saw as (name, value) pairs, and the check that a gateway
refusal is clean JSON that reveals nothing internal."""

from __future__ import annotations

import re
from typing import Any

import httpx

from tests.helpers.raw_http import Reply

PUBLIC = """
[[routes]]
match = "/api/echo/**"
access = "public"

[[routes]]
match = "/test/**"
access = "public"
"""

MiB = 1024 * 1024

# What a gateway error body must never reveal.
_INTERNAL = re.compile(
    r"Traceback|Exception|Error\b|Errno|aiohttp|httpx|uvicorn|asyncio|\.py\b|"
    r"127\.0\.0\.1|localhost|:\d{2,5}\b"
)


def echoed_pairs(body: Any) -> list[tuple[str, str]]:
    """The request headers the upstream saw, from an ``/api/echo`` reply."""
    return [(name.lower(), value) for name, value in body["headers"]]


def values(headers: list[tuple[str, str]], name: str) -> list[str]:
    return [v for k, v in headers if k == name]


def assert_clean_error(response: httpx.Response | Reply, status: int) -> dict[str, Any]:
    """A gateway refusal: JSON ``{"error", "detail"}`` that reveals nothing internal."""
    if isinstance(response, httpx.Response):
        got, types, text = (response.status_code, response.headers.get_list("content-type"),
                            response.content)
    else:
        got, types, text = response.status, response.header_list("content-type"), response.body
    assert got == status, text
    assert types == ["application/json"]
    body = response.json()
    assert set(body) == {"error", "detail"}, body
    assert isinstance(body["error"], str) and isinstance(body["detail"], str)
    assert not _INTERNAL.search(text.decode()), text
    return dict(body)
