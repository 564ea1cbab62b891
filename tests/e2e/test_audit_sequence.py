"""The audit stream of one whole session, event by event (docs/audit.md): a failed login, a
login, a request, a refresh, a logout and the dead session's next request."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Backend, RunningGateway, StartGateway
from tests.helpers.replies import cookie_value, cookieless_client, fp, set_cookies

ROOT = Path(__file__).resolve().parents[2]
COMMON = ("event", "timestamp", "request_id", "client_ip", "method", "path", "outcome")
WRONG_PASSWORD = "not-the-password-7f3a"


def _exp(token: str) -> float:
    payload = token.split(".")[1]
    padded = payload + "=" * (-len(payload) % 4)
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(padded))
    return float(claims["exp"])


def _pick(event: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {key: event.get(key) for key in keys}


async def _request(gateway: RunningGateway, method: str, path: str, request_id: str,
                   **kwargs: Any) -> httpx.Response:
    async with cookieless_client(gateway.url) as client:
        headers = {"accept": "application/json", "x-request-id": request_id,
                   **kwargs.pop("headers", {})}
        return await client.request(method, path, headers=headers, **kwargs)


async def run_session(start: StartGateway, backend: Backend) -> tuple[RunningGateway, str, str]:
    """The scenario; returns the gateway and the two access tokens it handed out."""
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
        first = cookie_value(set_cookies(login)["userToken"])
        items = await _request(gateway, "GET", "/api/items", "r3-items",
                               headers={"cookie": f"userToken={first}"})
        assert items.status_code == 200
        while time.time() <= _exp(first) + 0.2:  # until the backend calls it expired
            await asyncio.sleep(0.1)
        refreshed = await _request(gateway, "GET", "/api/items", "r4-refresh",
                                   headers={"cookie": f"userToken={first}"})
        assert refreshed.status_code == 200
        second = cookie_value(set_cookies(refreshed)["userToken"])
        logout = await _request(gateway, "POST", "/auth/logout", "r5-logout",
                                headers={"cookie": f"userToken={second}"})
        assert logout.status_code == 204
        after = await _request(gateway, "GET", "/api/admin/stats", "r6-after",
                               headers={"cookie": f"userToken={second}"})
        assert after.status_code == 401
    finally:
        backend.configure(access_ttl_s=900)
    return gateway, first, second


async def test_login_refresh_logout_sequence(start: StartGateway, backend: Backend) -> None:
    gateway, first, second = await run_session(start, backend)
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


def _jq_lines() -> list[str]:
    text = (ROOT / "docs" / "audit.md").read_text(encoding="utf-8")
    return [block.strip() for block in re.findall(r"```sh\n(jq .*?)```", text, re.S)]


@pytest.mark.skipif(shutil.which("jq") is None, reason="jq is not installed (apt-get install jq)")
async def test_the_documented_jq_lines_answer_their_questions(
        start: StartGateway, backend: Backend, tmp_path: Path) -> None:
    """docs/audit.md's jq one-liners, run as written on the audit file of the scenario."""
    gateway, _, _ = await run_session(start, backend)
    shutil.copy(gateway.audit_path, tmp_path / "audit.jsonl")
    who, per_minute = _jq_lines()
    day = gateway.events("auth.logout")[0]["timestamp"][:10]

    out = subprocess.run(["bash", "-c", who], cwd=tmp_path, capture_output=True, text=True,
                         timeout=30, check=True).stdout
    rows = [line.split("\t") for line in out.splitlines()]
    assert [(user, why) for _, user, why in rows] == [("1", "logout"), ("1", "refresh_rejected")]
    assert all(stamp.startswith(day) for stamp, _, _ in rows)

    out = subprocess.run(["bash", "-c", per_minute], cwd=tmp_path, capture_output=True,
                         text=True, timeout=30, check=True).stdout
    [line] = out.splitlines()
    count, minute, reason = line.split()
    assert (count, reason) == ("1", "rejected")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d", minute)
