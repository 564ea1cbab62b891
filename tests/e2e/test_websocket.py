"""WebSocket over real sockets: the handshake is checked like a request, then relayed both
ways (docs/behaviour.md#websocket)."""

from __future__ import annotations

import json

import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.conftest import Backend, MakeGateway

ROUTES = """
[cookies]
secure = false

[[routes]]
match = "/ws/**"
access = "user"
"""


def ws_url(http_url: str, path: str = "/ws/echo") -> str:
    return "ws" + http_url.removeprefix("http") + path


async def test_valid_token_relays_text_binary_and_identity(make_gateway: MakeGateway,
                                                            backend: Backend) -> None:
    gateway = make_gateway(ROUTES)
    token = backend.token(user_id=1, ttl_s=600)
    async with websockets.connect(ws_url(gateway.url),
                                  additional_headers={"authorization": f"Bearer {token}"},
                                  subprotocols=["chat.v1", "chat.v2"]) as ws:
        assert ws.subprotocol == "chat.v1"
        hello = json.loads(await ws.recv())
        assert hello == {"user_id": "1", "token_type": "user", "authorization": f"Bearer {token}"}
        await ws.send("ping text")
        assert await ws.recv() == "ping text"
        await ws.send(b"\x00\x01binary")
        assert await ws.recv() == b"\x00\x01binary"
        assert ws.response.headers["x-request-id"]


async def test_upstream_close_code_reaches_the_client(make_gateway: MakeGateway,
                                                      backend: Backend) -> None:
    gateway = make_gateway(ROUTES)
    token = backend.token(user_id=1, ttl_s=600)
    async with websockets.connect(ws_url(gateway.url),
                                  additional_headers={"authorization": f"Bearer {token}"}) as ws:
        await ws.recv()
        await ws.send("close 4001")
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4001


async def test_handshake_without_token_gets_the_http_401(make_gateway: MakeGateway,
                                                         backend: Backend) -> None:
    gateway = make_gateway(ROUTES)
    with pytest.raises(InvalidStatus) as refused:
        async with websockets.connect(ws_url(gateway.url)):
            pass
    response = refused.value.response
    assert response.status_code == 401
    assert json.loads(response.body)["error"] == "unauthenticated"
    assert response.headers["x-request-id"]


async def test_handshake_with_expired_session_is_refreshed_and_sets_cookies(
        make_gateway: MakeGateway, backend: Backend) -> None:
    gateway = make_gateway(ROUTES)
    expired = backend.token(user_id=1, ttl_s=-5)  # inside clock skew: backend says 401
    before = backend.calls("refresh")
    async with websockets.connect(ws_url(gateway.url),
                                  additional_headers={"cookie": f"userToken={expired}"}) as ws:
        hello = json.loads(await ws.recv())
        cookies = ws.response.headers.get_all("set-cookie")
    assert backend.calls("refresh") == before + 1
    assert hello["user_id"] == "1"
    assert hello["authorization"] != f"Bearer {expired}"
    assert any(c.startswith("userToken=") and "Max-Age=0" not in c for c in cookies)


async def test_upstream_that_is_down_gives_502(make_gateway: MakeGateway, backend: Backend
                                               ) -> None:
    from tests.servers import free_port

    gateway = make_gateway(ROUTES.replace("[cookies]", f"""[auth]
url = "{backend.url}"

[cookies]"""), upstream=f"http://127.0.0.1:{free_port()}")
    token = backend.token(user_id=1, ttl_s=600)
    with pytest.raises(InvalidStatus) as refused:
        async with websockets.connect(ws_url(gateway.url),
                                      additional_headers={"authorization": f"Bearer {token}"}):
            pass
    assert refused.value.response.status_code == 502
