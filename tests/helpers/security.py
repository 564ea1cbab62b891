"""Raw-socket requests for the security tests: exact request bytes, no client library that
normalizes the path, adds headers or keeps cookies."""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit


@dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]]  # names lower-cased, in order, duplicates kept
    body: bytes

    def header_list(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k == name]

    def json(self) -> Any:
        return json.loads(self.body)

    def cookie_names(self) -> list[str]:
        """Names of the cookies the reply sets (or clears), in order."""
        return [v.split("=", 1)[0].strip() for v in self.header_list("set-cookie")]


def send(base_url: str, target: str | bytes, headers: Sequence[tuple[str, str]] = (), *,
         method: str = "GET", body: bytes | None = None, timeout: float = 20) -> Reply:
    """Send exactly ``METHOD target HTTP/1.1``, ``Host`` (unless given), ``headers`` and, with
    ``body``, its ``Content-Length``; read the whole reply."""
    parts = urlsplit(base_url)
    assert parts.hostname is not None and parts.port is not None
    raw_target = target if isinstance(target, bytes) else target.encode("latin-1")
    lines = [method.encode("ascii") + b" " + raw_target + b" HTTP/1.1"]
    if not any(name.lower() == "host" for name, _ in headers):
        lines.append(f"host: {parts.netloc}".encode("latin-1"))
    lines.append(b"connection: close")
    lines += [f"{name}: {value}".encode("latin-1") for name, value in headers]
    if body is not None:
        lines.append(f"content-length: {len(body)}".encode("ascii"))
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
        sock.sendall(b"\r\n".join(lines) + b"\r\n\r\n" + (body or b""))
        response = http.client.HTTPResponse(sock, method=method)
        response.begin()
        payload = response.read()
        return Reply(response.status, [(k.lower(), v) for k, v in response.getheaders()],
                     payload)


def echoed_headers(reply: Reply) -> dict[str, list[str]]:
    """The request headers the demo backend's echo endpoint saw, by lower-cased name."""
    seen: dict[str, list[str]] = {}
    for name, value in reply.json()["headers"]:
        seen.setdefault(name.lower(), []).append(value)
    return seen


def echoed_cookie_names(reply: Reply) -> list[str]:
    """Names of the cookies in the ``Cookie`` header(s) the echo endpoint saw."""
    names = []
    for header in echoed_headers(reply).get("cookie", []):
        names += [p.split("=", 1)[0].strip() for p in header.split(";") if p.strip()]
    return names
