"""Chaos on shared state (``[state] backend = "redis"``): real gateway processes (4 replicas and
one ``--workers 4`` gateway), a real ``redis-server`` behind a small TCP relay, the reference
backend rotating and blacklisting refresh credentials. A burst of 120 requests carrying one
expired session runs while Redis freezes, dies and comes back, answers slowly, or the CPU is
saturated. Whatever happens to Redis, nobody is logged out: no cleared cookies, no 401 (a
refresh rejection the gateway cannot rule out as another replica's rotation is a 503 with
``Retry-After``). Each case prints a ``REPORT`` line (``-s``) with its numbers.

See docs/shared-state.md for the state machine these tests exercise.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

import httpx
import pytest

from tests.conftest import Backend
from tests.helpers.chaos import DelayRelay, busy_cpu, kill_and_restart, stall
from tests.helpers.replies import ACCESS, clears_any, cookie_value, cookieless_client, set_cookies
from tests.helpers.shared_state import (
    GatewayProcess,
    cluster,
    delta,
    expired_session,
    report,
    wait_ready,
)
from tests.redis_server import RedisServer, redis_or_skip

BURST = 120
#: Extra ``[state]`` keys for the chaos gateways (defaults otherwise).
CHAOS_STATE: dict[str, Any] = {}
#: The backend's refresh answers this late: the refresh flight spans the fault.
REFRESH_DELAY_S = 0.5

pytestmark = pytest.mark.timeout(240)  # the first test starts 8 processes


@pytest.fixture(autouse=True)
def clean_backend(backend: Backend) -> Iterator[None]:
    backend.reset()
    yield
    backend.reset()


@pytest.fixture(scope="module")
def chaos_redis() -> Iterator[RedisServer]:
    server = redis_or_skip()
    yield server
    server.close()


@pytest.fixture(scope="module")
def relay(chaos_redis: RedisServer) -> Iterator[DelayRelay]:
    with DelayRelay(chaos_redis.port) as running:
        yield running


@pytest.fixture(scope="module")
def gateways(relay: DelayRelay, backend: Backend, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[list[GatewayProcess]]:
    """4 single-process replicas and one ``--workers 4`` gateway, all on Redis via the
    relay."""
    directory = tmp_path_factory.mktemp("chaos")
    state = {"backend": "redis", "redis_url": relay.url, **CHAOS_STATE}
    with cluster(directory, backend, state, replicas=4, name="replica") as replicas, \
            cluster(directory, backend, state, replicas=1, workers=4, name="workers") as workers:
        yield [*replicas, *workers]


async def all_ready(processes: Sequence[GatewayProcess], timeout: float = 30) -> None:
    for p in processes:
        assert await wait_ready(p.url, 200, timeout) == 200, f"{p.url} not ready"


async def chaos_burst(backend: Backend, processes: Sequence[GatewayProcess], case: str,
                      fault: Callable[[], Awaitable[None]]) -> Counter[int]:
    """``BURST`` concurrent requests with one expired session over every gateway while
    ``fault`` runs; then, once Redis is back, the same session once more on each gateway (a
    client retrying after its 503). Asserts nobody was logged out; returns the statuses."""
    await all_ready(processes)
    seen = {p.url: len(p.events()) for p in processes}
    access = await expired_session(backend)
    backend.fault("refresh", 0, count=-1, delay_s=REFRESH_DELAY_S)
    before = backend.stats()
    headers = {"cookie": f"{ACCESS}={access}", "accept": "application/json"}
    urls = [p.url for p in processes]
    async with contextlib.AsyncExitStack() as stack:
        cs = [await stack.enter_async_context(
                  cookieless_client(u, connections=BURST, timeout=30)) for u in urls]
        faulting = asyncio.ensure_future(fault())
        try:
            responses = await asyncio.wait_for(asyncio.gather(
                *(cs[i % len(cs)].get("/api/echo", headers=headers) for i in range(BURST))), 60)
        finally:
            await asyncio.wait_for(faulting, 60)
        await all_ready(processes)
        retries = [await c.get("/api/echo", headers=headers) for c in cs]
    after = backend.stats()
    statuses = Counter(r.status_code for r in responses)
    retried = Counter(r.status_code for r in retries)
    new_tokens = {cookie_value(set_cookies(r)[ACCESS]) for r in [*responses, *retries]
                  if r.status_code == 200 and ACCESS in set_cookies(r)}
    events = Counter(f'{e["event"]}({e.get("reason", "")})' for p in processes
                     for e in p.events()[seen[p.url]:] if e["event"].startswith("state."))
    report(f"chaos {case}: refresh calls={delta(before, after, 'refresh')} "
           f"ok={delta(before, after, 'refresh_ok')} "
           f"rejected={delta(before, after, 'refresh_rejected')} statuses={dict(statuses)} "
           f"retry statuses={dict(retried)} "
           f"cleared_sessions={sum(clears_any(r) for r in [*responses, *retries])} "
           f"distinct_new_tokens={len(new_tokens)} state_events={dict(events)}")
    assert_nobody_logged_out([*responses, *retries])
    return statuses


def assert_nobody_logged_out(responses: Sequence[httpx.Response]) -> None:
    for response in responses:
        assert not clears_any(response), (response.status_code, response.headers)
        assert response.status_code in (200, 503), (response.status_code, response.text)
        if response.status_code == 503:
            assert response.headers.get("retry-after"), response.headers


async def test_redis_stalled_mid_burst(gateways: list[GatewayProcess],
                                       chaos_redis: RedisServer, backend: Backend) -> None:
    """SIGSTOP for 3 s (longer than the operation timeout), then SIGCONT."""
    await chaos_burst(backend, gateways, "redis SIGSTOP 3s",
                      lambda: stall(chaos_redis, after_s=0.2, for_s=3.0))


async def test_redis_killed_and_restarted_mid_burst(gateways: list[GatewayProcess],
                                                    chaos_redis: RedisServer,
                                                    backend: Backend) -> None:
    """SIGKILL (every key lost), restarted on the same port 1.5 s later."""
    await chaos_burst(backend, gateways, "redis killed, restarted after 1.5s",
                      lambda: kill_and_restart(chaos_redis, after_s=0.3, down_s=1.5))


async def test_redis_answering_slowly(gateways: list[GatewayProcess], relay: DelayRelay,
                                      backend: Backend) -> None:
    """Every reply from Redis held 0.25 s by the relay during the burst."""
    async def slow() -> None:
        relay.delay_s = 0.25
        try:
            await asyncio.sleep(4.0)
        finally:
            relay.delay_s = 0.0

    await chaos_burst(backend, gateways, "redis replies delayed 0.25s", slow)


async def test_cpu_saturated(gateways: list[GatewayProcess], backend: Backend) -> None:
    """Two busy processes per core's worth of work (bounded, killed by pid) during the
    burst."""
    with busy_cpu(processes=3, limit_s=60):
        await chaos_burst(backend, gateways, "CPU saturated by 3 busy processes",
                          lambda: asyncio.sleep(0))
