"""What one cached token costs: bytes per validation-cache entry, and µs per cache hit.

    .venv/bin/python benchmarks/cache_memory.py [--tokens 100000] [--source DIR]

Memory: a ``MemoryStore`` as ``gateway serve`` builds it (``auth.cache_max_entries``), filled
through a real ``Validator`` with ``--tokens`` distinct tokens whose backend answer is the one
``bench_backend.py`` gives (``{"id": "m-<n>", "roles": ["user"]}``), ``cache_ttl_s = 3600``.
``tracemalloc`` counts every byte Python allocated for them (store, keys, values, the
validator's own structures), divided by the number of tokens; the process's RSS growth over
the same fill, done first without tracemalloc, is printed too (it includes the allocator's
slack). The backend is an in-process stand-in that
answers at once: what is measured is what the gateway keeps, not a socket.

Hit: ``Validator.validate`` for one cached token, CPU per call (best of 5 rounds of 50,000),
the whole call including the store lookup. ``--source`` measures another checkout's gateway
package (``git archive <rev> gateway | tar -x -C /tmp/old``) for a before/after.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


class _Reply:
    """What the validator reads of an ``AuthClient`` reply."""

    def __init__(self, body: Any) -> None:
        self.status = 200
        self.ok = True
        self.body = body


class _Backend:
    """The validate endpoint of ``bench_backend.py``, answered in-process."""

    def __init__(self) -> None:
        self.calls = 0

    async def call(self, method: str, path: str, *, headers: dict[str, str],
                   endpoint: str) -> _Reply:
        self.calls += 1
        token = headers["authorization"].split(" ", 1)[1]
        return _Reply({"data": {"id": token[4:], "roles": ["user"]}})


def _rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    import resource

    return pages * resource.getpagesize() / 1e6


async def _fill(validator: Any, found_token: Any, first: int, tokens: int) -> None:
    for n in range(first, first + tokens):
        result = await validator.validate(found_token(f"tok-m-{n}", "header"))
        assert result.identity is not None and result.cache == "miss"


async def _hits(validator: Any, token: Any, rounds: int, n: int) -> float:
    first = await validator.validate(token)
    assert first.identity is not None
    best = float("inf")
    for _ in range(rounds):
        start = time.process_time()
        for _ in range(n):
            await validator.validate(token)
        best = min(best, (time.process_time() - start) / n * 1e6)
    again = await validator.validate(token)
    assert again.cache == "hit" and again.identity == first.identity
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=100_000)
    parser.add_argument("--source", type=Path)
    parser.add_argument("--hits", type=int, default=50_000, help="cache hits per round")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    if args.source is not None:
        sys.path.insert(0, str(args.source.resolve()))
    from gateway.settings import settings_from_mapping
    from gateway.state import MemoryStore
    from gateway.tokens import FoundToken
    from gateway.validation import Validator

    settings = settings_from_mapping({
        "upstream": {"url": "http://127.0.0.1:9"},
        "auth": {"cache_ttl_s": 3600, "cache_max_entries": max(100_000, args.tokens)}})
    backend = _Backend()

    async def run() -> None:
        # RSS first, without tracemalloc (which costs memory of its own per allocation).
        store = MemoryStore(settings.auth.cache_max_entries)
        validator = Validator(settings, backend, store)  # type: ignore[arg-type]
        await _fill(validator, FoundToken, 0, 1000)  # warm: first allocations, interned strings
        gc.collect()
        rss_before = _rss_mb()
        await _fill(validator, FoundToken, 1000, args.tokens)
        gc.collect()
        rss_after = _rss_mb()
        del store, validator
        gc.collect()

        store = MemoryStore(settings.auth.cache_max_entries)
        validator = Validator(settings, backend, store)  # type: ignore[arg-type]
        await _fill(validator, FoundToken, 0, 1000)
        gc.collect()
        calls = backend.calls
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        await _fill(validator, FoundToken, 1000, args.tokens)
        gc.collect()
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
        grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
        held = validator.cache_size
        print(f"tokens validated   {args.tokens:,} ({backend.calls - calls:,} backend calls), "
              f"{held:,} entries held")
        print(f"tracemalloc        {grown / 1e6:.1f} MB, {grown / args.tokens:.0f} B per token")
        print(f"RSS                {rss_before:.1f} MB -> {rss_after:.1f} MB "
              f"(+{(rss_after - rss_before) * 1e6 / args.tokens:.0f} B per token)")
        for stat in after.compare_to(before, "lineno")[:8]:
            print(f"    {stat.size_diff / args.tokens:6.0f} B/token  {stat.traceback}")
        hit = await _hits(validator, FoundToken("tok-m-7", "header"), 5, args.hits)
        print(f"cache hit          {hit:.2f} us per Validator.validate (best of 5 x "
              f"{args.hits:,})")

    asyncio.run(run())


if __name__ == "__main__":
    main()
