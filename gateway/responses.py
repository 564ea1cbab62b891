"""The gateway's own answers, written straight to ASGI ``send`` (no Response objects)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any

from gateway.types import Headers, Send

JSON_TYPE = (b"content-type", b"application/json")


def date_header() -> tuple[bytes, bytes]:
    return (b"date", formatdate(usegmt=True).encode("latin-1"))


async def send_json(
    send: Send,
    status: int,
    body: dict[str, Any],
    headers: Headers = (),
    *,
    head: bool = False,
) -> None:
    """Send a complete JSON response (``head``: headers only, as for a HEAD request)."""
    payload = json.dumps(body, separators=(",", ":")).encode("utf-8")
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [
            JSON_TYPE,
            (b"content-length", str(len(payload)).encode("latin-1")),
            (b"cache-control", b"no-store"),
            *headers,
        ],
    })
    await send({"type": "http.response.body", "body": b"" if head else payload})


async def send_error(
    send: Send, status: int, error: str, detail: str, headers: Headers = (), *, head: bool = False
) -> None:
    """Send ``{"error": ..., "detail": ...}``: the shape of every gateway refusal."""
    await send_json(send, status, {"error": error, "detail": detail}, headers, head=head)


async def send_redirect(send: Send, location: str, headers: Headers = ()) -> None:
    await send({
        "type": "http.response.start",
        "status": 302,
        "headers": [
            (b"location", location.encode("latin-1")),
            (b"content-length", b"0"),
            (b"cache-control", b"no-store"),
            *headers,
        ],
    })
    await send({"type": "http.response.body", "body": b""})


async def send_empty(send: Send, status: int, headers: Headers = ()) -> None:
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [*headers] if status in (204, 304) else [(b"content-length", b"0"), *headers],
    })
    await send({"type": "http.response.body", "body": b""})


@dataclass(frozen=True, slots=True)
class Refusal:
    """A request refused with a JSON error, carrying its own answer (status, ``error``,
    ``detail``): the refusals made before any session is looked at (a bad path, a head too
    large, a bad ``Host``) are constants of this type."""

    status: int
    error: str
    detail: str

    async def send(self, send: Send, headers: Headers = (), *, head: bool = False) -> None:
        await send_error(send, self.status, self.error, self.detail, headers, head=head)
