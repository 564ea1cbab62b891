"""The validation cache and the in-flight merge on real sockets (docs/behaviour.md#validation):
under concurrent load one backend call per token, the cache's lifetime and bound, a leader
that goes away, an outage's retries shared by everyone waiting.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from urllib.parse import urlsplit

import httpx

from tests.conftest import Backend, MakeGateway
from tests.helpers.replies import XHR, assert_no_raw_tokens, fp
from tests.helpers.validation import LOG_CACHE_HITS, ROUTES, bearer, me_calls, routes_with

# --------------------------------------------------------------------------
# cache and in-flight merge (docs/behaviour.md#validation)
# --------------------------------------------------------------------------


async def test_100_concurrent_requests_one_backend_call(
    make_gateway: MakeGateway, backend: Backend
) -> None:
    gateway = make_gateway(ROUTES + LOG_CACHE_HITS)
    token = backend.token(1)
    before = me_calls(backend)
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
    async with gateway.client(limits=limits, timeout=20) as client:
        replies = await asyncio.gather(
            *(client.get("/api/items", headers=bearer(token)) for _ in range(100)))
    assert [r.status_code for r in replies] == [200] * 100
    assert {r.json()["user_id"] for r in replies} == {"1"}
    assert me_calls(backend) - before == 1

    events = [e for e in gateway.events("auth.validated") if e["token_fp"] == fp(token)]
    assert len(events) == 100
    caches = Counter(e["cache"] for e in events)
    assert caches["miss"] == 1
    assert caches["merged"] + caches["hit"] == 99
    assert_no_raw_tokens(gateway, token)


async def test_concurrent_requests_merge_even_without_cache(
    make_gateway: MakeGateway, backend: Backend
) -> None:
    """With the cache off, only the in-flight merge can keep it to one backend call."""
    gateway = make_gateway(routes_with("cache_ttl_s = 0"))
    token = backend.token(1)
    backend.fault("me", 0, count=1, delay_s=0.8)  # the first validation is slow
    before = me_calls(backend)
    limits = httpx.Limits(max_connections=50, max_keepalive_connections=50)
    async with gateway.client(limits=limits, timeout=20) as client:
        replies = await asyncio.gather(
            *(client.get("/api/items", headers=bearer(token)) for _ in range(50)))
        assert [r.status_code for r in replies] == [200] * 50
        assert me_calls(backend) - before == 1
        events = [e for e in gateway.events("auth.validated") if e["token_fp"] == fp(token)]
        assert Counter(e["cache"] for e in events) == {"miss": 1, "merged": 49}
        # The flight is forgotten once done, and nothing is cached: the next call asks again.
        assert (await client.get("/api/items", headers=bearer(token))).status_code == 200
    assert me_calls(backend) - before == 2
    assert gateway.app.validator.cache_size == 0


async def test_leader_that_goes_away_does_not_strand_its_followers(
    make_gateway: MakeGateway, backend: Backend
) -> None:
    """The client whose request started the validation hangs up mid-call; the 20 requests
    that merged into it still get their answer from that one backend call."""
    gateway = make_gateway(ROUTES)
    token = backend.token(1)
    backend.fault("me", 0, count=1, delay_s=0.8)
    before = me_calls(backend)
    parts = urlsplit(gateway.url)
    assert parts.hostname is not None and parts.port is not None
    _reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    writer.write(f"GET /api/items HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {token}"
                 "\r\n\r\n".encode())
    await writer.drain()
    await asyncio.sleep(0.2)  # the leader's validation is under way at the backend
    limits = httpx.Limits(max_connections=20, max_keepalive_connections=20)
    async with gateway.client(limits=limits, timeout=20) as client:
        followers = [asyncio.ensure_future(client.get("/api/items", headers=bearer(token)))
                     for _ in range(20)]
        await asyncio.sleep(0.2)
        writer.transport.abort()  # the leader's client goes away
        replies = await asyncio.gather(*followers)
    assert [r.status_code for r in replies] == [200] * 20
    assert me_calls(backend) - before == 1


async def test_concurrent_requests_during_an_outage_share_one_round_of_retries(
    make_gateway: MakeGateway, backend: Backend
) -> None:
    gateway = make_gateway(routes_with("retries = 2"))
    token = backend.token(1)
    backend.fault("me", 503, count=-1, delay_s=0.3)  # the flight lasts about a second
    try:
        before = me_calls(backend)
        limits = httpx.Limits(max_connections=50, max_keepalive_connections=50)
        async with gateway.client(limits=limits, timeout=20) as client:
            replies = await asyncio.gather(*(
                client.get("/api/items", headers={**bearer(token), **XHR}) for _ in range(50)))
        calls = me_calls(backend) - before
    finally:
        backend.reset()
    assert [r.status_code for r in replies] == [503] * 50
    assert all(r.headers.get("retry-after") for r in replies)
    assert calls == 3  # one try and two retries, shared by all 50


def test_cache_ttl_and_one_call_per_token(make_gateway: MakeGateway, backend: Backend) -> None:
    gateway = make_gateway(routes_with("cache_ttl_s = 0.5", extra=LOG_CACHE_HITS))
    first, second = backend.token(1), backend.token(2)
    before = me_calls(backend)
    with httpx.Client(base_url=gateway.url) as client:
        assert client.get("/api/items", headers=bearer(first)).status_code == 200
        assert client.get("/api/items", headers=bearer(first)).status_code == 200
        assert me_calls(backend) - before == 1  # the second one was a cache hit
        time.sleep(0.65)
        assert client.get("/api/items", headers=bearer(first)).status_code == 200
        assert me_calls(backend) - before == 2  # the entry expired
        assert client.get("/api/items", headers=bearer(second)).json()["user_id"] == "2"
        assert me_calls(backend) - before == 3
    caches = [e["cache"] for e in gateway.events("auth.validated")]
    assert caches == ["miss", "hit", "miss", "miss"]


def test_two_tokens_two_calls(make_gateway: MakeGateway, backend: Backend) -> None:
    gateway = make_gateway(ROUTES)
    tokens = [backend.token(1), backend.token(1)]
    before = me_calls(backend)
    with httpx.Client(base_url=gateway.url) as client:
        for _ in range(3):
            for token in tokens:
                assert client.get("/api/items", headers=bearer(token)).status_code == 200
    assert me_calls(backend) - before == 2


def test_cache_is_bounded(make_gateway: MakeGateway, backend: Backend) -> None:
    gateway = make_gateway(routes_with("cache_ttl_s = 60", "cache_max_entries = 5"))
    tokens = [backend.token(1) for _ in range(20)]
    before = me_calls(backend)
    with httpx.Client(base_url=gateway.url) as client:
        for token in tokens:
            assert client.get("/api/items", headers=bearer(token)).status_code == 200
        assert me_calls(backend) - before == 20
        assert gateway.app.validator.cache_size <= 5
        # The newest token is still cached; the first one was evicted and costs a new call.
        assert client.get("/api/items", headers=bearer(tokens[-1])).status_code == 200
        assert me_calls(backend) - before == 20
        assert client.get("/api/items", headers=bearer(tokens[0])).status_code == 200
        assert me_calls(backend) - before == 21
    assert gateway.app.validator.cache_size <= 5
