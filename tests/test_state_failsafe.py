"""The shared store's failure handling (docs/shared-state.md), against a real
``redis-server`` and the reference backend (rotating, blacklisting): an event-loop stall is
not an outage; a refresh rejection the store cannot vouch for is a 503, not a logout; grace
entries survive a Redis restart; every kind of entry has its own bound."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from gateway.audit import AuditLog
from gateway.authclient import AuthClient, BackendUnavailable
from gateway.refresh import Refresher
from gateway.settings import settings_from_mapping
from gateway.singleflight import SharedFlight
from gateway.state import MemoryStore
from gateway.state.base import StateUnavailable
from gateway.state.redis import RedisStore
from gateway.validation import GUEST_MARK, Validator
from tests.conftest import Backend
from tests.helpers.state import Stores, eventually
from tests.redis_server import RedisServer, ping, redis_binary
from tests.servers import free_port

KEY_ENV = "TEST_FAILSAFE_STATE_KEY"


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A server of this test's own: these tests stop, kill and restart it."""
    binary = redis_binary()
    if binary is None:
        pytest.skip("redis-server binary not found on PATH")
    with RedisServer(binary) as server:
        yield server


MakeStore = Callable[..., Awaitable[RedisStore]]


@pytest.fixture
async def make_store(private_redis: RedisServer, tmp_path: Path, backend: Backend,
                     monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[MakeStore]:
    monkeypatch.setenv(KEY_ENV, "k" * 64)
    stores = Stores(tmp_path)

    async def factory(**state: Any) -> RedisStore:
        settings = settings_from_mapping({
            "upstream": {"url": backend.url},
            "state": {"backend": "redis", "redis_url": private_redis.url, "key_env": KEY_ENV,
                      **state}})
        return await stores.start(settings)

    yield factory
    await stores.close()


@contextlib.asynccontextmanager
async def refresher_on(store: RedisStore, backend: Backend) -> AsyncIterator[Refresher]:
    settings = settings_from_mapping({"upstream": {"url": backend.url}})
    client = AuthClient(settings)
    await client.start()
    try:
        yield Refresher(settings, client, Validator(settings, client, store), store)
    finally:
        await client.close()


def rotate_elsewhere(backend: Backend, credential: str) -> str:
    """Another replica refreshed ``credential`` and its grace entry never reached Redis: the
    backend has rotated (and blacklisted) it."""
    reply = httpx.post(backend.url + "/auth/refresh",
                       headers={"authorization": f"Bearer {credential}"})
    assert reply.status_code == 200, reply.text
    return str(reply.json()["data"]["accessToken"])


async def test_an_event_loop_stall_is_not_an_outage(make_store: MakeStore) -> None:
    """A worker whose loop is blocked for a second (a busy machine, a slow request) finds
    its Redis replies late: with ``timeout_s = 2`` that is no incident at all."""
    store = await make_store()
    await store.set(b"k:1", b"v", 30)
    pending = [asyncio.ensure_future(store.get(b"k:1")) for _ in range(20)]
    await asyncio.sleep(0)  # the commands are on their way
    time.sleep(1.0)
    assert await asyncio.gather(*pending) == [b"v"] * 20
    assert (store.state, store.incidents) == ("healthy", 0)


async def test_a_short_redis_freeze_is_not_an_outage(make_store: MakeStore,
                                                     private_redis: RedisServer) -> None:
    store = await make_store()
    await store.set(b"k:1", b"v", 30)
    assert private_redis.proc is not None
    private_redis.proc.send_signal(19)  # SIGSTOP
    try:
        pending = asyncio.ensure_future(store.get(b"k:1"))
        await asyncio.sleep(0.8)
    finally:
        private_redis.proc.send_signal(18)  # SIGCONT
    assert await pending == b"v"
    assert (store.state, store.incidents) == ("healthy", 0)


async def test_rejection_after_trouble_is_503_until_settled(
        make_store: MakeStore, private_redis: RedisServer, backend: Backend) -> None:
    """Replica A had trouble with Redis (killed, restarted: its grace entries may be gone);
    replica B never noticed. A rejection B gets within ``settle_s`` may be the echo of a
    rotation A did: 503, cookies untouched. After ``settle_s`` (a Redis-side TTL, no clocks
    compared) the same rejection ends the session."""
    backend.reset()
    a = await make_store(settle_s=4)
    b = await make_store(settle_s=4)
    private_redis.kill()
    await a.set(b"k:1", b"v", 30)  # fails: A is suspect, then degraded
    private_redis.start()
    await eventually(lambda: a.state == "recovering")
    old = backend.token(user_id=1, ttl_s=-60)
    rotate_elsewhere(backend, old)
    async with refresher_on(b, backend) as refresher:
        assert b.trusted
        with pytest.raises(BackendUnavailable) as caught:
            await refresher.refresh(old)
        assert caught.value.reason == "state_unavailable"
        deadline = time.monotonic() + 10
        while await b.unsettled() and time.monotonic() < deadline:  # the marker's own TTL
            await asyncio.sleep(0.1)
        result = await refresher.refresh(old)
    assert result.refreshed is None and result.status == 401


async def test_rejection_with_a_healthy_store_ends_the_session(make_store: MakeStore,
                                                               backend: Backend) -> None:
    backend.reset()
    store = await make_store()
    old = backend.token(user_id=1, ttl_s=-60)
    rotate_elsewhere(backend, old)
    async with refresher_on(store, backend) as refresher:
        result = await refresher.refresh(old)
    assert result.refreshed is None and result.status == 401 and result.via == "backend"


async def test_refresh_while_degraded_and_rejected_is_503(make_store: MakeStore,
                                                          private_redis: RedisServer,
                                                          backend: Backend) -> None:
    backend.reset()
    store = await make_store()
    old = backend.token(user_id=1, ttl_s=-60)
    rotate_elsewhere(backend, old)
    private_redis.kill()
    async with refresher_on(store, backend) as refresher:
        with pytest.raises(BackendUnavailable) as caught:
            await refresher.refresh(old)
    assert caught.value.reason == "state_unavailable"
    assert store.state in ("suspect", "degraded")


async def test_grace_entries_are_written_back_after_a_restart(
        make_store: MakeStore, private_redis: RedisServer, backend: Backend) -> None:
    """Redis restarted without persistence (every key lost): the replica that refreshed puts
    its grace entry back, so a stale tab on another replica still gets the new tokens."""
    backend.reset()
    a = await make_store()
    b = await make_store()
    old = backend.token(user_id=1, ttl_s=-60)
    async with refresher_on(a, backend) as refresher_a:
        first = await refresher_a.refresh(old)
    assert first.refreshed is not None
    private_redis.kill()
    private_redis.start()
    # A notices on its own (its liveness key is gone), probes, writes its grace back.
    await eventually(lambda: a.state == "recovering", 15)
    async with refresher_on(b, backend) as refresher_b:
        stale = await refresher_b.refresh(old)
    assert stale.via == "grace" and stale.refreshed is not None
    assert stale.refreshed.access == first.refreshed.access


async def test_each_namespace_has_its_own_bound() -> None:
    """A flood of one kind of entry evicts only its own kind."""
    store = MemoryStore(max_entries=200)
    await store.set(GUEST_MARK + b"guest", b"1", 60, durable=True)
    await store.set(b"grace:old", b"tokens", 60, durable=True)
    for i in range(400):
        await store.set(b"refresh-rejected:%d" % i, b"401", 60, durable=True)
        await store.set(b"validated:%d" % i, b"user", 60)
    assert await store.get(GUEST_MARK + b"guest") == b"1"
    assert await store.get(b"grace:old") == b"tokens"
    assert await store.get(b"validated:0") is None  # its own kind was bounded
    assert await store.get(b"validated:399") == b"user"
    assert len(store) == 2 + 200 + 200


async def test_sentinel_finds_the_master(private_redis: RedisServer, tmp_path: Path,
                                         backend: Backend, monkeypatch: pytest.MonkeyPatch
                                         ) -> None:
    """``state.sentinels``: the store asks a real Sentinel (``redis-server --sentinel``) where
    the master is; ``redis_url``'s host is not used."""
    assert private_redis.binary
    port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
                    f"sentinel monitor gwmaster 127.0.0.1 {private_redis.port} 1\n")
    sentinel = subprocess.Popen([private_redis.binary, str(conf), "--sentinel"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not ping(port) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        monkeypatch.setenv(KEY_ENV, "k" * 64)
        settings = settings_from_mapping({
            "upstream": {"url": backend.url},
            "state": {"backend": "redis", "redis_url": "redis://nowhere.invalid:1/0",
                      "key_env": KEY_ENV, "sentinels": [f"127.0.0.1:{port}"],
                      "sentinel_service": "gwmaster"}})
        audit = AuditLog(str(tmp_path / "audit.jsonl"))
        store = RedisStore(settings, audit)
        await store.start()
        try:
            await store.set(b"k:1", b"via sentinel", 30)
            assert await store.get(b"k:1") == b"via sentinel"
            assert store.state == "healthy"
        finally:
            await store.close()
            audit.close()
        raw = redis.Redis.from_url(private_redis.url)
        try:
            assert len([k for k in raw.scan_iter() if not k.startswith(b"gw:alive:")]) == 1
        finally:
            raw.close()
    finally:
        sentinel.kill()
        sentinel.wait(10)


class SlowWork:
    def __init__(self, delay_s: float, result: bytes) -> None:
        self.delay_s, self.result, self.runs = delay_s, result, 0

    async def __call__(self) -> bytes:
        self.runs += 1
        await asyncio.sleep(self.delay_s)
        return self.result


async def test_a_slow_winner_keeps_its_claim(make_store: MakeStore) -> None:
    """The winner renews its claim while it works: a backend call three claim lifetimes long
    does not hand the work to a second process (which, with a rotating backend, would be
    rejected)."""
    a, b = await make_store(), await make_store()
    slow, other = SlowWork(5.0, b"from a"), SlowWork(0.0, b"from b")
    winner = asyncio.ensure_future(SharedFlight(a, b"t", claim_ttl_s=1.5).run(b"key", slow))
    await asyncio.sleep(0.2)
    value, merged = await asyncio.wait_for(
        SharedFlight(b, b"t", claim_ttl_s=1.5).run(b"key", other), 20)
    assert (value, merged) == (b"from a", True)
    assert (slow.runs, other.runs) == (1, 0)
    assert await winner == (b"from a", False)


async def test_a_waiter_gives_up_after_its_bound(make_store: MakeStore) -> None:
    a, b = await make_store(), await make_store()
    slow = SlowWork(4.0, b"late")
    winner = asyncio.ensure_future(SharedFlight(a, b"t", claim_ttl_s=3.0).run(b"key", slow))
    await asyncio.sleep(0.2)
    with pytest.raises(StateUnavailable):
        await SharedFlight(b, b"t", claim_ttl_s=3.0, max_wait_s=0.5).run(
            b"key", SlowWork(0.0, b"never"))
    assert await winner == (b"late", False)
