"""The gateway's own endpoints under ``server.reserved_prefix`` (CONTRACT.md §3.8)."""

from __future__ import annotations

import asyncio

from gateway.authclient import AuthClient
from gateway.metrics import Metrics
from gateway.responses import send_error, send_json
from gateway.state import Store
from gateway.types import Scope, Send


class Endpoints:
    def __init__(self, prefix: str, *, client: AuthClient, probe_path: str, store: Store,
                 metrics: Metrics) -> None:
        self.prefix = prefix
        self._prefix_slash = prefix + "/"
        self._client = client
        self._probe_path = probe_path
        self._store = store
        self._metrics = metrics

    def owns(self, path: str) -> bool:
        return path == self.prefix or path.startswith(self._prefix_slash)

    async def handle(self, scope: Scope, send: Send, path: str) -> None:
        name = path[len(self.prefix):]
        head = scope["method"] == "HEAD"
        if scope["method"] not in ("GET", "HEAD"):
            await send_error(send, 405, "method_not_allowed", "Only GET is supported here.",
                             [(b"allow", b"GET, HEAD")], head=head)
        elif name == "/health":
            await send_json(send, 200, {"status": "ok"}, head=head)
        elif name == "/ready":
            await self._ready(send, head)
        elif name == "/metrics":
            body = self._metrics.render()
            await send({"type": "http.response.start", "status": 200, "headers": [
                (b"content-type", self._metrics.content_type.encode("latin-1")),
                (b"content-length", str(len(body)).encode("latin-1")),
                (b"cache-control", b"no-store")]})
            await send({"type": "http.response.body", "body": b"" if head else body})
        else:
            await send_error(send, 404, "not_found", "No such gateway endpoint.", head=head)

    async def _ready(self, send: Send, head: bool) -> None:
        auth, state = await asyncio.gather(self._client.probe(self._probe_path),
                                           self._store.check())
        checks = {"auth": "ok" if auth else "unavailable",
                  "state": "ok" if state else self._store.state}  # suspect | degraded
        ready = auth and state
        await send_json(send, 200 if ready else 503,
                        {"status": "ready" if ready else "unavailable", "checks": checks},
                        head=head)
