"""Shared state across workers and replicas (``[state] backend = "redis"``), on real sockets and
real processes: ``python -m gateway serve`` replicas (one port each, requests round-robined)
and a ``--workers 4`` uvicorn multi-process gateway, in front of the reference backend (which
rotates and blacklists refresh credentials), with a real ``redis-server``.

The same scenarios run against ``backend = "memory"`` replicas for comparison; those runs only
report their numbers (lines starting with ``REPORT``, visible with ``-s``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import subprocess
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis

from tests.conftest import Backend
from tests.helpers.replies import (
    ACCESS,
    REFRESH,
    clears_any,
    cookie_value,
    cookieless_client,
    fp,
    set_cookies,
    upstream_saw,
)
from tests.helpers.shared_state import (
    MEMORY_STATE,
    REPLICAS,
    STARTUP_S,
    STATE_KEY,
    GatewayProcess,
    clients,
    cluster,
    delta,
    expired_session,
    redis_state,
    report,
    wait_ready,
    write_config,
)
from tests.redis_server import RedisServer, redis_or_skip
from tests.servers import free_port, python_module

PER_REPLICA = 50

# Module fixtures start 4-5 processes inside the first test's time budget.
pytestmark = pytest.mark.timeout(240)


# -- gateway processes ---------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def clean_backend(backend: Backend) -> None:
    """Counters zeroed, no leftover faults, default token lifetimes."""
    backend.reset()


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    server = redis_or_skip()
    yield server
    server.close()


@pytest.fixture(scope="module")
def redis_replicas(redis_server: RedisServer, backend: Backend,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[GatewayProcess]]:
    directory = tmp_path_factory.mktemp("redis-replicas")
    with cluster(directory, backend, redis_state(redis_server), name="redis") as processes:
        yield processes


@pytest.fixture(scope="module")
def memory_replicas(backend: Backend, tmp_path_factory: pytest.TempPathFactory
                    ) -> Iterator[list[GatewayProcess]]:
    directory = tmp_path_factory.mktemp("memory-replicas")
    with cluster(directory, backend, MEMORY_STATE, name="memory") as processes:
        yield processes


# -- clients and answers -------------------------------------------------------------------------


# -- 1. one refresh for 200 concurrent requests on 4 processes -----------------------------------


@dataclass
class StormResult:
    statuses: Counter[int]
    refreshes: int
    refresh_ok: int
    refresh_rejected: int
    cleared: int
    new_tokens: set[str]
    responses: list[httpx.Response]

    def line(self) -> str:
        return (f"refresh calls={self.refreshes} ok={self.refresh_ok} "
                f"rejected={self.refresh_rejected} statuses={dict(self.statuses)} "
                f"cleared_sessions={self.cleared} distinct_new_tokens={len(self.new_tokens)}")


async def refresh_storm(backend: Backend, urls: Sequence[str], total: int) -> StormResult:
    """``total`` concurrent requests with one expired session, round-robined over ``urls``."""
    access = await expired_session(backend)
    before = backend.stats()
    headers = {"cookie": f"{ACCESS}={access}", "accept": "application/json"}
    async with contextlib.AsyncExitStack() as stack:
        cs = [await stack.enter_async_context(
                  cookieless_client(u, connections=total, timeout=30)) for u in urls]
        responses = await asyncio.gather(
            *(cs[i % len(cs)].get("/api/echo", headers=headers) for i in range(total)))
    after = backend.stats()
    new_tokens = {cookie_value(set_cookies(r)[ACCESS]) for r in responses
                  if r.status_code == 200 and ACCESS in set_cookies(r)}
    return StormResult(
        statuses=Counter(r.status_code for r in responses),
        refreshes=delta(before, after, "refresh"),
        refresh_ok=delta(before, after, "refresh_ok"),
        refresh_rejected=delta(before, after, "refresh_rejected"),
        cleared=sum(clears_any(r) for r in responses),
        new_tokens=new_tokens,
        responses=responses,
    )


def assert_one_refresh(result: StormResult, total: int) -> None:
    assert result.statuses == {200: total}, result.line()
    assert result.refreshes == 1, result.line()
    assert result.refresh_ok == 1 and result.refresh_rejected == 0, result.line()
    assert result.cleared == 0, result.line()
    assert len(result.new_tokens) == 1, result.line()
    (new,) = result.new_tokens
    for response in result.responses:
        assert cookie_value(set_cookies(response)[ACCESS]) == new
        seen = upstream_saw(response)
        assert seen["authorization"] == [f"Bearer {new}"]
        assert seen["x-refreshed-token"] == [new]


async def test_replicas_share_one_refresh(redis_replicas: list[GatewayProcess],
                                          backend: Backend) -> None:
    total = REPLICAS * PER_REPLICA
    result = await refresh_storm(backend, [p.url for p in redis_replicas], total)
    report(f"1 redis, {REPLICAS} replicas x {PER_REPLICA}: {result.line()}")
    assert_one_refresh(result, total)
    (new,) = result.new_tokens
    per_replica = [[e["via"] for e in p.events("auth.refreshed")
                    if e["new_token_fp"] == fp(new)] for p in redis_replicas]
    assert [len(vias) for vias in per_replica] == [PER_REPLICA] * REPLICAS  # load was spread
    assert sum(vias.count("backend") for vias in per_replica) == 1, per_replica


async def test_memory_replicas_each_refresh(memory_replicas: list[GatewayProcess],
                                            backend: Backend) -> None:
    """For comparison only: per-process state cannot merge across replicas."""
    total = REPLICAS * PER_REPLICA
    result = await refresh_storm(backend, [p.url for p in memory_replicas], total)
    report(f"1 memory, {REPLICAS} replicas x {PER_REPLICA}: {result.line()}")
    assert result.refreshes >= 1
    assert sum(result.statuses.values()) == total


async def test_workers_share_one_refresh(redis_server: RedisServer, backend: Backend,
                                         tmp_path: Path) -> None:
    """The ``--workers 4`` form: uvicorn's worker processes on one port."""
    total = REPLICAS * PER_REPLICA
    with cluster(tmp_path, backend, redis_state(redis_server), replicas=1, workers=4,
                 name="workers") as (gateway,):
        result = await refresh_storm(backend, [gateway.url], total)
        report(f"1 redis, --workers 4, {total} requests: {result.line()}")
        assert_one_refresh(result, total)
        vias = [e["via"] for e in gateway.events("auth.refreshed")]
        assert vias.count("backend") == 1, Counter(vias)
        assert not gateway.events("state.degraded"), gateway.events("state.degraded")


# -- 2. one validation per token per cache window across replicas --------------------------------


async def validation_spread(backend: Backend, processes: Sequence[GatewayProcess]
                            ) -> tuple[int, Counter[int]]:
    tokens = [backend.token(user_id=1 + i % 2) for i in range(4)]
    before = backend.stats()
    async with clients(processes) as cs:
        burst = await asyncio.gather(*(
            c.get("/api/echo", headers={"authorization": f"Bearer {t}"})
            for t in tokens for c in cs for _ in range(5)))
        # and once more each, still inside the 5 s cache window
        again = [await c.get("/api/echo", headers={"cookie": f"{ACCESS}={t}"})
                 for t in tokens for c in cs]
    after = backend.stats()
    responses = [*burst, *again]
    for response in responses:
        if response.status_code == 200:
            assert upstream_saw(response)["x-auth-user-id"][0] in ("1", "2")
    return delta(before, after, "me"), Counter(r.status_code for r in responses)


async def test_replicas_validate_each_token_once(redis_replicas: list[GatewayProcess],
                                                 backend: Backend) -> None:
    validations, statuses = await validation_spread(backend, redis_replicas)
    report(f"2 redis, 4 tokens x {REPLICAS} replicas: /auth/me calls={validations} "
           f"statuses={dict(statuses)}")
    assert statuses == {200: 4 * REPLICAS * 6}
    assert validations == 4


async def test_memory_replicas_validate_per_replica(memory_replicas: list[GatewayProcess],
                                                   backend: Backend) -> None:
    validations, statuses = await validation_spread(backend, memory_replicas)
    report(f"2 memory, 4 tokens x {REPLICAS} replicas: /auth/me calls={validations} "
           f"statuses={dict(statuses)}")
    assert statuses == {200: 4 * REPLICAS * 6}
    assert 4 <= validations <= 4 * REPLICAS


# -- 3. rotation grace across replicas -----------------------------------------------------------


async def stale_tab(backend: Backend, processes: Sequence[GatewayProcess]
                    ) -> tuple[str, list[httpx.Response], int]:
    """Refresh via replica A; then the pre-rotation credential on every other replica (as a
    Bearer header, so the answer carries ``x-refreshed-token``)."""
    old = backend.token(user_id=1, ttl_s=-60)
    async with clients(processes) as cs:
        first = await cs[0].get("/api/echo", headers={"cookie": f"{ACCESS}={old}"})
        assert first.status_code == 200, first.text
        new = cookie_value(set_cookies(first)[ACCESS])
        before = backend.stats()
        stale = [await c.get("/api/echo", headers={"authorization": f"Bearer {old}"})
                 for c in cs[1:]]
    after = backend.stats()
    return new, stale, delta(before, after, "refresh")


async def test_stale_tab_on_another_replica_gets_grace(redis_replicas: list[GatewayProcess],
                                                       backend: Backend) -> None:
    new, stale, refreshes = await stale_tab(backend, redis_replicas)
    report(f"3 redis: stale credential on {len(stale)} other replicas: statuses="
           f"{[r.status_code for r in stale]} extra backend refreshes={refreshes}")
    assert refreshes == 0
    for response in stale:
        assert response.status_code == 200, response.text
        assert response.headers.get_list("x-refreshed-token") == [new]
        assert cookie_value(set_cookies(response)[ACCESS]) == new
        assert not clears_any(response)
        seen = upstream_saw(response)
        assert seen["authorization"] == [f"Bearer {new}"]
        assert seen["x-refreshed-token"] == [new]
    vias = [e["via"] for p in redis_replicas[1:] for e in p.events("auth.refreshed")
            if e["new_token_fp"] == fp(new)]
    assert vias == ["grace"] * (REPLICAS - 1)


async def test_memory_stale_tab_on_another_replica(memory_replicas: list[GatewayProcess],
                                                   backend: Backend) -> None:
    _, stale, refreshes = await stale_tab(backend, memory_replicas)
    report(f"3 memory: stale credential on {len(stale)} other replicas: statuses="
           f"{[r.status_code for r in stale]} extra backend refreshes={refreshes} "
           f"cleared={sum(clears_any(r) for r in stale)}")
    assert refreshes >= 1


# -- 4. Redis lost mid-run, then back --------------------------------------------------------------


async def test_redis_outage_degrades_and_recovers(backend: Backend, tmp_path: Path) -> None:
    with redis_or_skip() as server, \
            cluster(tmp_path, backend, redis_state(server), replicas=2, name="outage") as gws:
        token = backend.token(user_id=1)
        headers = {"authorization": f"Bearer {token}"}
        async with clients(gws) as cs:
            for c in cs:
                assert (await c.get("/api/echo", headers=headers)).status_code == 200
                assert (await c.get("/__gateway/ready")).status_code == 200

            server.kill()
            # Keeps serving from per-process state.
            during = await asyncio.gather(
                *(c.get("/api/echo", headers=headers) for c in cs for _ in range(10)))
            assert [r.status_code for r in during] == [200] * 20
            other = backend.token(user_id=2)  # a token never seen before the outage
            for c in cs:
                r = await c.get("/api/echo", headers={"authorization": f"Bearer {other}"})
                assert r.status_code == 200, r.text
                assert upstream_saw(r)["x-auth-user-id"] == ["2"]
                ready = await c.get("/__gateway/ready")
                assert ready.status_code == 503, ready.text
                assert ready.json()["checks"]["state"] != "ok"
            for gw in gws:
                assert len(gw.events("state.degraded")) == 1, gw.events("state.degraded")
                assert not gw.events("state.recovered")

            server.start()  # same port
            started = time.monotonic()
            for gw in gws:
                assert await wait_ready(gw.url, 200, 6) == 200
            report(f"4 ready again {time.monotonic() - started:.1f}s after redis restarted")
            after = await asyncio.gather(
                *(c.get("/api/echo", headers=headers) for c in cs for _ in range(10)))
            assert [r.status_code for r in after] == [200] * 20
        for gw in gws:
            assert len(gw.events("state.degraded")) == 1, gw.events("state.degraded")
            assert len(gw.events("state.recovered")) == 1, gw.events("state.recovered")
            for event in gw.events("state.degraded") + gw.events("state.recovered"):
                assert event["backend"] == "redis"
                assert event["timestamp"]


async def test_ready_is_503_when_redis_is_down_without_traffic(backend: Backend,
                                                               tmp_path: Path) -> None:
    """Ready is 200 only when Redis answers (docs/behaviour.md#own-endpoints). A replica that
    has not touched Redis since it went away must not report itself ready."""
    with redis_or_skip() as server, \
            cluster(tmp_path, backend, redis_state(server), replicas=1, name="idle") as (gw,):
        assert await wait_ready(gw.url, 200, 2) == 200
        server.kill()
        assert await wait_ready(gw.url, 503, 2) == 503


# -- 5. a Redis dump holds no token ----------------------------------------------------------------


def forbidden_strings(tokens: Sequence[str]) -> list[bytes]:
    found: list[bytes] = []
    for token in tokens:
        digest = hashlib.sha256(token.encode())
        found += [token.encode(), token[:20].encode(), token[-20:].encode(),
                  token.split(".")[1][:20].encode(), digest.hexdigest().encode(),
                  digest.digest()]
    return found


async def test_redis_dump_holds_no_token(redis_replicas: list[GatewayProcess],
                                         redis_server: RedisServer, backend: Backend) -> None:
    tokens: list[str] = []
    async with clients(redis_replicas) as cs:
        # a login through the gateway: its tokens go to cookies
        login = await cs[0].post("/auth/login", json={"email": "demo@example.com",
                                                      "password": "demo-password"})
        assert login.status_code == 200, login.text
        access = cookie_value(set_cookies(login)[ACCESS])
        tokens += [access, cookie_value(set_cookies(login)[REFRESH])]
        for c in cs:  # validations cached in Redis
            assert (await c.get("/api/echo", headers={"cookie": f"{ACCESS}={access}"})
                    ).status_code == 200
        # a refresh (grace entry, published flight result) and its stale-tab replay
        old = backend.token(user_id=2, ttl_s=-60)
        refreshed = await cs[1].get("/api/echo", headers={"cookie": f"{ACCESS}={old}"})
        assert refreshed.status_code == 200, refreshed.text
        tokens += [old, cookie_value(set_cookies(refreshed)[ACCESS]),
                   cookie_value(set_cookies(refreshed)[REFRESH])]
        replay = await cs[2].get("/api/echo", headers={"authorization": f"Bearer {old}"})
        assert replay.status_code == 200
        # a guest token from the backend
        guest = await cs[3].get("/api/items")
        assert guest.status_code == 200, guest.text
        tokens.append(cookie_value(set_cookies(guest)["guestToken"]))

    raw = redis.Redis.from_url(redis_server.url)
    try:
        blobs: list[bytes] = []
        for key in raw.scan_iter(count=1000):
            blobs.append(key)
            value = raw.get(key)
            assert isinstance(value, bytes)
            blobs.append(value)
            dumped = raw.dump(key)
            assert isinstance(dumped, bytes)
            blobs.append(dumped)
        assert len(blobs) >= 3 * 5, "the traffic left nothing in Redis?"
        raw.save()
        rdb = (redis_server.dir / "dump.rdb").read_bytes()
    finally:
        raw.close()
    blobs.append(rdb)
    for needle in forbidden_strings(tokens):
        for blob in blobs:
            assert needle not in blob, f"token material {needle[:8]!r}... found in Redis"


# -- 6. the command line -------------------------------------------------------------------------


def test_cli_warns_about_memory_workers_and_requires_the_state_key(
        backend: Backend, tmp_path: Path) -> None:
    memory = write_config(tmp_path, "memory-workers", backend, MEMORY_STATE)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "GATEWAY_STATE_KEY"}
    serve = subprocess.Popen(
        python_module("gateway", "serve", "--config", str(memory), "--port", str(port),
                      "--workers", "2"),
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + STARTUP_S
        up = False
        while time.monotonic() < deadline and serve.poll() is None and not up:
            with contextlib.suppress(httpx.HTTPError):
                up = httpx.get(f"http://127.0.0.1:{port}/__gateway/health").status_code == 200
            time.sleep(0.05)
        assert up, "serve --workers 2 did not start"
    finally:
        serve.terminate()
        try:
            out, err = serve.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            serve.kill()
            out, err = serve.communicate()
    warning = [line for line in err.decode().splitlines() if line.startswith("warning:")]
    assert len(warning) == 1, err.decode()
    assert "2 workers" in warning[0] and '"memory"' in warning[0]
    assert "per worker" in warning[0] and "redis" in warning[0]
    assert b"warning:" not in out

    # redis without the key: check and serve both refuse, naming the key
    unkeyed = write_config(tmp_path, "unkeyed", backend,
                           {"backend": "redis", "redis_url": "redis://127.0.0.1:9/0"})
    check = subprocess.run(python_module("gateway", "check", "--config", str(unkeyed)),
                           env=env, capture_output=True, timeout=STARTUP_S)
    assert check.returncode == 2, check
    lines = check.stderr.decode().strip().splitlines()
    assert lines and all(line.startswith("state.key_env") for line in lines), lines
    assert "GATEWAY_STATE_KEY" in lines[0]
    refused = subprocess.run(
        python_module("gateway", "serve", "--config", str(unkeyed), "--port", str(free_port())),
        env=env, capture_output=True, timeout=STARTUP_S)
    assert refused.returncode == 2, refused
    assert refused.stderr.decode().startswith("state.key_env")
    # a key that is too short is refused too
    short = subprocess.run(python_module("gateway", "check", "--config", str(unkeyed)),
                           env={**env, "GATEWAY_STATE_KEY": "tooshort"}, capture_output=True,
                           timeout=STARTUP_S)
    assert short.returncode == 2
    assert short.stderr.decode().startswith("state.key_env")
    keyed = subprocess.run(python_module("gateway", "check", "--config", str(unkeyed)),
                           env={**env, "GATEWAY_STATE_KEY": STATE_KEY}, capture_output=True,
                           timeout=STARTUP_S)
    assert keyed.returncode == 0, keyed
