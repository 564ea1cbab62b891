"""Backend-mode guests under a flood of anonymous requests, on real sockets
(docs/behaviour.md#guests): no amplification toward the backend's guest endpoint, per client,
overall and in flight; what is refused is a JSON 429 with Retry-After and no token.

The requests are written by hand on keep-alive connections (tests/helpers/raw_http.py).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter

import pytest

from tests.conftest import Backend, MakeGateway, RunningGateway
from tests.helpers.guest import BACKEND_MODE, counts, get, new_guest_token
from tests.helpers.raw_http import Reply, connect, read_reply
from tests.helpers.replies import assert_no_raw_tokens

# --------------------------------------------------------------------------
# backend mode: no amplification
# --------------------------------------------------------------------------


async def _flood(gateway: RunningGateway, total: int, concurrency: int,
                 spoof: bool = False) -> list[Reply]:
    """``total`` anonymous GETs over ``concurrency`` keep-alive connections from 127.0.0.1
    (with ``spoof``, each from its own ``X-Forwarded-For`` address, as seen behind a trusted
    load balancer). Written by hand: an HTTP client library costs ~20x more CPU than the
    gateway does here."""
    port = gateway.server.port
    paths = iter(range(total))
    replies: list[Reply] = []

    async def connection() -> None:
        reader, writer = await connect(gateway.url)
        try:
            for i in paths:
                forwarded = f"x-forwarded-for: 10.{i >> 16}.{(i >> 8) & 255}.{i & 255}\r\n" \
                    if spoof else ""
                writer.write(f"GET /api/echo/flood/{i} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n"
                             f"accept: application/json\r\nx-requested-with: XMLHttpRequest"
                             f"\r\n{forwarded}\r\n".encode("ascii"))
                await writer.drain()
                reply = await read_reply(reader)
                replies.append(reply)
                if (reply.header("connection") or "").lower() == "close":
                    writer.close()
                    reader, writer = await connect(gateway.url)
        finally:
            writer.close()

    await asyncio.wait_for(asyncio.gather(*(connection() for _ in range(concurrency))), 20)
    assert len(replies) == total
    return replies


def _check_limited(reply: Reply) -> None:
    assert (reply.header("content-type") or "").startswith("application/json")
    assert json.loads(reply.body)["error"] == "too_many_requests"
    assert int(reply.header("retry-after") or "0") >= 1
    assert reply.cookie("guestToken") is None


async def test_flood_of_anonymous_requests_is_bounded_per_client(
        make_gateway: MakeGateway, backend: Backend, capsys: pytest.CaptureFixture[str]
        ) -> None:
    gateway = make_gateway(BACKEND_MODE.replace(
        'mode = "backend"', 'mode = "backend"\nmax_concurrent = 4\nper_client_per_minute = 20'))
    before = counts(backend)
    started = time.monotonic()
    replies = await _flood(gateway, total=1000, concurrency=50)
    elapsed = time.monotonic() - started
    statuses = Counter(r.status for r in replies)
    guest_calls = counts(backend)["guest"] - before["guest"]
    with capsys.disabled():
        print(f"\n[guest flood] 1000 requests, concurrency 50, max_concurrent=4, "
              f"per_client_per_minute=20: statuses={dict(statuses)} "
              f"backend guest calls={guest_calls} in {elapsed:.2f}s")
    assert set(statuses) <= {200, 429}, statuses
    assert guest_calls <= 20
    assert statuses[200] == guest_calls >= 1
    tokens = []
    for reply in replies:
        if reply.status == 429:
            _check_limited(reply)
        else:
            token = reply.cookie("guestToken")
            assert token
            tokens.append(token)
    assert len(set(tokens)) == len(tokens)
    denied = [e for e in gateway.events("auth.denied") if e["reason"] == "guest_rate_limited"]
    assert len(denied) == statuses[429]
    assert len(gateway.events("auth.guest_issued")) == statuses[200]
    assert_no_raw_tokens(gateway, *tokens)


async def test_flood_from_many_addresses_is_bounded_overall(
        make_gateway: MakeGateway, backend: Backend, capsys: pytest.CaptureFixture[str]
        ) -> None:
    """Behind a trusted load balancer every request can come from a new address: the
    per-client bound never triggers, the overall ``per_minute`` does."""
    gateway = make_gateway(BACKEND_MODE.replace(
        'mode = "backend"', 'mode = "backend"\nper_client_per_minute = 30\nper_minute = 50')
        + '\n[server]\ntrusted_proxies = ["127.0.0.1/32"]\n')
    before = counts(backend)
    replies = await _flood(gateway, total=1000, concurrency=8, spoof=True)
    statuses = Counter(r.status for r in replies)
    guest_calls = counts(backend)["guest"] - before["guest"]
    with capsys.disabled():
        print(f"\n[guest flood, 1000 addresses] concurrency 8, per_minute=50: "
              f"statuses={dict(statuses)} backend guest calls={guest_calls}")
    assert guest_calls == statuses[200] == 50
    assert statuses[429] == 950
    for reply in replies:
        if reply.status == 429:
            _check_limited(reply)
    clients = {e["client_ip"] for e in gateway.events("auth.guest_issued")}
    assert len(clients) == 50  # each from its own address: the per-client bound never hit


async def test_slow_guest_endpoint_bounds_calls_in_flight(
        make_gateway: MakeGateway, backend: Backend, capsys: pytest.CaptureFixture[str]
        ) -> None:
    gateway = make_gateway(BACKEND_MODE.replace(
        'mode = "backend"',
        'mode = "backend"\nmax_concurrent = 4\nper_client_per_minute = 100000'))
    backend.fault("guest", 0, count=-1, delay_s=0.5)
    try:
        before = counts(backend)
        started = time.monotonic()
        replies = await _flood(gateway, total=50, concurrency=50)
        elapsed = time.monotonic() - started
        statuses = Counter(r.status for r in replies)
        guest_calls = counts(backend)["guest"] - before["guest"]
        with capsys.disabled():
            print(f"\n[guest slow endpoint] 50 concurrent, guest delay 0.5s, max_concurrent=4: "
                  f"statuses={dict(statuses)} backend guest calls={guest_calls} "
                  f"in {elapsed:.2f}s")
        assert set(statuses) <= {200, 429}, statuses
        assert 1 <= guest_calls <= 4
        assert statuses[200] == guest_calls
        for reply in replies:
            if reply.status == 429:
                _check_limited(reply)
                assert reply.header("retry-after") == "1"
        # Once those finished, the slots are free again.
        later = await get(gateway, "/api/echo/later")
        assert later.status_code == 200
        new_guest_token(later)
    finally:
        backend.reset()
