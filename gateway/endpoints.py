"""The gateway's own endpoints under ``server.reserved_prefix`` (CONTRACT.md §3.8)."""

from __future__ import annotations

from gateway.responses import send_error, send_json
from gateway.types import Headers, Scope, Send


class Endpoints:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self._prefix_slash = prefix + "/"

    def owns(self, path: str) -> bool:
        return path == self.prefix or path.startswith(self._prefix_slash)

    async def handle(self, scope: Scope, send: Send, path: str, headers: Headers = ()) -> None:
        name = path[len(self.prefix):]
        head = scope["method"] == "HEAD"
        if scope["method"] not in ("GET", "HEAD"):
            await send_error(send, 405, "method_not_allowed", "Only GET is supported here.",
                             [*headers, (b"allow", b"GET, HEAD")], head=head)
        elif name == "/health":
            await send_json(send, 200, {"status": "ok"}, headers, head=head)
        else:
            await send_error(send, 404, "not_found", "No such gateway endpoint.", headers,
                             head=head)
