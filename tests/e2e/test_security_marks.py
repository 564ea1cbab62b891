"""Security marks (guest marks, grace entries, remembered rejections) cannot be evicted by
cache traffic: each kind of entry has its own bound (docs/shared-state.md). Regression test
over real sockets for a flood of junk refreshes and fresh tokens with
``cache_max_entries = 200``, against an auth backend whose ``/auth/me`` describes a guest
exactly like a user (no ``type``, no ``guest:`` id): only the gateway's guest mark tells them
apart."""

from __future__ import annotations

import asyncio
import json
import secrets
import tomllib
from typing import Any

import httpx

from tests.conftest import PRESETS, MakeGateway, merge, to_toml
from tests.servers import serving


def opaque_auth_app() -> Any:
    """Guest tokens from ``POST /auth/guest``; ``/auth/me`` knows guests and ``user-*``
    tokens, both as plain user objects; every refresh is refused; anything else is the app
    (200)."""
    guests: set[str] = set()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        headers = dict(scope["headers"])
        token = headers.get(b"authorization", b"").decode().removeprefix("Bearer ")
        status, body = 200, {"ok": True}
        if scope["path"] == "/auth/guest":
            minted = secrets.token_urlsafe(24)
            guests.add(minted)
            body = {"success": True, "data": {"accessToken": minted}}
        elif scope["path"] == "/auth/me":
            if token in guests or token.startswith("user-"):
                body = {"success": True, "data": {"id": 7, "roles": []}}
            else:
                status, body = 401, {"success": False}
        elif scope["path"] == "/auth/refresh":
            status, body = 401, {"success": False}
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": json.dumps(body).encode()})

    return app


async def test_junk_refreshes_do_not_evict_a_guest_mark(make_gateway: MakeGateway) -> None:
    with serving(opaque_auth_app()) as auth:
        data = tomllib.loads((PRESETS / "next-api-layer.toml").read_text())
        merge(data, {"upstream": {"url": auth.url}, "cookies": {"secure": False},
                     "auth": {"retry_backoff_s": 0.01, "cache_max_entries": 200}})
        data["routes"] = [{"match": "/api/private/**", "access": "user"},
                          {"match": "/api/public/**", "access": "guest"}, *data["routes"]]
        gateway = make_gateway(to_toml(data))
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
            issued = await client.get("/api/public/page")
            assert issued.status_code == 200, issued.text
            guest = issued.cookies["guestToken"]
            client.cookies.clear()

            async def send(token: str) -> int:
                answer = await client.get("/api/private/data",
                                          headers={"authorization": f"Bearer {token}"})
                return answer.status_code

            statuses: list[int] = []
            for batch in range(8):  # 400 junk credentials, each refreshed and refused
                statuses += await asyncio.gather(
                    *(send(f"junk-{batch}-{i}-{secrets.token_hex(4)}") for i in range(50)))
            assert statuses == [401] * 400
            # and 400 fresh valid tokens through the validation cache
            users = [await send(f"user-{i}") for i in range(400)]
            assert users == [200] * 400

            answer = await client.get("/api/private/data",
                                      headers={"authorization": f"Bearer {guest}"})
        assert answer.status_code in (401, 403), answer.text
        denied = [e for e in gateway.events("auth.denied") if e["reason"] == "guest_token"]
        assert denied, gateway.events("auth.denied")[-3:]
        validated = gateway.events("auth.validated")[-1]
        assert validated["token_type"] == "guest", validated
