"""Unit tests for gateway.singleflight: one execution per key, shared results and errors."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable

import pytest

from gateway.singleflight import SingleFlight


class Work:
    """A unit of work that counts its executions and finishes when told to."""

    def __init__(self, result: object = "result", error: BaseException | None = None) -> None:
        self.result = result
        self.error = error
        self.runs: Counter[str] = Counter()
        self.release = asyncio.Event()
        self.started = asyncio.Event()

    def for_key(self, key: str) -> Callable[[], Awaitable[object]]:
        async def run() -> object:
            self.runs[key] += 1
            self.started.set()
            await self.release.wait()
            if self.error is not None:
                raise self.error
            return f"{self.result}:{key}"

        return run


async def _settle() -> None:
    """Let every ready task run until it blocks."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_concurrent_calls_with_one_key_run_once() -> None:
    flight: SingleFlight[str, object] = SingleFlight()
    work = Work()
    tasks = [asyncio.create_task(flight.run("k", work.for_key("k"))) for _ in range(50)]
    await _settle()
    assert len(flight) == 1
    work.release.set()
    results = await asyncio.gather(*tasks)
    assert work.runs == {"k": 1}
    assert {value for value, _ in results} == {"result:k"}
    merged = [m for _, m in results]
    assert merged.count(False) == 1  # the leader
    assert merged.count(True) == 49  # everyone else joined its flight


async def test_distinct_keys_run_separately() -> None:
    flight: SingleFlight[str, object] = SingleFlight()
    work = Work()
    keys = ["a", "b", "c"]
    tasks = [asyncio.create_task(flight.run(k, work.for_key(k))) for k in keys for _ in range(4)]
    await _settle()
    assert len(flight) == 3
    work.release.set()
    results = await asyncio.gather(*tasks)
    assert work.runs == {"a": 1, "b": 1, "c": 1}
    expected = sorted(f"result:{k}" for k in keys for _ in range(4))
    assert sorted(str(value) for value, _ in results) == expected
    assert [m for _, m in results].count(False) == 3


async def test_failing_leader_gives_every_follower_the_same_exception() -> None:
    flight: SingleFlight[str, object] = SingleFlight()
    boom = RuntimeError("backend down")
    work = Work(error=boom)
    tasks = [asyncio.create_task(flight.run("k", work.for_key("k"))) for _ in range(10)]
    await _settle()
    work.release.set()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    assert work.runs == {"k": 1}
    assert all(outcome is boom for outcome in outcomes)
    assert len(flight) == 0


async def test_failure_is_not_remembered() -> None:
    flight: SingleFlight[str, object] = SingleFlight()
    calls = 0

    async def flaky() -> object:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError("first try fails")
        return "ok"

    with pytest.raises(OSError):
        await flight.run("k", flaky)
    assert await flight.run("k", flaky) == ("ok", False)
    assert calls == 2


async def test_cancelled_leader_does_not_strand_followers() -> None:
    flight: SingleFlight[str, object] = SingleFlight()
    work = Work()
    leader = asyncio.create_task(flight.run("k", work.for_key("k")))
    await work.started.wait()
    followers = [asyncio.create_task(flight.run("k", work.for_key("k"))) for _ in range(5)]
    await _settle()
    leader.cancel()  # the leader's client went away
    await _settle()
    assert leader.cancelled()
    work.release.set()
    results = await asyncio.wait_for(asyncio.gather(*followers), timeout=2)
    assert results == [("result:k", True)] * 5
    assert work.runs == {"k": 1}
    assert len(flight) == 0


async def test_cancelled_follower_does_not_affect_the_others() -> None:
    flight: SingleFlight[str, object] = SingleFlight()
    work = Work()
    leader = asyncio.create_task(flight.run("k", work.for_key("k")))
    await work.started.wait()
    quitter = asyncio.create_task(flight.run("k", work.for_key("k")))
    stayer = asyncio.create_task(flight.run("k", work.for_key("k")))
    await _settle()
    quitter.cancel()
    await _settle()
    work.release.set()
    assert await asyncio.wait_for(leader, timeout=2) == ("result:k", False)
    assert await asyncio.wait_for(stayer, timeout=2) == ("result:k", True)
    assert quitter.cancelled()
    assert work.runs == {"k": 1}


async def test_every_caller_cancelled_still_finishes_the_work_and_forgets_the_key() -> None:
    flight: SingleFlight[str, object] = SingleFlight()
    work = Work()
    callers = [asyncio.create_task(flight.run("k", work.for_key("k"))) for _ in range(3)]
    await work.started.wait()
    for caller in callers:
        caller.cancel()
    await _settle()
    work.release.set()
    await _settle()
    assert len(flight) == 0
    # A new call starts a new flight rather than joining a dead one.
    work.release = asyncio.Event()
    work.release.set()
    assert await asyncio.wait_for(flight.run("k", work.for_key("k")), timeout=2) == (
        "result:k", False)
    assert work.runs == {"k": 2}


async def test_key_is_forgotten_after_completion() -> None:
    flight: SingleFlight[str, object] = SingleFlight()
    runs = 0

    async def once() -> object:
        nonlocal runs
        runs += 1
        return runs

    assert await flight.run("k", once) == (1, False)
    assert len(flight) == 0
    assert await flight.run("k", once) == (2, False)
    assert len(flight) == 0
    assert runs == 2
