"""Raw HTTP/1.1 over a socket, for the tests where the exact bytes matter: dot segments,
backslashes, duplicate or non-ASCII headers, hop-by-hop headers, framing. No client library
normalizes the target, adds headers or keeps cookies here.

``send`` is blocking (for sync tests), ``raw_request`` is its asyncio twin; ``connect``,
``request`` and ``read_reply`` drive a connection by hand (keep-alive, pipelining, floods).
Every reply is a :class:`Reply` with lower-cased header names, in order, duplicates kept.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

#: A request header as a test writes it: text (sent as latin-1) or the exact bytes.
Header = tuple[str | bytes, str | bytes]


@dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]]  # names lower-cased, in order, duplicates kept
    body: bytes

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (lower-case), or None."""
        return next((v for k, v in self.headers if k == name), None)

    def header_list(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k == name]

    def json(self) -> Any:
        return json.loads(self.body)

    def cookie_names(self) -> list[str]:
        """Names of the cookies the reply sets (or clears), in order."""
        return [v.split("=", 1)[0].strip() for v in self.header_list("set-cookie")]

    def cookie(self, name: str) -> str | None:
        """The value the reply's ``Set-Cookie`` gives cookie ``name``, or None if not set."""
        return next((v.partition("=")[2].split(";")[0] for v in self.header_list("set-cookie")
                     if v.partition("=")[0].strip() == name), None)


def _latin1(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("latin-1")


def _address(base_url: str) -> tuple[str, int, str]:
    parts = urlsplit(base_url)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port, parts.netloc


def send(base_url: str, target: str | bytes, headers: Sequence[Header] = (), *,
         method: str = "GET", body: bytes | None = None, timeout: float = 20) -> Reply:
    """Send exactly ``METHOD target HTTP/1.1``, ``Host`` (unless given), ``connection:
    close``, ``headers`` and, with ``body``, its ``Content-Length``; read the whole reply."""
    hostname, port, netloc = _address(base_url)
    lines = [method.encode("ascii") + b" " + _latin1(target) + b" HTTP/1.1"]
    if not any(_latin1(name).lower() == b"host" for name, _ in headers):
        lines.append(b"host: " + _latin1(netloc))
    lines.append(b"connection: close")
    lines += [_latin1(name) + b": " + _latin1(value) for name, value in headers]
    if body is not None:
        lines.append(f"content-length: {len(body)}".encode("ascii"))
    with socket.create_connection((hostname, port), timeout=timeout) as sock:
        sock.sendall(b"\r\n".join(lines) + b"\r\n\r\n" + (body or b""))
        response = http.client.HTTPResponse(sock, method=method)
        response.begin()
        payload = response.read()
        return Reply(response.status, [(k.lower(), v) for k, v in response.getheaders()],
                     payload)


async def connect(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    hostname, port, _ = _address(url)
    return await asyncio.open_connection(hostname, port)


async def _read_body(reader: asyncio.StreamReader, headers: list[tuple[str, str]],
                     method: str, status: int) -> bytes:
    if method == "HEAD" or status in (204, 304):
        return b""
    names = dict(headers)
    if "chunked" in names.get("transfer-encoding", "").lower():
        out = bytearray()
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            out += await reader.readexactly(size)
            await reader.readexactly(2)
        while (await reader.readline()) not in (b"\r\n", b""):
            pass  # trailers
        return bytes(out)
    if "content-length" in names:
        return await reader.readexactly(int(names["content-length"]))
    return await reader.read()


async def read_reply(reader: asyncio.StreamReader, *, method: str = "GET",
                     timeout: float = 15) -> Reply:
    """The next final response on the connection (1xx interim responses skipped); no body
    for ``HEAD``, 204 and 304, else by ``Content-Length``, chunks or until the peer closes."""

    async def read() -> Reply:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            status_line, *lines = head.decode("latin-1").split("\r\n")
            status = int(status_line.split(" ")[1])
            if status >= 200:
                break
        headers = []
        for line in lines:
            if line:
                name, _, value = line.partition(":")
                headers.append((name.strip().lower(), value.strip()))
        return Reply(status, headers, await _read_body(reader, headers, method, status))

    return await asyncio.wait_for(read(), timeout)


async def request(url: str, data: bytes, *, timeout: float = 15) -> Reply:
    """Send exactly ``data`` on a new connection and read one reply."""
    reader, writer = await connect(url)
    try:
        writer.write(data)
        await writer.drain()
        return await read_reply(reader, timeout=timeout)
    finally:
        writer.close()


async def raw_request(base_url: str, target: str, headers: Sequence[Header] = (), *,
                      method: str = "GET", body: bytes = b"", host: bool = True,
                      timeout: float = 10) -> Reply:
    """Send exactly ``METHOD target HTTP/1.1`` plus ``headers`` (and ``Host`` unless told
    not to, ``Content-Length`` with a body); nothing else is added."""
    _, _, netloc = _address(base_url)
    lines = [f"{method} {target} HTTP/1.1".encode("latin-1")]
    if host:
        lines.append(b"Host: " + _latin1(netloc))
    lines += [_latin1(name) + b": " + _latin1(value) for name, value in headers]
    if body:
        lines.append(f"Content-Length: {len(body)}".encode("ascii"))
    reader, writer = await connect(base_url)
    try:
        writer.write(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        await writer.drain()
        return await read_reply(reader, method=method, timeout=timeout)
    finally:
        writer.close()


async def closed_by_peer(reader: asyncio.StreamReader, within: float) -> bool:
    """True once the peer closes the connection (EOF or reset) within ``within`` seconds;
    anything it sends before is read and dropped."""
    deadline = time.monotonic() + within
    try:
        while (left := deadline - time.monotonic()) > 0:
            if not await asyncio.wait_for(reader.read(65536), left):
                return True
    except TimeoutError:  # an OSError too: caught first
        return False
    except (ConnectionError, OSError):
        return True
    return False


def head(method: str, target: str, host: str, *lines: str) -> bytes:
    """A request head: request line, ``Host`` and ``lines``, as latin-1 bytes."""
    return "\r\n".join([f"{method} {target} HTTP/1.1", f"Host: {host}", *lines, "", ""]
                       ).encode("latin-1")


def chunked(*pieces: bytes, trailers: tuple[str, ...] = ()) -> bytes:
    """A chunked body of ``pieces`` (empty ones skipped) with ``trailers``."""
    out = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces if p)
    return out + b"0\r\n" + "".join(f"{t}\r\n" for t in trailers).encode("latin-1") + b"\r\n"
