"""The validator's cache entries and its decoded-answer memo (gateway/validation.py), against
the reference backend over a real socket: a per-process store holds the compact entry, a
shared one (a real redis-server) the JSON every replica reads; either way a hit answers what
the miss answered, with no backend call. The memory store's clock is a fake the tests move."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from gateway.audit import AuditLog
from gateway.authclient import AuthClient
from gateway.settings import settings_from_mapping
from gateway.state import MemoryStore
from gateway.state.redis import RedisStore
from gateway.tokens import FoundToken
from gateway.validation import Identity, Validator
from tests.conftest import Backend
from tests.redis_server import RedisServer, redis_or_skip
from tests.test_ttl_cache import FakeClock

CACHE = b"validated:"


@asynccontextmanager
async def validator_on(store: MemoryStore | RedisStore, backend: Backend,
                       auth: dict[str, object] | None = None) -> AsyncIterator[Validator]:
    settings = settings_from_mapping({"upstream": {"url": backend.url}, "auth": auth or {}})
    client = AuthClient(settings)
    await client.start()
    try:
        yield Validator(settings, client, store)
    finally:
        await client.close()


def same_identity(a: Identity | None, b: Identity | None) -> None:
    assert a is not None and b is not None
    assert (a.user_id, a.token_type, a.roles, a.user_b64) == \
        (b.user_id, b.token_type, b.roles, b.user_b64)


async def test_a_hit_answers_what_the_miss_answered_without_a_call(backend: Backend) -> None:
    token = FoundToken(backend.token(user_id=1), "header")
    store = MemoryStore(100)
    async with validator_on(store, backend) as validator:
        before = backend.calls("me")
        first = await validator.validate(token)
        second = await validator.validate(token)
    assert backend.calls("me") == before + 1
    assert (first.cache, second.cache) == ("miss", "hit")
    same_identity(first.identity, second.identity)
    assert first.identity is not None and first.identity.token_type == "user"


async def test_the_memory_entry_is_compact_and_read_back_by_a_fresh_validator(
        backend: Backend) -> None:
    """What the store holds decodes, in a validator with no memo yet, to the very identity
    the backend's answer gave: id, type, roles and the x-auth-user value."""
    token = FoundToken(backend.token(user_id=2), "header")
    store = MemoryStore(100)
    async with validator_on(store, backend) as validator:
        first = await validator.validate(token)
    entry = await store.get(CACHE + token.key)
    assert entry is not None and first.identity is not None
    assert entry[:1] == b"U"  # a user, with a deadline (the JWT's exp) in the entry
    assert entry.endswith(json.dumps(json.loads(_user_json(first.identity)),
                                     separators=(",", ":")).encode())
    assert len(entry) < len(first.identity.user_b64) + 10  # no id/roles/base64 spelled out
    before = backend.calls("me")
    async with validator_on(store, backend) as fresh:
        again = await fresh.validate(token)
    assert backend.calls("me") == before
    assert again.cache == "hit"
    same_identity(first.identity, again.identity)


async def test_a_guest_token_stays_a_guest_through_the_entry(backend: Backend) -> None:
    token = FoundToken(backend.token(typ="guest"), "guest_cookie")
    store = MemoryStore(100)
    async with validator_on(store, backend) as validator:
        first = await validator.validate(token)
    assert first.identity is not None and first.identity.token_type == "guest"
    async with validator_on(store, backend) as fresh:
        again = await fresh.validate(token)
    same_identity(first.identity, again.identity)


async def test_the_cache_ttl_is_the_store_clock_s(backend: Backend) -> None:
    clock = FakeClock()
    token = FoundToken(backend.token(user_id=1), "header")
    store = MemoryStore(100, clock=clock)
    async with validator_on(store, backend, {"cache_ttl_s": 2.0}) as validator:
        before = backend.calls("me")
        assert (await validator.validate(token)).cache == "miss"
        clock.advance(1.99)
        assert (await validator.validate(token)).cache == "hit"
        clock.advance(0.01)
        assert (await validator.validate(token)).cache == "miss"
        assert (await validator.validate(token)).cache == "hit"
    assert backend.calls("me") == before + 2


async def test_a_changed_entry_is_never_answered_from_the_memo(backend: Backend) -> None:
    """The memo answers only for the bytes it decoded: when the store's entry changes (here
    to a remembered rejection), the answer changes with it."""
    token = FoundToken(backend.token(user_id=1), "header")
    store = MemoryStore(100)
    async with validator_on(store, backend) as validator:
        assert (await validator.validate(token)).identity is not None
        assert (await validator.validate(token)).cache == "hit"
        await store.set(CACHE + token.key, b"!", 60)
        rejected = await validator.validate(token)
        assert rejected.identity is None and rejected.cache == "hit"
        await store.delete(CACHE + token.key)
        before = backend.calls("me")
        assert (await validator.validate(token)).identity is not None
        assert backend.calls("me") == before + 1


async def test_concurrent_misses_are_one_call_and_one_identity(backend: Backend) -> None:
    token = FoundToken(backend.token(user_id=1), "header")
    store = MemoryStore(100)
    async with validator_on(store, backend) as validator:
        before = backend.calls("me")
        results = await asyncio.gather(*(validator.validate(token) for _ in range(50)))
        assert backend.calls("me") == before + 1
        hit = await validator.validate(token)
    assert sorted({r.cache for r in results}) == ["merged", "miss"]
    for result in results:
        same_identity(result.identity, hit.identity)


# -- a shared store: the JSON every replica reads ------------------------------------------------


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    server = redis_or_skip()
    yield server
    server.close()


async def test_a_shared_store_gets_json_any_replica_reads(
        redis_server: RedisServer, backend: Backend, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_VALIDATION_STATE_KEY", "k" * 64)
    settings = settings_from_mapping({
        "upstream": {"url": backend.url},
        "state": {"backend": "redis", "redis_url": redis_server.url,
                  "key_env": "TEST_VALIDATION_STATE_KEY"}})
    audit = AuditLog(str(tmp_path / "audit.jsonl"))
    store = RedisStore(settings, audit)
    await store.start()
    try:
        token = FoundToken(backend.token(user_id=1), "header")
        async with validator_on(store, backend) as validator:
            first = await validator.validate(token)
        entry = await store.get(CACHE + token.key)
        assert entry is not None and first.identity is not None
        fields = json.loads(entry)
        same_identity(Identity.decode(fields), first.identity)
        assert isinstance(fields["until"], float)
        before = backend.calls("me")
        async with validator_on(store, backend) as other_replica:
            again = await other_replica.validate(token)
        assert again.cache == "hit" and backend.calls("me") == before
        same_identity(first.identity, again.identity)
    finally:
        await store.close()
        audit.close()


def _user_json(identity: Identity) -> bytes:
    import base64

    raw = identity.user_b64
    return base64.urlsafe_b64decode(raw + b"=" * (-len(raw) % 4))
