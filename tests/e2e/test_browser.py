"""The demo app in a real browser: headless Chromium (Debian's package) through the gateway.

What ``gateway demo`` runs (tests/helpers/demo.py), with 4 s access tokens instead of 60 s so
that expiry is quick to reach. Each test saves screenshots under tests/e2e/artifacts/.
Skipped, saying why, where Chromium or Playwright is missing (.ci/run installs both).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import pytest_asyncio

from gateway.settings import AuthSettings
from tests.helpers.browser import ARTIFACTS, Chromium, missing_reason
from tests.helpers.demo import DemoStack, demo_stack

_MISSING = missing_reason()
pytestmark = pytest.mark.skipif(_MISSING is not None, reason=_MISSING or "")

if _MISSING is None:
    from playwright.async_api import Browser, BrowserContext, Page, async_playwright

ACCESS_TTL_S = 4.0
CACHE_TTL_S = AuthSettings().cache_ttl_s  # the demo's config keeps the default
DEMO = ("demo@example.com", "demo-password")
ADMIN = ("admin@example.com", "admin-password")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoStack]:
    with demo_stack(tmp_path_factory.mktemp("demo"), access_ttl_s=ACCESS_TTL_S) as running:
        yield running


@pytest_asyncio.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    chromium = Chromium()
    try:
        endpoint = await asyncio.to_thread(chromium.start)
        async with async_playwright() as playwright:
            connected = await playwright.chromium.connect_over_cdp(endpoint, timeout=60_000)
            try:
                yield connected
            finally:
                await connected.close()
    finally:
        await asyncio.to_thread(chromium.stop)


@pytest_asyncio.fixture
async def context(browser: Browser) -> AsyncIterator[BrowserContext]:
    """A fresh cookie jar: one user's browser, any number of tabs."""
    fresh = await browser.new_context(viewport={"width": 1100, "height": 760})
    fresh.set_default_timeout(30_000)
    try:
        yield fresh
    finally:
        await fresh.close()


async def _shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


async def _log_in(page: Page, stack: DemoStack, first: str = "/dashboard",
                  account: tuple[str, str] = DEMO, shot: str = "") -> None:
    """Ask for `first`, get sent to the login form, fill it in, land on `first`."""
    await page.goto(stack.url + first)
    await page.wait_for_url(f"{stack.url}/login?next={first}")
    await page.fill("input[name=email]", account[0])
    await page.fill("input[name=password]", account[1])
    if shot:
        await _shot(page, shot)
    await page.click("#login button[type=submit]")
    await page.wait_for_url(stack.url + first)


async def _text(page: Page, selector: str) -> str:
    return (await page.text_content(selector) or "").strip()


async def _token_exp(page: Page) -> float:
    """The access token's ``exp`` as the dashboard got it from /api/demo/session."""
    await page.wait_for_function("document.getElementById('token-exp').dataset.exp !== ''")
    return float(await page.get_attribute("#token-exp", "data-exp") or "0")


async def _until_expired(exp: float) -> None:
    """Sleep until the gateway must ask the backend about a token that expires at `exp`
    (the backend's clock is this machine's here): past `exp` and past the validation cache
    (``auth.cache_ttl_s``), which may still hold a check made just before `exp`."""
    await asyncio.sleep(max(0.0, exp - time.time()) + CACHE_TTL_S + 1.0)


async def _stats(stack: DemoStack) -> dict[str, Any]:
    return await asyncio.to_thread(stack.backend.stats)


async def test_login_form_lands_on_the_page_first_asked_for(
        context: BrowserContext, stack: DemoStack) -> None:
    page = await context.new_page()
    await _log_in(page, stack, first="/three-tabs", shot="login")
    assert await _text(page, "#name") == "Dana Demo"
    assert await _text(page, "#signed-in") == "Dana Demo"
    accounts = await _text(page, "header") + await page.content()
    assert "Log out" in accounts


async def test_session_cookies_are_out_of_reach_of_page_scripts(
        context: BrowserContext, stack: DemoStack) -> None:
    page = await context.new_page()
    await _log_in(page, stack)
    cookies = {cookie["name"]: cookie for cookie in await context.cookies()}
    assert {"userToken", "refreshToken"} <= set(cookies)
    assert all(cookie["httpOnly"] for cookie in cookies.values())
    assert await page.evaluate("document.cookie") == ""
    # What the page's own API gives a script: a fingerprint, never the token.
    session = await page.evaluate("fetch('/api/demo/session').then(r => r.text())")
    assert cookies["userToken"]["value"] not in session
    assert '"token_fp"' in session
    # The probes that reflect request headers (Authorization too) are off in the demo.
    assert await page.evaluate("fetch('/api/echo').then(r => r.status)") == 404


async def test_dashboard_keeps_working_when_the_token_expires(
        context: BrowserContext, stack: DemoStack) -> None:
    page = await context.new_page()
    await _log_in(page, stack)
    assert await _text(page, "#email") == "demo@example.com"
    assert "user" in await _text(page, "#roles")
    exp = await _token_exp(page)
    first_fp = await _text(page, "#token-fp")
    # At zero the page asks again: the gateway refreshes and the page shows the new token.
    await page.wait_for_function(
        f"document.getElementById('token-exp').dataset.exp > {exp}", timeout=30_000)
    assert await _text(page, "#token-fp") != first_fp
    assert page.url == stack.url + "/dashboard"
    assert await _text(page, "#name") == "Dana Demo"
    # The live log shows what the gateway did: a refresh, and validations from its cache.
    await page.wait_for_selector("#activity li[data-event='auth.refreshed']", timeout=30_000)
    log = await _text(page, "#activity")
    assert "refreshed by the backend" in log and "validated" in log
    await _shot(page, "dashboard")


async def test_three_tabs_reloaded_at_expiry_share_one_refresh(
        context: BrowserContext, stack: DemoStack) -> None:
    first = await context.new_page()
    await _log_in(first, stack, first="/three-tabs")
    tabs = [first, await context.new_page(), await context.new_page()]
    for tab in tabs[1:]:
        await tab.goto(stack.url + "/three-tabs")
    for tab in tabs:
        await tab.wait_for_function("document.body.dataset.exp !== undefined")
    exp = float(await first.evaluate("document.body.dataset.exp"))
    expired = {c["name"]: c["value"] for c in await context.cookies()}["userToken"]
    await _until_expired(exp)
    before = await _stats(stack)
    replies = await asyncio.gather(*(tab.reload() for tab in tabs))
    after = await _stats(stack)
    assert [reply.status for reply in replies if reply is not None] == [200, 200, 200]
    for tab in tabs:
        assert tab.url == stack.url + "/three-tabs"
        assert await _text(tab, "#name") == "Dana Demo"
    assert after["refresh_ok"] - before["refresh_ok"] == 1
    assert after["calls"]["refresh"] - before["calls"]["refresh"] == 1
    assert after["refresh_rejected"] == before["refresh_rejected"]
    # Rotating + blacklisting: the credential that one refresh used is spent at the backend.
    config = await asyncio.to_thread(httpx.get, stack.backend.control_url + "/__demo/config")
    assert config.json()["rotate_refresh"] is True
    reuse = await asyncio.to_thread(httpx.post, stack.backend.url + "/auth/refresh",
                                    headers={"authorization": f"Bearer {expired}"})
    assert reuse.status_code == 401
    # Each tab was rendered after that one refresh and shows the backend's count.
    for tab in tabs:
        assert await _text(tab, "#refresh-count") == str(after["refresh_ok"])
    await _shot(tabs[2], "three-tabs-reloaded")


async def test_three_tabs_page_fires_three_requests_at_expiry(
        context: BrowserContext, stack: DemoStack) -> None:
    page = await context.new_page()
    await _log_in(page, stack, first="/three-tabs")
    await page.click("#fire")
    await page.wait_for_function(
        "document.getElementById('verdict').dataset.refreshes !== undefined", timeout=30_000)
    assert await page.get_attribute("#verdict", "data-refreshes") == "1"
    statuses = await page.eval_on_selector_all(
        "#results tbody td:nth-child(2)", "cells => cells.map((cell) => cell.textContent)")
    assert statuses == ["200", "200", "200"]
    await _shot(page, "three-tabs-button")


async def test_logout_in_one_tab_logs_the_others_out(
        context: BrowserContext, stack: DemoStack) -> None:
    first = await context.new_page()
    await _log_in(first, stack)
    second, third = await context.new_page(), await context.new_page()
    await second.goto(stack.url + "/dashboard")
    await third.goto(stack.url + "/three-tabs")
    logouts = (await _stats(stack))["calls"]["logout"]
    await first.click("#logout")
    await first.wait_for_url(stack.url + "/")
    assert "Not signed in" in await _text(first, "#who")
    assert (await _stats(stack))["calls"]["logout"] == logouts + 1  # revoked at the backend
    # The dashboard's next request (its activity poll) finds no session: off to the login.
    await second.wait_for_url(f"{stack.url}/login?next=/dashboard", timeout=30_000)
    reply = await third.reload()
    assert reply is not None
    assert third.url == f"{stack.url}/login?next=/three-tabs"
    await _shot(third, "logged-out")


async def test_admin_page_is_a_friendly_403_and_the_session_survives(
        context: BrowserContext, stack: DemoStack) -> None:
    page = await context.new_page()
    await _log_in(page, stack)
    reply = await page.goto(stack.url + "/admin")
    assert reply is not None and reply.status == 403
    assert await _text(page, "#forbidden") == "This page is for admins"
    await page.wait_for_function(
        "document.getElementById('gateway-answer').textContent.startsWith('403')")
    assert '"error":"forbidden"' in await _text(page, "#gateway-answer")
    await _shot(page, "admin-403")
    again = await page.goto(stack.url + "/dashboard")
    assert again is not None and again.status == 200
    assert await _text(page, "#name") == "Dana Demo"


async def test_admin_page_for_an_admin(context: BrowserContext, stack: DemoStack) -> None:
    page = await context.new_page()
    await _log_in(page, stack, first="/admin", account=ADMIN)
    await page.wait_for_function("document.getElementById('stats').textContent.includes('{')")
    assert '"users": 2' in await _text(page, "#stats")


async def test_websocket_panel_echoes(context: BrowserContext, stack: DemoStack) -> None:
    page = await context.new_page()
    await _log_in(page, stack)
    await page.wait_for_selector("#ws-log li:has-text('Dana Demo')")
    await page.fill("#ws-input", "ping from chromium")
    await page.click("#ws-form button")
    await page.wait_for_selector("#ws-log li:has-text('← ping from chromium')")
    await _shot(page, "websocket")


async def test_guest_page_gets_a_guest_token(context: BrowserContext, stack: DemoStack) -> None:
    page = await context.new_page()
    reply = await page.goto(stack.url + "/guest")
    assert reply is not None and reply.status == 200
    assert await _text(page, "#token-type") == "guest"
    assert (await _text(page, "#guest-id")).startswith("guest:")
    cookies = {cookie["name"]: cookie for cookie in await context.cookies()}
    assert cookies["guestToken"]["httpOnly"]
    await _shot(page, "guest")

