"""Raw-socket clients and gateways served like ``gateway serve`` does, for the limits and
framing tests (docs/limits.md)."""

from __future__ import annotations

import asyncio
import copy
import json
import time
import tomllib
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from gateway.server import HttpKind, uvicorn_options
from gateway.settings import settings_from_mapping
from tests.conftest import MakeGateway, RunningGateway

HTTP_KINDS: tuple[HttpKind, ...] = ("httptools", "h11")


def serve(make_gateway: MakeGateway, toml: str = "", *, http: HttpKind = "httptools",
          upstream: str | None = None) -> RunningGateway:
    """A gateway under uvicorn with the server options ``gateway serve`` derives from the
    same config (the protocol class with its limits, the keep-alive timeout)."""
    data: dict[str, Any] = copy.deepcopy(tomllib.loads(toml))
    data.setdefault("upstream", {}).setdefault("url", upstream or "http://127.0.0.1:1")
    server = settings_from_mapping(data).server
    return make_gateway(toml, upstream=upstream, **uvicorn_options(server, http))


@dataclass
class RawReply:
    status: int
    headers: list[tuple[str, str]]  # names lower-cased, in order
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name), None)

    def json(self) -> Any:
        return json.loads(self.body)


async def connect(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    return await asyncio.open_connection(parts.hostname, parts.port)


async def read_reply(reader: asyncio.StreamReader, *, timeout: float = 15) -> RawReply:
    """The next final response on the connection (1xx interim responses skipped)."""

    async def read() -> RawReply:
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
        names = dict(headers)
        if "content-length" in names:
            body = await reader.readexactly(int(names["content-length"]))
        elif "chunked" in names.get("transfer-encoding", ""):
            out = bytearray()
            while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
                out += await reader.readexactly(size)
                await reader.readexactly(2)
            await reader.readuntil(b"\r\n")
            body = bytes(out)
        else:
            body = await reader.read()
        return RawReply(status, headers, body)

    return await asyncio.wait_for(read(), timeout)


async def request(url: str, data: bytes, *, timeout: float = 15) -> RawReply:
    """Send exactly ``data`` on a new connection and read one reply."""
    reader, writer = await connect(url)
    try:
        writer.write(data)
        await writer.drain()
        return await read_reply(reader, timeout=timeout)
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
    return "\r\n".join([f"{method} {target} HTTP/1.1", f"Host: {host}", *lines, "", ""]
                       ).encode("latin-1")


def chunked(*pieces: bytes, trailers: tuple[str, ...] = ()) -> bytes:
    out = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces if p)
    return out + b"0\r\n" + "".join(f"{t}\r\n" for t in trailers).encode("latin-1") + b"\r\n"
