"""The demo backend, exercised over a real loopback socket with httpx."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import pytest
import uvicorn
from starlette.applications import Starlette

from gateway.demo import DEMO_USERS, BackendOptions, DemoState, create_backend, create_control

DEMO = {"email": "demo@example.com", "password": "demo-password"}
ADMIN = {"email": "admin@example.com", "password": "admin-password"}


@dataclass
class Running:
    app: Starlette
    url: str
    control_url: str

    @property
    def state(self) -> DemoState:
        state: DemoState = self.app.state.demo
        return state


class _Server:
    """uvicorn serving `app` on a free loopback port, in a thread with its own loop."""

    def __init__(self, app: Starlette) -> None:
        # IPPROTO_TCP (not 0) so asyncio sets TCP_NODELAY on accepted connections; otherwise
        # Nagle + delayed ACK add ~40 ms to every response written in two pieces.
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(
            app,
            lifespan="off",
            log_level="warning",
            # Let the app's own `server`/`date` headers be the only ones (/test/headers-out).
            server_header=False,
            date_header=False,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.run(self.server.serve(sockets=[self.sock]))

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 5
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "server did not start"
            time.sleep(0.005)
        return self.url

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)
        self.sock.close()


@pytest.fixture(scope="module")
def backend() -> Iterator[Running]:
    app = create_backend()
    with _Server(app) as url, _Server(create_control(app.state.demo)) as control_url:
        yield Running(app, url, control_url)


@pytest.fixture
async def client(backend: Running) -> AsyncIterator[httpx.AsyncClient]:
    backend.state.reset()
    async with httpx.AsyncClient(base_url=backend.url, timeout=5, verify=False) as client:
        yield client


@pytest.fixture
async def control(backend: Running) -> AsyncIterator[httpx.AsyncClient]:
    """The control API (``/__demo/*``), served on its own port."""
    async with httpx.AsyncClient(base_url=backend.control_url, timeout=5) as control:
        yield control


def bearer(token: str, scheme: str = "Bearer") -> dict[str, str]:
    return {"authorization": f"{scheme} {token}"}


async def login(client: httpx.AsyncClient, creds: dict[str, str] = DEMO) -> dict[str, Any]:
    response = await client.post("/auth/login", json=creds)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


async def mint(control: httpx.AsyncClient, **claims: Any) -> str:
    response = await control.post("/__demo/token", json=claims)
    assert response.status_code == 200, response.text
    token: str = response.json()["token"]
    return token


async def stats(control: httpx.AsyncClient) -> dict[str, Any]:
    data: dict[str, Any] = (await control.get("/__demo/stats")).json()
    return data


# -- family 1: next-api-layer style ---------------------------------------------------------


async def test_next_login_and_me(client: httpx.AsyncClient, backend: Running) -> None:
    data = await login(client, ADMIN)
    assert data["user"] == {
        "id": 2,
        "email": "admin@example.com",
        "username": "admin",
        "roles": ["admin", "user"],
    }
    claims = jwt.decode(data["accessToken"], backend.state.secret, algorithms=["HS256"])
    assert claims["sub"] == "2" and claims["typ"] == "access" and claims["exp"] > time.time()

    response = await client.get("/auth/me", headers=bearer(data["accessToken"]))
    assert response.json() == {
        "success": True,
        "data": {**data["user"], "type": "user"},
    }

    bad = await client.post("/auth/login", json={**DEMO, "password": "nope"})
    assert bad.status_code == 401
    assert bad.json() == {"success": False, "error": "invalid credentials"}
    assert (await client.post("/auth/login", content=b"{not json")).status_code == 400


async def test_next_me_rejects(client: httpx.AsyncClient, control: httpx.AsyncClient) -> None:
    data = await login(client)
    expired = await mint(control, user_id=1, typ="access", ttl_s=-10)
    for headers in (
        {},
        bearer("garbage"),
        bearer(expired),
        bearer(data["refreshToken"]),  # refresh tokens are not access tokens
        bearer(data["accessToken"], "JWT"),
    ):
        response = await client.get("/auth/me", headers=headers)
        assert response.status_code == 401, headers
        assert response.json()["success"] is False


async def test_tokens_issued_together_differ(client: httpx.AsyncClient) -> None:
    first, second = await login(client), await login(client)
    assert first["accessToken"] != second["accessToken"]
    assert first["refreshToken"] != second["refreshToken"]


async def test_next_refresh_with_access_token_rotates(
        client: httpx.AsyncClient, control: httpx.AsyncClient) -> None:
    access = (await login(client))["accessToken"]
    response = await client.post("/auth/refresh", headers=bearer(access))
    assert response.status_code == 200
    fresh = response.json()["data"]
    assert set(fresh) == {"accessToken", "refreshToken"}
    assert fresh["accessToken"] != access

    reused = await client.post("/auth/refresh", headers=bearer(access))
    assert reused.status_code == 401
    assert reused.json()["success"] is False

    # An expired access token still refreshes within the refresh window...
    expired = await mint(control, user_id=1, typ="access", ttl_s=-10)
    assert (await client.post("/auth/refresh", headers=bearer(expired))).status_code == 200
    # ...but not once it was issued longer than refresh_ttl_s ago.
    ancient = await mint(control, user_id=1, typ="access", ttl_s=-10, age_s=8 * 24 * 3600)
    assert (await client.post("/auth/refresh", headers=bearer(ancient))).status_code == 401

    assert {k: (await stats(control))[k] for k in ("refresh_ok", "refresh_rejected")} == {
        "refresh_ok": 2,
        "refresh_rejected": 2,
    }


async def test_next_refresh_with_refresh_token_body(client: httpx.AsyncClient) -> None:
    refresh = (await login(client))["refreshToken"]
    response = await client.post("/auth/refresh", json={"refreshToken": refresh})
    assert response.status_code == 200
    rotated = response.json()["data"]["refreshToken"]
    assert rotated != refresh
    assert (await client.post("/auth/refresh", json={"refreshToken": refresh})).status_code == 401
    again = await client.post("/auth/refresh", json={"refresh": rotated})  # SimpleJWT's name
    assert again.status_code == 200
    cookie = {"cookie": f"refreshToken={again.json()['data']['refreshToken']}"}
    assert (await client.post("/auth/refresh", headers=cookie)).status_code == 200
    assert (await client.post("/auth/refresh")).status_code == 401


async def test_refresh_without_rotation_allows_reuse(
        client: httpx.AsyncClient, control: httpx.AsyncClient) -> None:
    config = await control.post("/__demo/config", json={"rotate_refresh": False})
    assert config.json()["rotate_refresh"] is False
    data = await login(client)
    for _ in range(2):
        by_access = await client.post("/auth/refresh", headers=bearer(data["accessToken"]))
        assert by_access.status_code == 200
        by_body = await client.post("/auth/refresh", json={"refreshToken": data["refreshToken"]})
        assert by_body.json()["data"]["refreshToken"] == data["refreshToken"]


async def test_next_guest(client: httpx.AsyncClient) -> None:
    response = await client.post("/auth/guest")
    assert response.status_code == 200
    token = response.json()["data"]["accessToken"]
    me = (await client.get("/auth/me", headers=bearer(token))).json()["data"]
    assert me["id"].startswith("guest:")
    assert (me["email"], me["roles"], me["type"]) == (None, [], "guest")
    # Guest tokens are not accepted where a real user is required.
    assert (await client.get("/api/auth/me", headers=bearer(token))).status_code == 401


async def test_guest_credentials_required_when_configured() -> None:
    app = create_backend(BackendOptions(guest_username="guest", guest_password="s3cret"))
    with _Server(app) as url:
        async with httpx.AsyncClient(base_url=url, verify=False) as client:
            assert (await client.post("/auth/guest")).status_code == 401
            wrong = {"username": "guest", "password": "wrong"}
            assert (await client.post("/auth/guest", json=wrong)).status_code == 401
            right = {"username": "guest", "password": "s3cret"}
            assert (await client.post("/auth/guest", json=right)).status_code == 200


async def test_next_logout_revokes(client: httpx.AsyncClient) -> None:
    data = await login(client)
    response = await client.post(
        "/auth/logout", headers=bearer(data["accessToken"]), json={"refresh": data["refreshToken"]}
    )
    assert response.json() == {"success": True}
    assert (await client.get("/auth/me", headers=bearer(data["accessToken"]))).status_code == 401
    assert (
        await client.post("/auth/refresh", headers=bearer(data["accessToken"]))
    ).status_code == 401
    body = {"refreshToken": data["refreshToken"]}
    assert (await client.post("/auth/refresh", json=body)).status_code == 401


# -- family 2: DRF + SimpleJWT / Djoser ------------------------------------------------------


async def test_django_create_and_me(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/auth/jwt/create/", json={"username": "demo", "password": "demo-password"}
    )
    assert response.status_code == 200
    tokens = response.json()
    assert set(tokens) == {"access", "refresh"}

    me = await client.get("/auth/users/me/", headers=bearer(tokens["access"], "JWT"))
    assert me.json() == {
        "id": 1,
        "email": "demo@example.com",
        "username": "demo",
        "roles": ["user"],
    }

    # SimpleJWT configured with AUTH_HEADER_TYPES=("JWT",) ignores a Bearer header.
    as_bearer = await client.get("/auth/users/me/", headers=bearer(tokens["access"]))
    assert as_bearer.status_code == 401
    assert as_bearer.json() == {"detail": "Authentication credentials were not provided."}

    invalid = await client.get("/auth/users/me/", headers=bearer("garbage", "JWT"))
    assert invalid.status_code == 401
    assert invalid.json() == {
        "detail": "Given token not valid for any token type",
        "code": "token_not_valid",
    }

    bad = await client.post("/auth/jwt/create/", json={**DEMO, "password": "nope"})
    assert bad.status_code == 401
    assert bad.json() == {"detail": "No active account found with the given credentials"}


async def test_django_refresh_rotation_and_blacklist(client: httpx.AsyncClient) -> None:
    tokens = (await client.post("/auth/jwt/create/", json=DEMO)).json()
    response = await client.post("/auth/jwt/refresh/", json={"refresh": tokens["refresh"]})
    assert response.status_code == 200
    rotated = response.json()
    assert set(rotated) == {"access", "refresh"} and rotated["refresh"] != tokens["refresh"]

    reused = await client.post("/auth/jwt/refresh/", json={"refresh": tokens["refresh"]})
    assert reused.status_code == 401
    assert reused.json() == {"detail": "Token is blacklisted", "code": "token_not_valid"}

    missing = await client.post("/auth/jwt/refresh/", json={})
    assert missing.status_code == 400
    assert missing.json() == {"refresh": ["This field is required."]}

    blacklisted = await client.post("/auth/jwt/blacklist/", json={"refresh": rotated["refresh"]})
    assert (blacklisted.status_code, blacklisted.json()) == (200, {})
    again = await client.post("/auth/jwt/refresh/", json={"refresh": rotated["refresh"]})
    assert again.json()["detail"] == "Token is blacklisted"


async def test_django_open_endpoint_rejects_invalid_token(
        client: httpx.AsyncClient, control: httpx.AsyncClient) -> None:
    access = (await client.post("/auth/jwt/create/", json=ADMIN)).json()["access"]
    expired = await mint(control, user_id=1, typ="access", ttl_s=-1)

    open_anon = await client.get("/api/django/open/")
    assert open_anon.json() == {"open": True, "user_id": None}
    open_user = await client.get("/api/django/open/", headers=bearer(access, "JWT"))
    assert open_user.json()["user_id"] == 2
    open_bad = await client.get("/api/django/open/", headers=bearer(expired, "JWT"))
    assert open_bad.status_code == 401
    assert open_bad.json()["code"] == "token_not_valid"

    assert (await client.get("/api/django/private/")).status_code == 401
    private = await client.get("/api/django/private/", headers=bearer(access, "JWT"))
    assert private.json() == {"private": True, "user_id": 2}


# -- family 3: Express -----------------------------------------------------------------------


async def test_express_login_me_and_cookie_refresh(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/auth/login", json=DEMO)
    assert response.status_code == 200
    body = response.json()
    assert body["user"]["email"] == "demo@example.com"
    cookie = response.headers["set-cookie"]
    first = response.cookies["refreshToken"]
    assert cookie == f"refreshToken={first}; HttpOnly; Path=/; SameSite=Lax"

    me = await client.get("/api/auth/me", headers=bearer(body["accessToken"]))
    assert me.json() == {"user": DEMO_USERS[0].public()}
    invalid = await client.get("/api/auth/me", headers=bearer("garbage"))
    assert invalid.status_code == 401 and "message" in invalid.json()

    refreshed = await client.post(
        "/auth/refresh-token", headers={"cookie": f"refreshToken={first}"}
    )
    assert refreshed.status_code == 200
    assert set(refreshed.json()) == {"accessToken"}
    second = refreshed.cookies["refreshToken"]
    assert second != first
    assert refreshed.headers["set-cookie"].endswith("; HttpOnly; Path=/; SameSite=Lax")

    reused = await client.post("/auth/refresh-token", headers={"cookie": f"refreshToken={first}"})
    assert reused.status_code == 401 and "message" in reused.json()
    client.cookies.clear()
    assert (await client.post("/auth/refresh-token")).status_code == 401


async def test_express_logout_clears_and_revokes(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/auth/login", json=DEMO)
    token = response.cookies["refreshToken"]
    client.cookies.clear()
    cookie = {"cookie": f"refreshToken={token}"}
    logout = await client.post("/api/auth/logout", headers=cookie)
    assert logout.status_code == 200
    assert logout.headers["set-cookie"].startswith("refreshToken=;")
    assert "Max-Age=0" in logout.headers["set-cookie"]
    assert (await client.post("/auth/refresh-token", headers=cookie)).status_code == 401


# -- test control ----------------------------------------------------------------------------


async def test_stats_count_every_call(
        client: httpx.AsyncClient, backend: Running, control: httpx.AsyncClient) -> None:
    await client.get("/auth/me")
    await client.get("/auth/me", headers=bearer("x"))
    await client.post("/auth/jwt/refresh/", json={})
    await login(client)
    data = await stats(control)
    assert data["calls"]["me"] == 2
    assert data["calls"]["jwt_refresh"] == 1
    assert data["calls"]["login"] == 1
    assert data["calls"]["users_me"] == 0
    assert data["refresh_rejected"] == 1
    assert backend.state.calls["me"] == 2

    await control.post("/__demo/reset")
    assert set((await stats(control))["calls"].values()) == {0}


async def test_faults(client: httpx.AsyncClient, control: httpx.AsyncClient) -> None:
    access = (await login(client))["accessToken"]
    response = await control.post("/__demo/faults", json={"me": {"status": 503, "count": 2}})
    assert response.status_code == 200
    statuses = [
        (await client.get("/auth/me", headers=bearer(access))).status_code for _ in range(3)
    ]
    assert statuses == [503, 503, 200]
    assert (await stats(control))["calls"]["me"] == 3

    await control.post("/__demo/faults", json={"hello": {"status": 500, "count": -1}})
    for _ in range(3):
        assert (await client.get("/api/public/hello")).status_code == 500
    await control.post("/__demo/reset")
    assert (await client.get("/api/public/hello")).json() == {"hello": "world"}

    await control.post("/__demo/faults", json={"hello": {"status": 0, "delay_s": 0.2}})
    started = time.monotonic()
    assert (await client.get("/api/public/hello")).status_code == 200
    assert time.monotonic() - started >= 0.2

    unknown = await control.post("/__demo/faults", json={"nope": {"status": 503}})
    assert unknown.status_code == 400


async def test_config_changes_lifetimes(
        client: httpx.AsyncClient, backend: Running, control: httpx.AsyncClient) -> None:
    response = await control.post("/__demo/config", json={"access_ttl_s": 2})
    assert response.json()["access_ttl_s"] == 2
    access = (await login(client))["accessToken"]
    claims = jwt.decode(access, backend.state.secret, algorithms=["HS256"])
    assert claims["exp"] - claims["iat"] == pytest.approx(2)
    assert (await control.post("/__demo/config", json={"bogus": 1})).status_code == 400


# -- application endpoints and proxy helpers -------------------------------------------------


async def test_application_endpoints(client: httpx.AsyncClient) -> None:
    assert (await client.get("/api/public/hello")).json() == {"hello": "world"}
    items = (await client.get("/api/items", headers={"x-auth-user-id": "7"})).json()
    assert items["user_id"] == "7" and items["items"]
    assert (await client.get("/api/admin/stats")).json()["user_id"] is None


async def test_echo_preserves_request(client: httpx.AsyncClient) -> None:
    body = b"payload" * 100
    response = await client.request(
        "PATCH",
        "/api/echo/a%2Fb/c?x=1&x=2",
        headers=[("x-dup", "one"), ("x-dup", "two"), ("x-other", "3")],
        content=body,
    )
    data = response.json()
    assert data["method"] == "PATCH"
    assert data["path"] == "/api/echo/a%2Fb/c"
    assert data["query"] == "x=1&x=2"
    dups = [value for name, value in data["headers"] if name == "x-dup"]
    assert dups == ["one", "two"]
    assert data["body_len"] == len(body)
    assert data["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert (await client.get("/api/echo")).json()["path"] == "/api/echo"


async def test_stream(client: httpx.AsyncClient) -> None:
    size = 5 * 65536 + 123
    total = 0
    async with client.stream("GET", "/test/stream", params={"size": size}) as response:
        assert "content-length" not in response.headers
        async for chunk in response.aiter_bytes():
            assert set(chunk) <= {ord("x")}
            total += len(chunk)
    assert total == size


async def test_upload(client: httpx.AsyncClient) -> None:
    parts = [bytes([i]) * 50_000 for i in range(10)]

    async def body() -> AsyncIterator[bytes]:
        for part in parts:
            yield part

    response = await client.post("/test/upload", content=body())
    expected = hashlib.sha256(b"".join(parts)).hexdigest()
    assert response.json() == {"received": 500_000, "sha256": expected}


async def test_slow(client: httpx.AsyncClient) -> None:
    started = time.monotonic()
    assert (await client.get("/test/slow", params={"delay": 0.1})).json() == {"slept": 0.1}
    assert time.monotonic() - started >= 0.1


async def test_cookies_are_separate_headers(client: httpx.AsyncClient) -> None:
    response = await client.get("/test/cookies")
    assert response.headers.get_list("set-cookie") == [
        "a=1; Path=/",
        "b=2; Path=/",
        "c=3; Path=/; HttpOnly",
    ]
    one = await client.get("/test/set-cookie", params={"name": "n", "value": "v"})
    assert one.headers.get_list("set-cookie") == ["n=v; Path=/"]


async def test_gzip_body_is_precompressed(client: httpx.AsyncClient) -> None:
    async with client.stream("GET", "/test/gzip") as response:
        assert response.headers["content-encoding"] == "gzip"
        raw = b"".join([chunk async for chunk in response.aiter_raw()])
    assert raw[:2] == b"\x1f\x8b"
    assert json.loads(gzip.decompress(raw))["compressed"] is True


async def test_hop_by_hop_headers(client: httpx.AsyncClient) -> None:
    response = await client.get("/test/hop")
    assert response.status_code == 200
    headers = response.headers
    assert headers["connection"] == "x-hop-custom"
    assert headers["x-hop-custom"] == "1"
    assert headers["keep-alive"] == "timeout=5"
    assert headers["proxy-authenticate"] == "Basic"
    assert headers["trailer"] == "x-t"
    assert headers["upgrade"] == "h2c"
    assert headers["x-kept"] == "yes"


async def test_status_and_headers_out(client: httpx.AsyncClient) -> None:
    teapot = await client.get("/test/status/418")
    assert (teapot.status_code, teapot.json()) == (418, {"status": 418})
    no_content = await client.get("/test/status/204")
    assert (no_content.status_code, no_content.content) == (204, b"")
    out = await client.get("/test/headers-out")
    assert out.headers.get_list("server") == ["demo-backend"]
    assert len(out.headers.get_list("date")) == 1


async def test_html_pages(client: httpx.AsyncClient) -> None:
    assert "/login" in (await client.get("/")).text
    good = (await client.get("/login", params={"next": "/api/items?x=1"})).text
    assert 'data-next="/api/items?x=1"' in good
    for unsafe in ("//evil.example", "https://evil.example", "/\\evil.example"):
        page = (await client.get("/login", params={"next": unsafe})).text
        assert 'data-next="/dashboard"' in page
    dashboard = await client.get("/dashboard", headers={"x-auth-user-id": "<b>1</b>"})
    assert "Dashboard" in dashboard.text
    assert "&lt;b&gt;1&lt;/b&gt;" in dashboard.text and "<b>1</b>" not in dashboard.text
