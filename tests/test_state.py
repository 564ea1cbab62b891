"""Unit tests of the state stores (gateway.state): MemoryStore, and RedisStore against a real
``redis-server`` (HMAC'd keys, AES-GCM values, claims, degraded fallback), plus SharedFlight
across two RedisStore instances standing in for two processes."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import redis

from gateway.audit import AuditLog
from gateway.authclient import AuthClient
from gateway.refresh import Refresher
from gateway.settings import SettingsError, settings_from_mapping
from gateway.singleflight import SharedFlight
from gateway.state import MemoryStore, create_store
from gateway.state.redis import RedisStore, state_key_material
from gateway.tokens import FoundToken
from gateway.validation import Validator
from tests.conftest import Backend
from tests.helpers.audit import read_events
from tests.helpers.state import Stores, eventually
from tests.redis_server import RedisServer, redis_binary, redis_or_skip
from tests.servers import free_port

SECRET = b"eyJhbGciOiJIUzI1NiJ9.plaintext-access-token-value.signature"


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    server = redis_or_skip()
    yield server
    server.close()


@pytest.fixture
def raw(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A plain redis-py client on the test server, emptied before each test."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    yield client
    client.close()


MakeStore = Callable[..., Awaitable[RedisStore]]


@pytest.fixture
async def make_store(redis_server: RedisServer, raw: redis.Redis, tmp_path: Path,
                     monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[MakeStore]:
    """``await make_store(material=..., url=...)``: a started RedisStore on an emptied server;
    each one has its own connection pool, like a separate worker process."""
    stores = Stores(tmp_path)

    async def factory(material: str = "a" * 64, url: str | None = None,
                      audit_path: Path | None = None, cls: type[RedisStore] = RedisStore,
                      auth_url: str = "http://127.0.0.1:9") -> RedisStore:
        env = f"TEST_STATE_KEY_{len(stores)}"
        monkeypatch.setenv(env, material)
        settings = settings_from_mapping({
            "upstream": {"url": auth_url},
            "state": {"backend": "redis", "redis_url": url or redis_server.url,
                      "key_env": env},
        })
        return await stores.start(settings, audit_path=audit_path, cls=cls)

    yield factory
    await stores.close()


def all_entries(client: redis.Redis) -> dict[bytes, bytes]:
    """Every key on the server with its raw value (strings only: the store writes no other),
    less the stores' liveness keys (``gw:alive:<random owner id>``, no token material)."""
    found: dict[bytes, bytes] = {}
    for key in client.scan_iter(count=1000):
        if key.startswith(b"gw:alive:"):
            continue
        assert client.type(key) == b"string"
        value = client.get(key)
        assert isinstance(value, bytes)
        found[key] = value
    return found


# -- MemoryStore ---------------------------------------------------------------------------------


async def test_memory_get_set_delete() -> None:
    store = MemoryStore()
    assert not store.shared
    assert await store.get(b"k") is None
    await store.set(b"k", b"v", 10)
    assert await store.get(b"k") == b"v"
    await store.set(b"k", b"w", 10)
    assert await store.get(b"k") == b"w"
    await store.delete(b"k")
    assert await store.get(b"k") is None
    await store.delete(b"missing")  # no error
    await store.set(b"zero", b"v", 0)  # ttl <= 0: nothing kept
    assert await store.get(b"zero") is None
    assert store.healthy


async def test_memory_values_expire() -> None:
    store = MemoryStore()
    await store.set(b"short", b"1", 0.05)
    await store.set(b"long", b"2", 10)
    await asyncio.sleep(0.1)
    assert await store.get(b"short") is None
    assert await store.get(b"long") == b"2"


async def test_memory_claim_is_exclusive_and_expires() -> None:
    store = MemoryStore()
    assert await store.claim(b"lock", 0.1)
    assert not await store.claim(b"lock", 0.1)
    assert await store.held(b"lock")
    assert await store.get(b"lock") is None  # locks and values are apart
    await asyncio.sleep(0.15)
    assert not await store.held(b"lock")
    assert await store.claim(b"lock", 10)
    await store.release(b"lock")
    assert not await store.held(b"lock")
    assert await store.claim(b"lock", 10)


async def test_memory_is_bounded() -> None:
    store = MemoryStore(max_entries=3)
    for i in range(10):
        await store.set(b"k%d" % i, b"v", 10)
    assert len(store) == 3


async def test_create_store_memory_by_default() -> None:
    settings = settings_from_mapping({"upstream": {"url": "http://127.0.0.1:9"}})
    store = create_store(settings, AuditLog("stderr"))
    assert isinstance(store, MemoryStore)


# -- RedisStore: key material ---------------------------------------------------------------------


def test_key_material_is_required_and_long_enough(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_from_mapping({"upstream": {"url": "http://127.0.0.1:9"},
                                      "state": {"backend": "redis", "key_env": "TEST_SK"}})
    monkeypatch.delenv("TEST_SK", raising=False)
    with pytest.raises(SettingsError) as missing:
        state_key_material(settings)
    assert missing.value.problems[0].startswith("state.key_env:")
    assert "TEST_SK" in missing.value.problems[0]
    monkeypatch.setenv("TEST_SK", "x" * 31)
    with pytest.raises(SettingsError) as short:
        state_key_material(settings)
    assert short.value.problems[0].startswith("state.key_env:")
    monkeypatch.setenv("TEST_SK", "x" * 32)
    assert state_key_material(settings) == b"x" * 32


# -- RedisStore: values, TTLs, claims -------------------------------------------------------------


async def test_redis_get_set_delete_and_ttl(make_store: MakeStore, raw: redis.Redis) -> None:
    store = await make_store()
    assert store.shared and store.healthy
    assert await store.get(b"k") is None
    await store.set(b"k", b"v1", 10)
    assert await store.get(b"k") == b"v1"
    await store.set(b"k", b"v2", 10)
    assert await store.get(b"k") == b"v2"
    (key,) = all_entries(raw)
    assert 9000 < raw.pttl(key) <= 10000  # the TTL is set in Redis, not only locally
    await store.delete(b"k")
    assert await store.get(b"k") is None
    assert all_entries(raw) == {}
    await store.set(b"zero", b"v", 0)
    assert all_entries(raw) == {}


async def test_redis_values_expire(make_store: MakeStore) -> None:
    store = await make_store()
    await store.set(b"short", b"1", 0.05)
    await store.set(b"long", b"2", 10)
    await asyncio.sleep(0.15)
    assert await store.get(b"short") is None
    assert await store.get(b"long") == b"2"


async def test_redis_two_stores_share_state(make_store: MakeStore) -> None:
    a, b = await make_store(), await make_store()
    await a.set(b"shared", b"from a", 10)
    assert await b.get(b"shared") == b"from a"
    await b.delete(b"shared")
    assert await a.get(b"shared") is None


async def test_redis_claim_is_exclusive_across_stores_and_expires(make_store: MakeStore
                                                                 ) -> None:
    a, b = await make_store(), await make_store()
    assert await a.claim(b"lock", 0.2)
    assert not await b.claim(b"lock", 10)
    assert not await a.claim(b"lock", 10)  # not re-entrant either
    assert await b.held(b"lock")
    assert await b.get(b"lock") is None  # a claim is not a readable value
    await asyncio.sleep(0.3)
    assert not await a.held(b"lock")
    assert await b.claim(b"lock", 10)


async def test_redis_concurrent_claims_have_one_winner(make_store: MakeStore) -> None:
    stores = [await make_store() for _ in range(4)]
    results = await asyncio.gather(*(s.claim(b"race", 10) for s in stores for _ in range(10)))
    assert results.count(True) == 1


async def test_redis_release_only_releases_our_own_claim(make_store: MakeStore) -> None:
    a, b = await make_store(), await make_store()
    assert await a.claim(b"lock", 10)
    await b.release(b"lock")  # not b's claim: nothing happens
    assert await a.held(b"lock")
    await a.release(b"lock")
    assert not await a.held(b"lock")

    # a's claim expires, b takes it, then a (late) releases: b's claim must survive.
    assert await a.claim(b"lock", 0.1)
    await asyncio.sleep(0.2)
    assert await b.claim(b"lock", 10)
    await a.release(b"lock")
    assert await b.held(b"lock")
    assert not await a.claim(b"lock", 10)
    await b.release(b"lock")
    assert await a.claim(b"lock", 10)


# -- RedisStore: what is at rest ------------------------------------------------------------------


async def test_redis_values_are_encrypted(make_store: MakeStore, raw: redis.Redis) -> None:
    store = await make_store()
    await store.set(b"k", SECRET, 10)
    await store.set(b"k2", SECRET, 10)
    entries = all_entries(raw)
    assert len(entries) == 2
    for value in entries.values():
        assert SECRET not in value
        assert SECRET[:20] not in value
        assert hashlib.sha256(SECRET).hexdigest().encode() not in value
        assert len(value) >= len(SECRET) + 12 + 16  # nonce + GCM tag
    (v1, v2) = entries.values()
    assert v1 != v2  # fresh nonce per write: equal plaintexts do not show as equal
    assert await store.get(b"k") == SECRET


async def test_redis_keys_are_not_the_input_key(make_store: MakeStore, raw: redis.Redis
                                                ) -> None:
    store = await make_store()
    name = b"validated:" + hashlib.sha256(SECRET).digest()
    await store.set(name, b"v", 10)
    await store.set(SECRET, b"v", 10)  # even a key that is itself a secret
    keys = list(all_entries(raw))
    assert len(keys) == 2
    for key in keys:
        assert name not in key
        assert b"validated:" not in key
        assert SECRET not in key and SECRET[:20] not in key
        assert hashlib.sha256(SECRET).hexdigest().encode() not in key
        assert hashlib.sha256(SECRET).digest() not in key
    # The same input under other key material lands on another Redis key (a keyed hash,
    # so a dump gives no way to test a guessed token).
    other = await make_store(material="b" * 64)
    await other.set(name, b"v", 10)
    assert len(all_entries(raw)) == 3


async def test_redis_wrong_key_material_reads_as_absent(make_store: MakeStore,
                                                        raw: redis.Redis) -> None:
    right = await make_store(material=secrets.token_hex(32))
    wrong = await make_store(material=secrets.token_hex(32))
    await right.set(b"k", b"value", 10)
    assert await wrong.get(b"k") is None

    # Even with the sealed bytes copied under the key the other store looks at, they do not
    # decrypt: absent, not an error and not garbage.
    (sealed,) = all_entries(raw).values()
    await wrong.set(b"k", b"placeholder", 10)
    (wrong_key,) = [k for k, v in all_entries(raw).items() if v != sealed]
    raw.set(wrong_key, sealed)
    assert await wrong.get(b"k") is None
    raw.set(wrong_key, b"short")  # truncated / foreign bytes
    assert await wrong.get(b"k") is None
    assert await right.get(b"k") == b"value"
    assert wrong.healthy and right.healthy


async def test_redis_tampered_value_reads_as_absent(make_store: MakeStore, raw: redis.Redis
                                                    ) -> None:
    store = await make_store()
    await store.set(b"k", b"value", 10)
    ((key, sealed),) = all_entries(raw).items()
    flipped = sealed[:-1] + bytes([sealed[-1] ^ 1])
    raw.set(key, flipped)
    assert await store.get(b"k") is None


# -- RedisStore: Redis unreachable -----------------------------------------------------------------


async def test_redis_unreachable_degrades_to_memory_once(make_store: MakeStore,
                                                         tmp_path: Path) -> None:
    audit_path = tmp_path / "degraded.jsonl"
    store = await make_store(url=f"redis://127.0.0.1:{free_port()}/0", audit_path=audit_path)
    assert not store.healthy and not store.trusted
    await eventually(lambda: store.state == "degraded")  # the failed start, confirmed by a probe
    # Still serves, from per-process state.
    await store.set(b"k", b"v", 10)
    assert await store.get(b"k") == b"v"
    assert await store.claim(b"lock", 10)
    assert not await store.claim(b"lock", 10)
    await store.release(b"lock")
    assert not await store.held(b"lock")
    events = read_events(audit_path)
    assert [e["event"] for e in events] == ["state.suspect", "state.degraded"]
    assert {e["backend"] for e in events} == {"redis"}


async def test_redis_burst_of_concurrent_operations_is_not_an_outage(
        make_store: MakeStore, tmp_path: Path) -> None:
    """300 concurrent lookups in one process (one burst of requests on one worker) must wait
    for a pooled connection, not count as Redis being down: a false ``state.degraded`` sends
    that worker to per-process state mid-flight (its published results and released claims
    never reach Redis)."""
    audit_path = tmp_path / "burst.jsonl"
    store = await make_store(audit_path=audit_path)
    await store.set(b"k", b"v", 10)
    results = await asyncio.gather(*(store.get(b"k") for _ in range(300)))
    degraded = audit_path.read_text() if audit_path.exists() else ""
    assert store.healthy, degraded
    assert "state.degraded" not in degraded
    assert results == [b"v"] * 300


async def test_redis_recovers_after_restart(make_store: MakeStore, tmp_path: Path) -> None:
    binary = redis_binary()  # a private server: this test kills it
    if binary is None:
        pytest.skip("redis-server binary not found on PATH")
    with RedisServer(binary).start() as server:
        audit_path = tmp_path / "flap.jsonl"
        store = await make_store(url=server.url, audit_path=audit_path)
        await store.set(b"k", b"v", 10)
        server.kill()
        assert await store.get(b"k") is None  # memory fallback: it was never there
        assert not store.healthy
        await store.set(b"k", b"local", 10)
        assert await store.get(b"k") == b"local"
        server.start()
        deadline = time.monotonic() + 5
        while not store.healthy and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert store.healthy
        await store.set(b"k", b"shared", 10)
        assert await store.get(b"k") == b"shared"
        events = [e["event"] for e in read_events(audit_path)]
        assert events == ["state.suspect", "state.degraded", "state.recovered"]


# -- SharedFlight across two "processes" -----------------------------------------------------------


class CountingWork:
    def __init__(self, delay_s: float = 0.2, result: bytes = b"result") -> None:
        self.delay_s = delay_s
        self.result = result
        self.runs = 0

    async def __call__(self) -> bytes:
        self.runs += 1
        await asyncio.sleep(self.delay_s)
        return self.result


async def test_shared_flight_runs_once_across_stores(make_store: MakeStore) -> None:
    a, b = await make_store(), await make_store()
    flight_a = SharedFlight(a, b"test")
    flight_b = SharedFlight(b, b"test")
    work = CountingWork()
    results = await asyncio.gather(
        *(f.run(b"key", work) for f in (flight_a, flight_b) for _ in range(10)))
    assert work.runs == 1
    assert {value for value, _ in results} == {b"result"}
    assert [merged for _, merged in results].count(False) == 1


async def test_shared_flight_loser_waits_for_the_winners_result(make_store: MakeStore
                                                                ) -> None:
    a, b = await make_store(), await make_store()
    winner_work = CountingWork(delay_s=0.3, result=b"from a")
    loser_work = CountingWork(result=b"from b")
    winner = asyncio.create_task(SharedFlight(a, b"test").run(b"key", winner_work))
    await asyncio.sleep(0.05)
    started = time.monotonic()
    value, merged = await SharedFlight(b, b"test").run(b"key", loser_work)
    assert (value, merged) == (b"from a", True)
    assert loser_work.runs == 0
    assert time.monotonic() - started >= 0.2  # it waited rather than ran
    assert await winner == (b"from a", False)


async def test_shared_flight_takes_over_from_a_crashed_winner(make_store: MakeStore) -> None:
    a, b = await make_store(), await make_store()
    # "Process" a claims the flight and dies: never publishes, never releases.
    assert await a.claim(b"test:claim:" + b"key", 0.4)
    work = CountingWork(delay_s=0.0, result=b"from b")
    started = time.monotonic()
    value, merged = await asyncio.wait_for(SharedFlight(b, b"test").run(b"key", work), 5)
    elapsed = time.monotonic() - started
    assert (value, merged) == (b"from b", False)
    assert work.runs == 1
    assert 0.3 <= elapsed < 2.0  # waited for the claim to expire, then took over


async def test_shared_flight_failure_releases_for_a_waiter(make_store: MakeStore) -> None:
    a, b = await make_store(), await make_store()

    async def failing() -> bytes:
        await asyncio.sleep(0.1)
        raise RuntimeError("backend down")

    first = asyncio.create_task(SharedFlight(a, b"test").run(b"key", failing))
    await asyncio.sleep(0.02)
    work = CountingWork(delay_s=0.0, result=b"second")
    value, _ = await asyncio.wait_for(SharedFlight(b, b"test").run(b"key", work), 5)
    assert value == b"second" and work.runs == 1
    with pytest.raises(RuntimeError):
        await first


# -- the caller's check and the flight's claim, raced across two "processes" --------------------
#
# Validation checks its cache, refresh its grace entry, and only then enter the SharedFlight.
# Under load (see tests/e2e/test_shared_state.py) a request in process B can find nothing in
# that check, then process A finishes its flight (writes the entry, publishes, releases the
# claim), then B claims the now free key and calls the backend a second time. These tests pin
# that interleaving down with a store that pauses B right after its miss.


class GatedStore(RedisStore):
    """Pauses once, right after a lookup of a key starting with ``prefix`` found nothing."""

    prefix: bytes = b""
    gate: asyncio.Event | None = None

    async def get(self, key: bytes) -> bytes | None:
        value = await super().get(key)
        if self.prefix and key.startswith(self.prefix) and value is None and self.gate:
            self.prefix = b""
            await self.gate.wait()
        return value


@contextlib.asynccontextmanager
async def auth_parts(store: RedisStore, backend: Backend) -> AsyncIterator[
        tuple[Validator, Refresher]]:
    """A Validator and a Refresher on ``store``, against the reference backend with the
    default (next-api-layer) auth settings: ``send = "access_header"``."""
    settings = settings_from_mapping({"upstream": {"url": backend.url}})
    client = AuthClient(settings)
    await client.start()
    validator = Validator(settings, client, store)
    try:
        yield validator, Refresher(settings, client, validator, store)
    finally:
        await client.close()


async def test_refresh_racing_a_finished_refresh_elsewhere_reuses_its_tokens(
        make_store: MakeStore, backend: Backend) -> None:
    a = await make_store(auth_url=backend.url)
    b = await make_store(auth_url=backend.url, cls=GatedStore)
    assert isinstance(b, GatedStore)
    b.prefix, b.gate = b"grace:", asyncio.Event()
    backend.reset()
    old = backend.token(user_id=1, ttl_s=-60)
    before = backend.stats()
    async with auth_parts(a, backend) as (_, refresher_a), \
            auth_parts(b, backend) as (_, refresher_b):
        late = asyncio.create_task(refresher_b.refresh(old))
        await asyncio.sleep(0.05)  # b has looked for a grace entry and found none (yet)
        first = await refresher_a.refresh(old)
        assert first.refreshed is not None and first.via == "backend"
        b.gate.set()
        second = await asyncio.wait_for(late, 10)
    after = backend.stats()
    refreshes = after["calls"]["refresh"] - before["calls"]["refresh"]
    assert second.refreshed is not None, (
        f"b refreshed again ({refreshes} backend refreshes) and was rejected "
        f"({second.status}): a rotating backend logs the user out")
    assert second.refreshed.access == first.refreshed.access
    assert refreshes == 1


async def test_validation_racing_a_finished_validation_elsewhere_reuses_it(
        make_store: MakeStore, backend: Backend) -> None:
    a = await make_store(auth_url=backend.url)
    b = await make_store(auth_url=backend.url, cls=GatedStore)
    assert isinstance(b, GatedStore)
    b.prefix, b.gate = b"validated:", asyncio.Event()
    backend.reset()
    token = FoundToken(backend.token(user_id=1), "header")
    before = backend.stats()
    async with auth_parts(a, backend) as (validator_a, _), \
            auth_parts(b, backend) as (validator_b, _):
        late = asyncio.create_task(validator_b.validate(token))
        await asyncio.sleep(0.05)  # b has looked in the cache and found nothing (yet)
        first = await validator_a.validate(token)
        assert first.identity is not None
        b.gate.set()
        second = await asyncio.wait_for(late, 10)
    assert second.identity == first.identity
    after = backend.stats()
    assert after["calls"]["me"] - before["calls"]["me"] == 1
