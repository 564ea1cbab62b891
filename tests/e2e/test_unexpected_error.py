"""An error nobody planned for still gets an answer: JSON 500 with the request's
``x-request-id``, logged by where it happened and never with its message (which could quote a
credential), on the proxy path and on forward-auth (gateway/handler.py, ``Reply``)."""

from __future__ import annotations

import logging
from typing import Any, NoReturn

import httpx
import pytest

from tests.conftest import MakeGateway

SECRET = "eyJsecret.token-value.in-the-message"


def _explode(*args: Any, **kwargs: Any) -> NoReturn:
    raise RuntimeError(f"bad token {SECRET}")


async def test_an_unexpected_error_is_a_json_500_with_the_request_id(
        make_gateway: MakeGateway, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    gateway = make_gateway()
    monkeypatch.setattr(gateway.app.http._router, "match", _explode)
    caplog.set_level(logging.ERROR, logger="gateway")
    async with gateway.client(timeout=30) as client:
        reply = await client.get("/api/items", headers={"x-request-id": "req-42",
                                                         "authorization": f"Bearer {SECRET}"})
        head = await client.head("/api/items")
    assert reply.status_code == 500
    assert reply.headers["content-type"] == "application/json"
    assert reply.headers["x-request-id"] == "req-42"
    assert reply.json()["error"] == "internal_error"
    assert SECRET not in reply.text
    assert head.status_code == 500 and head.content == b""
    assert head.headers["x-request-id"]
    logged = [r.getMessage() for r in caplog.records if r.name == "gateway"]
    assert any("RuntimeError" in m and "req-42" in m and "handler.py" in m for m in logged), logged
    assert not any(SECRET in m for m in logged)


async def test_the_gateway_keeps_serving_after_an_unexpected_error(
        make_gateway: MakeGateway, monkeypatch: pytest.MonkeyPatch) -> None:
    gateway = make_gateway('[[routes]]\nmatch = "/api/public/**"\naccess = "public"\n')
    router = gateway.app.http._router
    match = router.match
    async with gateway.client(timeout=30) as client:
        monkeypatch.setattr(router, "match", _explode)
        assert (await client.get("/api/public/hello")).status_code == 500
        monkeypatch.setattr(router, "match", match)
        assert (await client.get("/api/public/hello")).status_code == 200


async def test_forward_auth_answers_an_unexpected_error_as_json(
        make_gateway: MakeGateway, monkeypatch: pytest.MonkeyPatch) -> None:
    gateway = make_gateway('[forward_auth]\nenabled = true\ntrusted = ["127.0.0.1/32"]\n')
    assert gateway.app.forward_auth is not None
    monkeypatch.setattr(gateway.app.forward_auth._router, "match", _explode)
    reply = httpx.get(gateway.url + "/__gateway/auth",
                      headers={"x-original-uri": "/api/items", "x-original-method": "GET",
                               "x-request-id": "fa-1"}, timeout=30)
    assert reply.status_code == 500
    assert reply.headers["x-request-id"] == "fa-1"
    assert reply.json()["error"] == "internal_error"
