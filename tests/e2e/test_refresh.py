"""Refresh on real sockets (docs/behaviour.md#refresh, docs/audit.md): the gateway,
configured from the bundled presets, in front of the reference backend (which rotates refresh
credentials and blacklists the used ones), for the three backend families:

* next-api-layer: the (expired) access token itself is the refresh credential;
* Django SimpleJWT: ``{"refresh": ...}`` body, rotated refresh token in the reply;
* Express: ``refreshToken`` cookie, rotated by the backend's own ``Set-Cookie``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.conftest import Backend, StartGateway
from tests.helpers.replies import (
    ACCESS,
    REFRESH,
    assert_cleared,
    assert_no_raw_tokens,
    assert_nothing_cleared,
    attributes,
    cookie_value,
    cookieless_client,
    fp,
    set_cookies,
    upstream_saw,
)
from tests.servers import free_port

CONCURRENCY = 50


# -- the three families --------------------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    preset: str
    refresh_key: str  # the backend's stats key of the refresh endpoint
    validate_key: str
    scheme: str  # what the upstream sees in Authorization
    refresh_token: bool  # a separate refresh token (else the access token is the credential)
    spa: bool  # the client sends the access token as a Bearer header, not in a cookie

    def __str__(self) -> str:
        return self.preset


NEXT = Family("next-api-layer", "refresh", "me", "Bearer", refresh_token=False, spa=False)
DJANGO = Family("django-simplejwt", "jwt_refresh", "users_me", "JWT", refresh_token=True,
                spa=False)
EXPRESS = Family("express", "refresh_token", "express_me", "Bearer", refresh_token=True,
                 spa=True)
FAMILIES = [NEXT, DJANGO, EXPRESS]


@dataclass(frozen=True)
class Creds:
    """What a client holds: the access token and, for some families, a refresh token."""

    access: str
    refresh: str | None
    spa: bool  # access token in Authorization: Bearer (else in the access cookie)

    def headers(self, *, spa: bool | None = None, **extra: str) -> dict[str, str]:
        headers: dict[str, str] = {}
        cookies: list[str] = []
        if self.spa if spa is None else spa:
            headers["authorization"] = f"Bearer {self.access}"
        else:
            cookies.append(f"{ACCESS}={self.access}")
        if self.refresh:
            cookies.append(f"{REFRESH}={self.refresh}")
        if cookies:
            headers["cookie"] = "; ".join(cookies)
        headers.update(extra)
        return headers


def session(backend: Backend, family: Family, *, access_ttl_s: float = -60,
            access_age_s: float = 0.0, refresh_ttl_s: float = 3600) -> Creds:
    """An access token (expired by default) plus, where the family has one, a refresh token."""
    access = backend.token(1, "access", access_ttl_s, access_age_s)
    refresh = backend.token(1, "refresh", refresh_ttl_s) if family.refresh_token else None
    return Creds(access, refresh, family.spa)


# -- reading answers -----------------------------------------------------------------------------


def delta(before: dict[str, Any], after: dict[str, Any], key: str) -> int:
    return int(after["calls"][key]) - int(before["calls"][key])


# -- 1. single flight ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("family", "expired_by"),
    [(NEXT, 60), (NEXT, 5), (DJANGO, 60), (EXPRESS, 60)],
    ids=["next-api-layer", "next-api-layer-within-skew", "django-simplejwt", "express"],
)
async def test_concurrent_expired_requests_share_one_refresh(
        start: StartGateway, backend: Backend, family: Family, expired_by: float) -> None:
    """50 requests holding one expired session: 1 backend refresh, 50 x 200, all forwarded
    with the new token. ``expired_by`` < clock_skew_s: the backend (not the gateway) says the
    token is expired, then the reactive refresh happens."""
    # A cache that outlives the test: the follow-up below must find the refreshed token in it
    # however long a loaded machine takes to check the 50 answers (2 s did not always do).
    gw = start(family.preset, {"auth": {"cache_ttl_s": 120}})
    creds = session(backend, family, access_ttl_s=-expired_by)
    before = backend.stats()

    def headers_for(i: int) -> dict[str, str]:
        # next-api-layer: half the tabs send the cookie, half an SPA's Bearer header; both
        # carry the same credential, so they still share one refresh.
        spa = (i % 2 == 1) if family is NEXT else None
        return creds.headers(spa=spa)

    async with cookieless_client(gw.url, connections=CONCURRENCY + 10) as c:
        responses = await asyncio.gather(
            *(c.get("/api/echo", headers=headers_for(i)) for i in range(CONCURRENCY)))
    after = backend.stats()

    assert [r.status_code for r in responses] == [200] * CONCURRENCY
    assert delta(before, after, family.refresh_key) == 1
    assert after["refresh_ok"] - before["refresh_ok"] == 1
    assert after["refresh_rejected"] == before["refresh_rejected"]

    new_access = {cookie_value(set_cookies(r)[ACCESS]) for r in responses}
    assert len(new_access) == 1
    (new,) = new_access
    assert new != creds.access
    rotated: set[str] = set()
    for i, response in enumerate(responses):
        assert_nothing_cleared(response)
        cookies = set_cookies(response)
        assert attributes(cookies[ACCESS])["max-age"] == str(
            gw.app.settings.cookies.access_max_age_s)
        assert "httponly" in attributes(cookies[ACCESS])
        seen = upstream_saw(response)
        assert seen["authorization"] == [f"{family.scheme} {new}"]
        assert seen["x-refreshed-token"] == [new]
        assert seen["x-auth-user-id"] == ["1"]
        sent_header = "authorization" in headers_for(i)
        assert response.headers.get_list("x-refreshed-token") == ([new] if sent_header else [])
        # The rotated refresh token: set by the gateway from the reply body (next-api-layer,
        # SimpleJWT) or the backend's own Set-Cookie relayed (Express).
        assert REFRESH in cookies, list(cookies.values())
        rotated.add(cookie_value(cookies[REFRESH]))
        if family is EXPRESS:
            assert cookies[REFRESH].endswith("; HttpOnly; Path=/; SameSite=Lax")
    assert len(rotated) == 1
    (new_refresh,) = rotated
    assert new_refresh and new_refresh != creds.refresh

    refreshed = gw.events("auth.refreshed")
    assert len(refreshed) == CONCURRENCY
    vias = [e["via"] for e in refreshed]
    assert vias.count("backend") == 1
    assert set(vias) <= {"backend", "merged", "grace"}
    assert {e["new_token_fp"] for e in refreshed} == {fp(new)}
    assert {e["token_fp"] for e in refreshed} == {fp(creds.refresh or creds.access)}
    assert not gw.events("auth.refresh_failed")
    assert not gw.events("auth.session_cleared")

    # The new session works on its own, without another refresh.
    again = Creds(new, new_refresh if family.refresh_token else None, family.spa)
    async with cookieless_client(gw.url, connections=10) as c:
        follow = await c.get("/api/echo", headers=again.headers())
    assert follow.status_code == 200
    assert follow.headers.get_list("set-cookie") == []
    assert upstream_saw(follow)["authorization"] == [f"{family.scheme} {new}"]
    # The refreshed token was put in the cache: no second refresh, no second validation.
    assert backend.calls(family.refresh_key) == after["calls"][family.refresh_key]
    assert backend.calls(family.validate_key) == after["calls"][family.validate_key]
    assert_no_raw_tokens(gw, creds.access, creds.refresh, new, new_refresh)


# -- 2. rotation grace -------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES, ids=str)
async def test_stale_tab_gets_grace_then_is_logged_out_after_the_window(
        start: StartGateway, backend: Backend, family: Family) -> None:
    gw = start(family.preset, {"auth": {"refresh": {"grace_s": 1}}})
    creds = session(backend, family)
    async with cookieless_client(gw.url, connections=10) as c:
        first = await c.get("/api/echo", headers=creds.headers())
        assert first.status_code == 200, first.text
        assert backend.calls(family.refresh_key) == 1
        new = cookie_value(set_cookies(first)[ACCESS])
        new_refresh = cookie_value(set_cookies(first)[REFRESH])

        # A tab that raced the rotation still presents the pre-rotation credential.
        stale = await c.get("/api/echo", headers=creds.headers())
        assert stale.status_code == 200, stale.text
        assert backend.calls(family.refresh_key) == 1  # no backend call
        assert cookie_value(set_cookies(stale)[ACCESS]) == new
        assert cookie_value(set_cookies(stale)[REFRESH]) == new_refresh
        assert upstream_saw(stale)["authorization"] == [f"{family.scheme} {new}"]
        assert upstream_saw(stale)["x-refreshed-token"] == [new]
        assert_nothing_cleared(stale)
        assert [e["via"] for e in gw.events("auth.refreshed")] == ["backend", "grace"]

        await asyncio.sleep(1.2)  # past grace_s
        rejected_before = backend.stats()["refresh_rejected"]
        api = await c.get("/api/echo", headers=creds.headers())
        assert api.status_code == 401, api.text
        assert api.headers["content-type"] == "application/json"
        assert api.json()["error"] == "unauthenticated"
        assert_cleared(api, ACCESS, REFRESH)
        assert backend.calls(family.refresh_key) == 2  # went to the backend, rejected
        assert backend.stats()["refresh_rejected"] == rejected_before + 1

        # A browser navigation on a user route with the same stale session: to the login page.
        page = await c.get("/dashboard",
                           headers=creds.headers(spa=False, accept="text/html,*/*;q=0.8"))
        assert page.status_code == 302, page.text
        location = urlsplit(page.headers["location"])
        assert location.path == "/login"
        assert parse_qs(location.query) == {"next": ["/dashboard"]}
        assert_cleared(page, ACCESS, REFRESH)

    failed = gw.events("auth.refresh_failed")
    assert [e["reason"] for e in failed] == ["rejected", "rejected"]
    cleared = gw.events("auth.session_cleared")
    assert len(cleared) == 2
    assert {e["path"] for e in cleared} == {"/api/echo", "/dashboard"}
    assert_no_raw_tokens(gw, creds.access, creds.refresh, new, new_refresh)


# -- 3. outages never log anyone out ---------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES, ids=str)
async def test_refresh_outage_is_503_with_cookies_untouched(
        start: StartGateway, backend: Backend, family: Family) -> None:
    gw = start(family.preset)
    retries = gw.app.settings.auth.retries
    creds = session(backend, family)
    backend.fault(family.refresh_key, 503, count=-1)
    async with cookieless_client(gw.url, connections=10) as c:
        down = await c.get("/api/echo", headers=creds.headers())
        assert down.status_code == 503, down.text
        assert down.headers.get("retry-after")
        assert down.headers.get_list("set-cookie") == []
        assert "x-refreshed-token" not in down.headers
        assert backend.calls(family.refresh_key) == 1 + retries
        failed = gw.events("auth.refresh_failed")
        assert [e["reason"] for e in failed] == ["backend_error"]
        assert not gw.events("auth.session_cleared")

        backend.reset()  # the backend is back: the same cookies still hold a session
        up = await c.get("/api/echo", headers=creds.headers())
    assert up.status_code == 200, up.text
    assert backend.calls(family.refresh_key) == 1
    new = cookie_value(set_cookies(up)[ACCESS])
    assert new != creds.access
    assert upstream_saw(up)["authorization"] == [f"{family.scheme} {new}"]
    assert_nothing_cleared(up)
    assert [e["via"] for e in gw.events("auth.refreshed")] == ["backend"]
    assert_no_raw_tokens(gw, creds.access, creds.refresh, new)


@pytest.mark.parametrize("family", FAMILIES, ids=str)
async def test_validate_outage_right_after_a_refresh_keeps_the_new_tokens(
        start: StartGateway, backend: Backend, family: Family) -> None:
    """The refresh succeeded (the backend rotated and blacklisted the old credential), then
    checking the new token hit an outage. The 503 must still hand over the new tokens, and
    the old ones keep working through the grace window: nobody is logged out."""
    gw = start(family.preset)
    retries = gw.app.settings.auth.retries
    creds = session(backend, family)  # expired: known locally, no validate call for it
    backend.fault(family.validate_key, 503, count=1 + retries)
    async with cookieless_client(gw.url, connections=10) as c:
        down = await c.get("/api/echo", headers=creds.headers())
        assert down.status_code == 503, down.text
        assert down.headers.get("retry-after")
        assert_nothing_cleared(down)
        cookies = set_cookies(down)
        new_access = cookie_value(cookies[ACCESS])
        assert new_access != creds.access
        new_refresh = cookie_value(cookies[REFRESH]) if REFRESH in cookies else creds.refresh
        if family.spa:
            assert down.headers.get_list("x-refreshed-token") == [new_access]
        unavailable = gw.events("auth.backend_unavailable")
        assert [e["token_fp"] for e in unavailable] == [fp(creds.access)]

        # The validate endpoint is back: the new tokens work, and so (inside the grace
        # window) does the stale tab that still holds the old ones.
        new = Creds(new_access, new_refresh, family.spa)
        fresh = await c.get("/api/echo", headers=new.headers())
        stale = await c.get("/api/echo", headers=creds.headers())
    assert fresh.status_code == 200, fresh.text
    assert upstream_saw(fresh)["authorization"] == [f"{family.scheme} {new_access}"]
    assert stale.status_code == 200, stale.text
    assert upstream_saw(stale)["authorization"] == [f"{family.scheme} {new_access}"]
    for answer in (fresh, stale):
        assert_nothing_cleared(answer)
    assert backend.calls(family.refresh_key) == 1
    assert not gw.events("auth.session_cleared")
    assert_no_raw_tokens(gw, creds.access, creds.refresh, new_access, new_refresh)


async def test_refresh_network_error_is_503_with_cookies_untouched(
        start: StartGateway, backend: Backend) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    gw = start(NEXT.preset, {"auth": {"url": closed}})
    creds = session(backend, NEXT)
    for spa in (False, True):
        async with cookieless_client(gw.url, connections=10) as c:
            response = await c.get("/api/echo", headers=creds.headers(spa=spa))
        assert response.status_code == 503, response.text
        assert response.headers.get("retry-after")
        assert response.headers.get_list("set-cookie") == []
        assert "x-refreshed-token" not in response.headers
    assert [e["reason"] for e in gw.events("auth.refresh_failed")] == ["network", "network"]
    assert not gw.events("auth.session_cleared")
    assert_no_raw_tokens(gw, creds.access)


# -- 4. proactive refresh ----------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES, ids=str)
async def test_proactive_refresh_of_a_token_about_to_expire(
        start: StartGateway, backend: Backend, family: Family) -> None:
    gw = start(family.preset)  # every preset has proactive_s = 60 (+ clock_skew_s 30)
    refresh_cfg = gw.app.settings.auth.refresh
    assert refresh_cfg.proactive_s == 60
    margin = refresh_cfg.proactive_s + refresh_cfg.clock_skew_s
    async with cookieless_client(gw.url, connections=10) as c:
        healthy = session(backend, family, access_ttl_s=margin + 60)
        fine = await c.get("/api/echo", headers=healthy.headers())
        assert fine.status_code == 200, fine.text
        assert fine.headers.get_list("set-cookie") == []
        assert upstream_saw(fine)["authorization"] == [f"{family.scheme} {healthy.access}"]
        assert "x-refreshed-token" not in upstream_saw(fine)
        assert backend.calls(family.refresh_key) == 0

        closing = session(backend, family, access_ttl_s=margin - 45)  # still valid
        early = await c.get("/api/echo", headers=closing.headers())
    assert early.status_code == 200, early.text
    assert backend.calls(family.refresh_key) == 1
    new = cookie_value(set_cookies(early)[ACCESS])
    assert new != closing.access
    assert upstream_saw(early)["authorization"] == [f"{family.scheme} {new}"]
    assert upstream_saw(early)["x-refreshed-token"] == [new]
    assert early.headers.get_list("x-refreshed-token") == ([new] if family.spa else [])
    assert_nothing_cleared(early)
    events = gw.events("auth.refreshed")
    assert [(e["via"], e["proactive"]) for e in events] == [("backend", True)]
    assert_no_raw_tokens(gw, healthy.access, closing.access, closing.refresh, new)


@pytest.mark.parametrize("family", FAMILIES, ids=str)
async def test_rejected_proactive_refresh_keeps_the_session_and_is_not_retried(
        start: StartGateway, backend: Backend, family: Family) -> None:
    """The backend refuses an early refresh (e.g. a revoked refresh token) while the access
    token is still valid: the user keeps working on it, and the next requests inside the
    proactive window do not hammer the refresh endpoint again."""
    gw = start(family.preset)
    refresh_cfg = gw.app.settings.auth.refresh
    closing = session(backend, family,
                      access_ttl_s=refresh_cfg.proactive_s + refresh_cfg.clock_skew_s - 45)
    backend.fault(family.refresh_key, 401)
    async with cookieless_client(gw.url, connections=10) as c:
        answers = [await c.get("/api/echo", headers=closing.headers()) for _ in range(5)]
    for answer in answers:
        assert answer.status_code == 200, answer.text
        assert upstream_saw(answer)["authorization"] == [f"{family.scheme} {closing.access}"]
        assert "x-refreshed-token" not in upstream_saw(answer)
        assert_nothing_cleared(answer)
    assert backend.calls(family.refresh_key) == 1
    failed = gw.events("auth.refresh_failed")
    assert [(e["outcome"], e["proactive"]) for e in failed] == [("rejected", True)] * 5
    assert not gw.events("auth.session_cleared")


# -- 5. rejected refresh: continue as anonymous --------------------------------------------------

OPEN_ECHO = {"match": "/api/echo/open/**", "access": "public"}


def dead_session(backend: Backend, family: Family) -> Creds:
    """An expired session the backend will refuse to refresh."""
    if family.refresh_token:
        return session(backend, family, refresh_ttl_s=-60)
    # next-api-layer: issued longer ago than the backend's refresh lifetime (7 days).
    return session(backend, family, access_age_s=8 * 24 * 3600)


@pytest.mark.parametrize("family", FAMILIES, ids=str)
async def test_rejected_refresh_continues_as_anonymous(
        start: StartGateway, backend: Backend, family: Family) -> None:
    gw = start(family.preset, routes=[OPEN_ECHO])
    creds = dead_session(backend, family)
    async with cookieless_client(gw.url, connections=10) as c:
        public = await c.get("/api/echo/open/x", headers=creds.headers())
        assert public.status_code == 200, public.text
        seen = upstream_saw(public)
        for name in ("authorization", "x-refreshed-token", "x-auth-user-id", "x-auth-user"):
            assert name not in seen, (name, seen.get(name))
        assert_cleared(public, ACCESS, REFRESH)

        private = await c.get("/api/echo", headers=creds.headers())
    assert private.status_code == 401, private.text
    assert private.json()["error"] == "unauthenticated"
    assert_cleared(private, ACCESS, REFRESH)
    # The second request carried the same dead credential: its rejection is remembered.
    assert backend.calls(family.refresh_key) == 1
    assert [e["reason"] for e in gw.events("auth.refresh_failed")] == ["rejected", "rejected"]
    assert len(gw.events("auth.session_cleared")) == 2
    assert not gw.events("auth.refreshed")
    assert_no_raw_tokens(gw, creds.access, creds.refresh)


@pytest.mark.parametrize("family", FAMILIES, ids=str)
async def test_dead_and_replaced_tokens_are_not_sent_on_in_cookies(
        start: StartGateway, backend: Backend, family: Family) -> None:
    """3.3: an invalid token is dropped from the forwarded request: from the Cookie header
    too, not only from Authorization. Other cookies pass unchanged; the gateway's own never
    reach the app (the refresh cookie only on the backend's own auth paths:
    tests/e2e/test_security_cookies.py)."""
    gw = start(family.preset, routes=[OPEN_ECHO])
    dead = dead_session(backend, family)
    expired = session(backend, family)
    async with cookieless_client(gw.url, connections=10) as c:
        public = await c.get("/api/echo/open/x", headers={
            "cookie": f"theme=dark; {ACCESS}={dead.access}; lang=en"})
        refreshed = await c.get("/api/echo", headers=expired.headers(
            spa=False, cookie=f"{ACCESS}={expired.access}; theme=dark"
                              + (f"; {REFRESH}={expired.refresh}" if expired.refresh else "")))
    assert public.status_code == 200, public.text
    assert upstream_saw(public)["cookie"] == ["theme=dark; lang=en"]
    assert refreshed.status_code == 200, refreshed.text
    assert upstream_saw(refreshed)["cookie"] == ["theme=dark"]


async def test_cleared_cookies_carry_the_configured_path_and_domain(
        start: StartGateway, backend: Backend) -> None:
    """A clearing Set-Cookie only works with the same name, path and domain as the cookie."""
    gw = start(DJANGO.preset, {"cookies": {"domain": "app.example.test", "path": "/app"}})
    creds = dead_session(backend, DJANGO)
    async with cookieless_client(gw.url, connections=10) as c:
        answer = await c.get("/api/echo", headers=creds.headers())
    assert answer.status_code == 401, answer.text
    for name in (ACCESS, REFRESH):
        attrs = attributes(set_cookies(answer)[name])
        assert cookie_value(set_cookies(answer)[name]) == ""
        assert (attrs["max-age"], attrs["path"], attrs["domain"]) == (
            "0", "/app", "app.example.test")


async def test_drf_open_view_gets_no_dead_token(start: StartGateway, backend: Backend) -> None:
    """A DRF AllowAny view answers 401 when handed an expired token: the gateway drops it."""
    gw = start(DJANGO.preset)
    creds = dead_session(backend, DJANGO)
    async with cookieless_client(gw.url, connections=10) as c:
        response = await c.get("/api/django/open/", headers=creds.headers())
    assert response.status_code == 200, response.text
    assert response.json() == {"open": True, "user_id": None}
    assert_cleared(response, ACCESS, REFRESH)
