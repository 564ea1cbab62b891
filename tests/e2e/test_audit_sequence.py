"""The audit stream of one whole session, event by event (docs/audit.md): a failed login, a
login, a request, a refresh, a logout and the dead session's next request."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any

import httpx

from tests.conftest import Backend, RunningGateway, StartGateway

COMMON = ("event", "timestamp", "request_id", "client_ip", "method", "path", "outcome")
WRONG_PASSWORD = "not-the-password-7f3a"


def fp(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:12]


def _cookie(response: httpx.Response, name: str) -> str:
    for header in response.headers.get_list("set-cookie"):
        if header.startswith(name + "="):
            return header.split(";", 1)[0].split("=", 1)[1]
    raise AssertionError(f"no {name} cookie")


def _exp(token: str) -> float:
    payload = token.split(".")[1]
    padded = payload + "=" * (-len(payload) % 4)
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(padded))
    return float(claims["exp"])


def _pick(event: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {key: event.get(key) for key in keys}


async def _request(gateway: RunningGateway, method: str, path: str, request_id: str,
                   **kwargs: Any) -> httpx.Response:
    jar = CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))
    async with httpx.AsyncClient(base_url=gateway.url, cookies=jar, timeout=20) as client:
        headers = {"accept": "application/json", "x-request-id": request_id,
                   **kwargs.pop("headers", {})}
        return await client.request(method, path, headers=headers, **kwargs)


async def test_login_refresh_logout_sequence(start: StartGateway, backend: Backend) -> None:
    gateway = start("next-api-layer", {
        # No cache and no clock skew: each step's validation is a visible event, and the
        # short-lived access token counts as expired as soon as the backend says so.
        "auth": {"cache_ttl_s": 0, "refresh": {"clock_skew_s": 0, "grace_s": 0,
                                                "proactive_s": 0}},
    })
    backend.configure(access_ttl_s=2)
    try:
        failed = await _request(gateway, "POST", "/auth/login", "r1-failed",
                                json={"email": "demo@example.com", "password": WRONG_PASSWORD})
        assert failed.status_code == 401
        login = await _request(gateway, "POST", "/auth/login", "r2-login",
                               json={"email": "demo@example.com", "password": "demo-password"})
        assert login.status_code == 200
        first = _cookie(login, "userToken")
        items = await _request(gateway, "GET", "/api/items", "r3-items",
                               headers={"cookie": f"userToken={first}"})
        assert items.status_code == 200
        while time.time() <= _exp(first) + 0.2:  # until the backend calls it expired
            await asyncio.sleep(0.1)
        refreshed = await _request(gateway, "GET", "/api/items", "r4-refresh",
                                   headers={"cookie": f"userToken={first}"})
        assert refreshed.status_code == 200
        second = _cookie(refreshed, "userToken")
        logout = await _request(gateway, "POST", "/auth/logout", "r5-logout",
                                headers={"cookie": f"userToken={second}"})
        assert logout.status_code == 204
        after = await _request(gateway, "GET", "/api/admin/stats", "r6-after",
                               headers={"cookie": f"userToken={second}"})
        assert after.status_code == 401
    finally:
        backend.configure(access_ttl_s=900)

    events = gateway.events()
    for event in events:
        assert set(COMMON) <= set(event), event
        assert event["client_ip"] == "127.0.0.1"
    assert [(e["request_id"], e["event"]) for e in events] == [
        ("r1-failed", "auth.login_failed"),
        ("r2-login", "auth.login"),
        ("r3-items", "auth.validated"),
        ("r4-refresh", "auth.validated"),
        ("r4-refresh", "auth.refreshed"),
        ("r5-logout", "auth.logout"),
        ("r6-after", "auth.validated"),
        ("r6-after", "auth.refresh_failed"),
        ("r6-after", "auth.session_cleared"),
        ("r6-after", "auth.denied"),
    ]
    by_step = iter(events)
    assert _pick(next(by_step), "method", "path", "outcome", "status", "user_id") == {
        "method": "POST", "path": "/auth/login", "outcome": "rejected", "status": 401,
        "user_id": None}
    assert _pick(next(by_step), "path", "outcome", "user_id", "token_fp") == {
        "path": "/auth/login", "outcome": "ok", "user_id": "1", "token_fp": fp(first)}
    assert _pick(next(by_step), "path", "outcome", "cache", "user_id", "token_fp") == {
        "path": "/api/items", "outcome": "valid", "cache": "miss", "user_id": "1",
        "token_fp": fp(first)}
    assert _pick(next(by_step), "outcome", "user_id", "token_fp") == {
        "outcome": "invalid", "user_id": None, "token_fp": fp(first)}
    assert _pick(next(by_step), "outcome", "user_id", "token_fp", "new_token_fp") == {
        "outcome": "refreshed", "user_id": "1", "token_fp": fp(first),
        "new_token_fp": fp(second)}
    assert _pick(next(by_step), "method", "path", "outcome", "revoked", "token_fp") == {
        "method": "POST", "path": "/auth/logout", "outcome": "ok", "revoked": "ok",
        "token_fp": fp(second)}
    assert _pick(next(by_step), "path", "outcome", "cache", "token_fp") == {
        "path": "/api/admin/stats", "outcome": "invalid", "cache": "miss",
        "token_fp": fp(second)}
    assert _pick(next(by_step), "outcome", "reason", "token_fp") == {
        "outcome": "rejected", "reason": "rejected", "token_fp": fp(second)}
    assert _pick(next(by_step), "outcome", "reason", "token_fp") == {
        "outcome": "cleared", "reason": "refresh_rejected", "token_fp": fp(second)}
    assert _pick(next(by_step), "outcome", "reason", "token_fp") == {
        "outcome": "unauthenticated", "reason": "session_expired", "token_fp": fp(second)}

    text = gateway.audit_path.read_text(encoding="utf-8")
    for secret in (WRONG_PASSWORD, "demo-password", first, second):
        assert secret not in text


async def test_login_failed_for_a_backend_error_and_an_unreachable_backend(
        start: StartGateway, backend: Backend) -> None:
    gateway = start("next-api-layer")
    backend.fault("login", 500, count=1)
    broken = await _request(gateway, "POST", "/auth/login", "r-500",
                            json={"email": "demo@example.com", "password": "demo-password"})
    assert broken.status_code == 500
    [event] = gateway.events("auth.login_failed")
    assert _pick(event, "request_id", "outcome", "status") == {
        "request_id": "r-500", "outcome": "error", "status": 500}
    assert not gateway.events("auth.login")
