"""The gateway's own endpoints under ``server.reserved_prefix``
(docs/behaviour.md#own-endpoints)."""

from __future__ import annotations

import asyncio

from gateway.authclient import AuthClient
from gateway.metrics import Metrics
from gateway.responses import send_error, send_json
from gateway.state import Store
from gateway.types import Scope, Send

# With an admin listener (server.admin_port) these are served there only; health stays on the
# main port too, for load balancers that probe the port they send traffic to.
_ADMIN_ONLY = frozenset({"/ready", "/metrics"})


def _local_port(scope: Scope) -> int | None:
    server = scope.get("server")
    return int(server[1]) if server and server[1] is not None else None


class Endpoints:
    def __init__(self, prefix: str, *, client: AuthClient, probe_path: str, store: Store,
                 metrics: Metrics, admin_port: int = 0) -> None:
        self.prefix = prefix
        self._prefix_slash = prefix + "/"
        self._admin_port = admin_port
        self._client = client
        self._probe_path = probe_path
        self._store = store
        self._metrics = metrics

    def _on_admin(self, scope: Scope) -> bool:
        return bool(self._admin_port) and _local_port(scope) == self._admin_port

    def owns(self, path: str, scope: Scope | None = None) -> bool:
        """Under the reserved prefix, or anything on the admin listener (never proxied)."""
        if scope is not None and self._on_admin(scope):
            return True
        return path == self.prefix or path.startswith(self._prefix_slash)

    async def handle(self, scope: Scope, send: Send, path: str) -> None:
        prefixed = path == self.prefix or path.startswith(self._prefix_slash)
        name = path[len(self.prefix):] if prefixed else ""
        if self._admin_port and name in _ADMIN_ONLY and not self._on_admin(scope):
            name = ""  # on the admin listener only
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
