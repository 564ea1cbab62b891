"""Proxying on real sockets (docs/behaviour.md#proxying): the upstream's status, body and
HEAD answers passed through, the upstream base path, the raw path and query, compressed
bodies left alone, no cookie jar shared between clients, and the upstream's failures as
502, 503 and 504.

The shared gateway ``gw`` (tests/e2e/conftest.py) serves the tests that need no config of
their own; where exact bytes matter the request goes over a raw socket
(tests/helpers/raw_http.py).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os

import pytest

from tests.conftest import Backend, MakeGateway, RunningGateway
from tests.helpers.proxy import PUBLIC, MiB, assert_clean_error, echoed_pairs, values
from tests.helpers.raw_http import raw_request
from tests.servers import free_port


@pytest.mark.parametrize(("target", "status"), [
    ("/test/status/204", 204), ("/test/status/304", 304), ("/test/status/302", 302),
    ("/test/status/503", 503)])
async def test_upstream_status_passed_through(gw: RunningGateway, target: str,
                                              status: int) -> None:
    response = await raw_request(gw.url, target, [("Connection", "close")])
    assert response.status == status
    if status in (204, 304):
        assert response.body == b""
    else:  # the upstream's own body, not a gateway error; redirects are not followed
        assert response.json() == {"status": status}


async def test_head_is_proxied_without_body(gw: RunningGateway) -> None:
    response = await raw_request(gw.url, "/api/echo/head", [("Connection", "close")],
                                 method="HEAD")
    assert response.status == 200
    assert response.body == b""


async def test_upstream_answering_before_reading_the_upload(gw: RunningGateway) -> None:
    async with gw.client(timeout=30) as client:
        response = await client.post("/test/status/201", content=os.urandom(8 * MiB))
        assert response.status_code == 201
        assert response.json() == {"status": 201}
        assert (await client.get("/api/echo/after")).status_code == 200


async def test_upstream_base_path_is_prefixed(make_gateway: MakeGateway,
                                              backend: Backend) -> None:
    gateway = make_gateway('[server]\nallow_encoded_slash = true\n'
                           '[[routes]]\nmatch = "/**"\naccess = "public"\n',
                           upstream=backend.url + "/api/echo")
    response = await raw_request(gateway.url, "/foo/a%2Fb?x=1")
    assert response.status == 200
    assert (response.json()["path"], response.json()["query"]) == ("/api/echo/foo/a%2Fb", "x=1")


# -- path and query ----------------------------------------------------------------------------


@pytest.mark.parametrize(("target", "path", "query"), [
    ("/api/echo/a%20b?x=1&y=%20z&y=2", "/api/echo/a%20b", "x=1&y=%20z&y=2"),
    ("/api/echo/./x/../y//z", "/api/echo/y/z", ""),
    ("/api/echo/%7Euser/%41?q=%2F%2f&&=&e", "/api/echo/~user/A", "q=%2F%2f&&=&e"),
    ("/api/echo/a%3Bb;p=1?", "/api/echo/a%3Bb;p=1", ""),
    ("/api/echo/sp?a=b+c&d=%E2%82%AC", "/api/echo/sp", "a=b+c&d=%E2%82%AC"),
])
async def test_raw_path_and_query_forwarded(gw: RunningGateway, target: str, path: str,
                                            query: str) -> None:
    response = await raw_request(gw.url, target)
    assert response.status == 200, response.body
    body = response.json()
    assert body["path"] == path
    assert body["query"] == query


async def test_no_accept_encoding_or_user_agent_added(gw: RunningGateway) -> None:
    response = await raw_request(gw.url, "/api/echo/bare")
    assert response.status == 200
    names = [name for name, _ in echoed_pairs(response.json())]
    assert "accept-encoding" not in names
    assert "user-agent" not in names
    assert "accept" not in names


async def test_client_accept_encoding_and_user_agent_passed_as_is(gw: RunningGateway) -> None:
    response = await raw_request(gw.url, "/api/echo/ua", [
        ("User-Agent", "curl/8.0"), ("Accept-Encoding", "br")])
    seen = echoed_pairs(response.json())
    assert values(seen, "user-agent") == ["curl/8.0"]
    assert values(seen, "accept-encoding") == ["br"]


async def test_compressed_body_passed_through_undecoded(gw: RunningGateway) -> None:
    async with gw.client() as client, client.stream("GET", "/test/gzip") as response:
        raw = b"".join([chunk async for chunk in response.aiter_raw()])
    assert response.status_code == 200
    assert response.headers.get_list("content-encoding") == ["gzip"]
    assert raw[:2] == b"\x1f\x8b"
    assert json.loads(gzip.decompress(raw))["compressed"] is True
    if "content-length" in response.headers:
        assert int(response.headers["content-length"]) == len(raw)


async def test_no_cookie_jar_between_clients(make_gateway: MakeGateway, backend: Backend
                                            ) -> None:
    # Upstream by host name: aiohttp's default jar ignores cookies from IP-address hosts, so
    # against 127.0.0.1 this test could not fail.
    gw = make_gateway(PUBLIC, upstream=backend.url.replace("127.0.0.1", "localhost"))
    async with gw.client() as client_a:
        set_reply = await client_a.get("/test/set-cookie?name=sid&value=A")
        assert set_reply.headers.get_list("set-cookie") == ["sid=A; Path=/"]
    for _ in range(3):  # fresh connections; the upstream pool is reused
        async with gw.client() as client_b:
            response = await client_b.get("/api/echo/jar")
        names = [name for name, _ in echoed_pairs(response.json())]
        assert "cookie" not in names


# -- upstream failures -------------------------------------------------------------------------


async def test_upstream_refused_is_502(make_gateway: MakeGateway) -> None:
    port = free_port()
    gateway = make_gateway(PUBLIC, upstream=f"http://127.0.0.1:{port}")
    async with gateway.client() as client:
        response = await client.get("/api/echo/x", headers={"x-request-id": "req-502"})
    body = assert_clean_error(response, 502)
    assert str(port) not in response.text
    assert response.headers.get_list("x-request-id") == ["req-502"]
    assert body["error"]


async def test_upstream_read_timeout_is_504(make_gateway: MakeGateway) -> None:
    gateway = make_gateway(PUBLIC + "\n[upstream]\nread_timeout_s = 0.5\n")
    async with gateway.client(timeout=10) as client:
        response = await client.get("/test/slow?delay=2")
        assert_clean_error(response, 504)
        assert len(response.headers.get_list("x-request-id")) == 1
        fast = await client.get("/test/slow?delay=0")
    assert fast.status_code == 200


async def test_pool_exhausted_is_503_with_retry_after(make_gateway: MakeGateway) -> None:
    gateway = make_gateway(
        PUBLIC + "\n[upstream]\nmax_connections = 1\nconnect_timeout_s = 0.3\n")
    async with gateway.client(timeout=10) as slow_client, gateway.client(timeout=10) as client:
        slow = asyncio.create_task(slow_client.get("/test/slow?delay=1"))
        await asyncio.sleep(0.2)
        response = await client.get("/api/echo/busy")
        assert_clean_error(response, 503)
        assert response.headers.get("retry-after", "").isdigit()
        assert len(response.headers.get_list("x-request-id")) == 1
        assert (await slow).status_code == 200
        after = await client.get("/api/echo/free")
    assert after.status_code == 200
