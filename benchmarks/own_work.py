"""The gateway's own work per request, without the sockets: CPU microseconds in-process.

    .venv/bin/python benchmarks/own_work.py [--source DIR] [--requests 20000]

Builds the gateway app from a config (the one ``suite.py`` uses), then calls its HTTP handler
(inside the per-request record, timing and metrics of ``gateway/accesslog.py``) directly with an
ASGI scope, the way uvicorn would, but with a forwarder that answers at once
instead of calling the upstream: what is measured is everything the gateway does before and
around the upstream call (request id, path, route, token, cache lookup, identity headers, audit,
metrics, the response decoration). The first request's validation goes to a real backend
(``bench_backend.py``, started here); the rest are cache hits. CPU time (``process_time``) per
request, best of 5 rounds; ``--source`` measures another checkout's gateway package.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


async def _measure(app: Any, path: bytes, headers: list[tuple[bytes, bytes]], n: int
                   ) -> float:
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        return None

    async def forward(request: Any, receive: Any, send: Any, *, headers: Any,
                      extra_response_headers: Any = ()) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"),
                                *extra_response_headers]})
        await send({"type": "http.response.body", "body": b"{}"})

    def scope() -> dict[str, Any]:
        return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                "method": "GET", "scheme": "http", "path": path.decode(), "raw_path": path,
                "query_string": b"", "root_path": "", "headers": list(headers),
                "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8080)}

    from gateway.accesslog import observed

    handler = app.http

    async def handle(scope: Any, receive: Any, send: Any) -> None:
        await handler(scope, receive, send, forward)

    # As the app runs it: the request's record, timing and metrics around the handler.
    serve = observed(handle, app.metrics, app.access_log)
    await serve(scope(), receive, send)  # warm: the one validation
    best = float("inf")
    for _ in range(5):
        start = time.process_time()
        for _ in range(n):
            await serve(scope(), receive, send)
        best = min(best, (time.process_time() - start) / n * 1e6)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", type=Path)
    parser.add_argument("--requests", type=int, default=5000)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    if args.source is not None:
        sys.path.insert(0, str(args.source.resolve()))
    # gateway first: suite.py puts this checkout at the front of sys.path
    from gateway.app import create_app
    from gateway.settings import load_settings

    sys.path.insert(1, str(ROOT / "benchmarks"))
    from suite import GUEST_SECRET, _gateway_conf, _uvicorn

    from tests.servers import free_port

    os.environ["GATEWAY_GUEST_SECRET"] = GUEST_SECRET
    tmp = Path(tempfile.mkdtemp(prefix="gw-own-"))
    backend_port = free_port()
    backend = _uvicorn("benchmarks.bench_backend:app", backend_port)
    backend.start()
    import gateway

    print(f"gateway package: {Path(gateway.__file__).parent}")
    try:
        # a long cache: every measured request is a hit, as in the suite's "cached" rows
        app = create_app(load_settings(_gateway_conf(tmp, "own", backend_port,
                                                     cache_ttl_s=3600)))

        async def run() -> None:
            await app.startup()
            try:
                common = [(b"host", b"gw"), (b"user-agent", b"wrk"), (b"accept", b"*/*")]
                user = await _measure(app, b"/api/items",
                                      [*common, (b"authorization", b"Bearer tok-cached-0001")],
                                      args.requests)
                public = await _measure(app, b"/public/items", common, args.requests)
                print(f"user route, cached token: {user:6.1f} us CPU per request")
                print(f"public route, no token:   {public:6.1f} us CPU per request")
            finally:
                await app.shutdown()

        asyncio.run(run())
    finally:
        backend.stop()


if __name__ == "__main__":
    main()
