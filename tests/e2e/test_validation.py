"""Validation, caching, in-flight merge, token discovery and route access on real sockets
(docs/behaviour.md: #tokens, #validation, #routes, #proxying for the identity headers;
docs/audit.md).

Every test starts its own small gateway (``make_gateway``) in front of the session's reference
backend and counts the backend's ``/auth/me`` calls (``backend.calls("me")``) around what it
does. Where the exact request bytes matter (dot segments, backslashes, non-ASCII headers) the
request is written to a raw socket so that no client library normalizes it first.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import http.client
import json
import socket
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urljoin, urlsplit

import httpx
import pytest

from gateway.tokens import MAX_TOKEN_LENGTH
from tests.conftest import Backend, MakeGateway, RunningGateway, StartGateway
from tests.servers import serving

# Routes shared by most tests. Refresh is configured as "refresh_body" so that a request
# without a refresh cookie never triggers a refresh: these tests are about validation only.
ROUTES = """
[auth]
retry_backoff_s = 0.01

[auth.refresh]
send = "refresh_body"

[[routes]]
match = "/api/public/**"
access = "public"

[[routes]]
match = "/api/echo/public/**"
access = "public"

[[routes]]
match = "/api/echo/guest/**"
access = "guest"

[[routes]]
match = "/api/admin/**"
access = "user"
roles = ["admin"]

[[routes]]
match = "/api/echo/admin/**"
access = "user"
roles = ["admin"]

[[routes]]
match = "/api/echo/api401/**"
access = "user"
unauthenticated = "401"

[[routes]]
match = "/api/echo/redir/**"
access = "user"
unauthenticated = "redirect"

[[routes]]
match = "/api/echo/getonly/**"
access = "public"
methods = ["GET"]

[default_route]
access = "user"
"""



# Cache hits are counted in the metrics but written only with this key (tests that look at
# every validation turn it on).
LOG_CACHE_HITS = "\n[audit]\nlog_cache_hits = true\n"


def routes_with(*auth_lines: str, extra: str = "") -> str:
    """:data:`ROUTES` with more ``[auth]`` keys (and more tables after it)."""
    return ROUTES.replace("[auth]\n", "[auth]\n" + "".join(f"{line}\n" for line in auth_lines),
                          1) + extra


DEMO_USER = {"id": 1, "email": "demo@example.com", "username": "demo", "roles": ["user"],
             "type": "user"}
BROWSER = {"accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
XHR = {"accept": "application/json", "x-requested-with": "XMLHttpRequest"}
IDENTITY_NAMES = ("x-auth-user-id", "x-auth-token-type", "x-auth-user")


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def fp(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:12]


def bearer(token: str, scheme: str = "Bearer") -> dict[str, str]:
    return {"authorization": f"{scheme} {token}"}


def canon(name: str) -> str:
    return name.lower().replace("_", "-")


def echoed(body: dict[str, Any], name: str) -> list[str]:
    """Every value the upstream received for header ``name`` (any case, ``_`` as ``-``)."""
    return [v for k, v in body["headers"] if canon(k) == canon(name)]


def identity_seen(body: dict[str, Any]) -> dict[str, list[str]]:
    """The identity-ish headers the upstream saw, by canonical name."""
    seen: dict[str, list[str]] = {}
    for name, value in body["headers"]:
        key = canon(name)
        if key.startswith("x-auth-") or key == "x-refreshed-token":
            seen.setdefault(key, []).append(value)
    return seen


def decode_user(value: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))


def guest_token(backend: Backend) -> str:
    return backend.token(f"guest:{uuid.uuid4()}", typ="guest")


def me_calls(backend: Backend) -> int:
    return backend.calls("me")


def set_cookies(response: httpx.Response) -> list[str]:
    return response.headers.get_list("set-cookie")


def assert_no_raw_tokens(gateway: RunningGateway, *tokens: str) -> None:
    """No token (nor a long piece of one) appears anywhere in the audit file."""
    text = gateway.audit_path.read_text() if gateway.audit_path.exists() else ""
    for token in tokens:
        assert token not in text
        for piece in token.split("."):
            if len(piece) >= 16:
                assert piece not in text


def assert_unauthenticated_json(status: int, content_type: str | None, body: bytes) -> None:
    assert status == 401
    assert content_type is not None and content_type.startswith("application/json")
    data = json.loads(body)
    assert data["error"] == "unauthenticated"
    assert isinstance(data["detail"], str) and data["detail"]


@dataclass
class RawReply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k.lower() == name]
        return values[0] if values else None

    def header_list(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name]

    def json(self) -> Any:
        return json.loads(self.body)


def raw_request(base_url: str, target: bytes, headers: Sequence[tuple[bytes, bytes]] = (),
                method: bytes = b"GET") -> RawReply:
    """Send exactly these request-line and header bytes; parse the answer."""
    parts = urlsplit(base_url)
    assert parts.hostname is not None and parts.port is not None
    lines = [method + b" " + target + b" HTTP/1.1",
             f"host: {parts.hostname}:{parts.port}".encode(), b"connection: close"]
    lines += [name + b": " + value for name, value in headers]
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(b"\r\n".join(lines) + b"\r\n\r\n")
        response = http.client.HTTPResponse(sock, method=method.decode())
        response.begin()
        body = response.read()
        return RawReply(response.status, response.getheaders(), body)


# --------------------------------------------------------------------------
# cache and in-flight merge (docs/behaviour.md#validation)
# --------------------------------------------------------------------------


async def test_100_concurrent_requests_one_backend_call(
    make_gateway: MakeGateway, backend: Backend
) -> None:
    gateway = make_gateway(ROUTES + LOG_CACHE_HITS)
    token = backend.token(1)
    before = me_calls(backend)
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
    async with gateway.client(limits=limits, timeout=20) as client:
        replies = await asyncio.gather(
            *(client.get("/api/items", headers=bearer(token)) for _ in range(100)))
    assert [r.status_code for r in replies] == [200] * 100
    assert {r.json()["user_id"] for r in replies} == {"1"}
    assert me_calls(backend) - before == 1

    events = [e for e in gateway.events("auth.validated") if e["token_fp"] == fp(token)]
    assert len(events) == 100
    caches = Counter(e["cache"] for e in events)
    assert caches["miss"] == 1
    assert caches["merged"] + caches["hit"] == 99
    assert_no_raw_tokens(gateway, token)


async def test_concurrent_requests_merge_even_without_cache(
    make_gateway: MakeGateway, backend: Backend
) -> None:
    """With the cache off, only the in-flight merge can keep it to one backend call."""
    gateway = make_gateway(routes_with("cache_ttl_s = 0"))
    token = backend.token(1)
    backend.fault("me", 0, count=1, delay_s=0.8)  # the first validation is slow
    before = me_calls(backend)
    limits = httpx.Limits(max_connections=50, max_keepalive_connections=50)
    async with gateway.client(limits=limits, timeout=20) as client:
        replies = await asyncio.gather(
            *(client.get("/api/items", headers=bearer(token)) for _ in range(50)))
        assert [r.status_code for r in replies] == [200] * 50
        assert me_calls(backend) - before == 1
        events = [e for e in gateway.events("auth.validated") if e["token_fp"] == fp(token)]
        assert Counter(e["cache"] for e in events) == {"miss": 1, "merged": 49}
        # The flight is forgotten once done, and nothing is cached: the next call asks again.
        assert (await client.get("/api/items", headers=bearer(token))).status_code == 200
    assert me_calls(backend) - before == 2
    assert gateway.app.validator.cache_size == 0


async def test_leader_that_goes_away_does_not_strand_its_followers(
    make_gateway: MakeGateway, backend: Backend
) -> None:
    """The client whose request started the validation hangs up mid-call; the 20 requests
    that merged into it still get their answer from that one backend call."""
    gateway = make_gateway(ROUTES)
    token = backend.token(1)
    backend.fault("me", 0, count=1, delay_s=0.8)
    before = me_calls(backend)
    parts = urlsplit(gateway.url)
    assert parts.hostname is not None and parts.port is not None
    _reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    writer.write(f"GET /api/items HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {token}"
                 "\r\n\r\n".encode())
    await writer.drain()
    await asyncio.sleep(0.2)  # the leader's validation is under way at the backend
    limits = httpx.Limits(max_connections=20, max_keepalive_connections=20)
    async with gateway.client(limits=limits, timeout=20) as client:
        followers = [asyncio.ensure_future(client.get("/api/items", headers=bearer(token)))
                     for _ in range(20)]
        await asyncio.sleep(0.2)
        writer.transport.abort()  # the leader's client goes away
        replies = await asyncio.gather(*followers)
    assert [r.status_code for r in replies] == [200] * 20
    assert me_calls(backend) - before == 1


async def test_concurrent_requests_during_an_outage_share_one_round_of_retries(
    make_gateway: MakeGateway, backend: Backend
) -> None:
    gateway = make_gateway(routes_with("retries = 2"))
    token = backend.token(1)
    backend.fault("me", 503, count=-1, delay_s=0.3)  # the flight lasts about a second
    try:
        before = me_calls(backend)
        limits = httpx.Limits(max_connections=50, max_keepalive_connections=50)
        async with gateway.client(limits=limits, timeout=20) as client:
            replies = await asyncio.gather(*(
                client.get("/api/items", headers={**bearer(token), **XHR}) for _ in range(50)))
        calls = me_calls(backend) - before
    finally:
        backend.reset()
    assert [r.status_code for r in replies] == [503] * 50
    assert all(r.headers.get("retry-after") for r in replies)
    assert calls == 3  # one try and two retries, shared by all 50


def test_cache_ttl_and_one_call_per_token(make_gateway: MakeGateway, backend: Backend) -> None:
    gateway = make_gateway(routes_with("cache_ttl_s = 0.5", extra=LOG_CACHE_HITS))
    first, second = backend.token(1), backend.token(2)
    before = me_calls(backend)
    with httpx.Client(base_url=gateway.url) as client:
        assert client.get("/api/items", headers=bearer(first)).status_code == 200
        assert client.get("/api/items", headers=bearer(first)).status_code == 200
        assert me_calls(backend) - before == 1  # the second one was a cache hit
        time.sleep(0.65)
        assert client.get("/api/items", headers=bearer(first)).status_code == 200
        assert me_calls(backend) - before == 2  # the entry expired
        assert client.get("/api/items", headers=bearer(second)).json()["user_id"] == "2"
        assert me_calls(backend) - before == 3
    caches = [e["cache"] for e in gateway.events("auth.validated")]
    assert caches == ["miss", "hit", "miss", "miss"]


def test_two_tokens_two_calls(make_gateway: MakeGateway, backend: Backend) -> None:
    gateway = make_gateway(ROUTES)
    tokens = [backend.token(1), backend.token(1)]
    before = me_calls(backend)
    with httpx.Client(base_url=gateway.url) as client:
        for _ in range(3):
            for token in tokens:
                assert client.get("/api/items", headers=bearer(token)).status_code == 200
    assert me_calls(backend) - before == 2


def test_cache_is_bounded(make_gateway: MakeGateway, backend: Backend) -> None:
    gateway = make_gateway(routes_with("cache_ttl_s = 60", "cache_max_entries = 5"))
    tokens = [backend.token(1) for _ in range(20)]
    before = me_calls(backend)
    with httpx.Client(base_url=gateway.url) as client:
        for token in tokens:
            assert client.get("/api/items", headers=bearer(token)).status_code == 200
        assert me_calls(backend) - before == 20
        assert gateway.app.validator.cache_size <= 5
        # The newest token is still cached; the first one was evicted and costs a new call.
        assert client.get("/api/items", headers=bearer(tokens[-1])).status_code == 200
        assert me_calls(backend) - before == 20
        assert client.get("/api/items", headers=bearer(tokens[0])).status_code == 200
        assert me_calls(backend) - before == 21
    assert gateway.app.validator.cache_size <= 5


# --------------------------------------------------------------------------
# validation mapping (docs/behaviour.md#validation), identity headers (#proxying)
# --------------------------------------------------------------------------


def test_identity_headers_reach_the_upstream(make_gateway: MakeGateway, backend: Backend
                                             ) -> None:
    gateway = make_gateway(ROUTES)
    token = backend.token(1)
    with httpx.Client(base_url=gateway.url) as client:
        reply = client.get("/api/echo/private", headers=bearer(token))
    assert reply.status_code == 200
    body = reply.json()
    assert echoed(body, "authorization") == [f"Bearer {token}"]
    assert echoed(body, "x-auth-user-id") == ["1"]
    assert echoed(body, "x-auth-token-type") == ["user"]
    [user] = echoed(body, "x-auth-user")
    assert "=" not in user and "+" not in user and "/" not in user  # base64url, unpadded
    assert decode_user(user) == DEMO_USER


DJOSER = """
[auth]
scheme = "JWT"
retry_backoff_s = 0.01

[auth.refresh]
send = "refresh_body"

[auth.validate]
path = "/auth/users/me/"
user_path = ""

[[routes]]
match = "/api/admin/**"
access = "user"
roles = ["admin"]

[default_route]
access = "user"
"""


def test_djoser_validation_mapping(make_gateway: MakeGateway, backend: Backend) -> None:
    gateway = make_gateway(DJOSER)
    demo, admin = backend.token(1), backend.token(2)
    before_me, before_users = me_calls(backend), backend.calls("users_me")
    with httpx.Client(base_url=gateway.url) as client:
        reply = client.get("/api/echo/private", headers=bearer(demo))  # client says Bearer
        assert reply.status_code == 200
        body = reply.json()
        assert echoed(body, "authorization") == [f"JWT {demo}"]
        assert echoed(body, "x-auth-user-id") == ["1"]
        assert echoed(body, "x-auth-token-type") == ["user"]
        assert decode_user(echoed(body, "x-auth-user")[0]) == {
            "id": 1, "email": "demo@example.com", "username": "demo", "roles": ["user"]}
        assert client.get("/api/items", headers=bearer(demo, "JWT")).json()["user_id"] == "1"
        # Roles come from the bare Djoser object too.
        assert client.get("/api/admin/stats", headers=bearer(demo)).status_code == 403
        reply = client.get("/api/admin/stats", headers=bearer(admin, "jwt"))
        assert reply.status_code == 200 and reply.json()["user_id"] == "2"
        # A token the backend rejects is not valid.
        assert client.get("/api/items", headers=bearer(demo + "x")).status_code == 401
    assert backend.calls("users_me") - before_users == 3
    assert me_calls(backend) - before_me == 0


# --------------------------------------------------------------------------
# token discovery (docs/behaviour.md#tokens)
# --------------------------------------------------------------------------


def test_token_discovery_order(make_gateway: MakeGateway, backend: Backend) -> None:
    gateway = make_gateway(ROUTES)
    demo, admin, guest = backend.token(1), backend.token(2), guest_token(backend)

    def ask(path: str, headers: dict[str, str]) -> httpx.Response:
        # A fresh client per request: no cookie jar carries anything over.
        with httpx.Client(base_url=gateway.url) as client:
            return client.get(path, headers=headers)

    # Authorization header beats the access cookie, which beats the guest cookie.
    cookies = f"guestToken={guest}; userToken={demo}"
    body = ask("/api/echo/private", {**bearer(admin), "cookie": cookies}).json()
    assert echoed(body, "x-auth-user-id") == ["2"]
    assert echoed(body, "authorization") == [f"Bearer {admin}"]

    body = ask("/api/echo/private", {"cookie": cookies}).json()
    assert echoed(body, "x-auth-user-id") == ["1"]
    assert echoed(body, "authorization") == [f"Bearer {demo}"]

    body = ask("/api/echo/guest/x", {"cookie": f"other=1; guestToken={guest}"}).json()
    assert echoed(body, "x-auth-token-type") == ["guest"]
    assert echoed(body, "x-auth-user-id")[0].startswith("guest:")
    assert echoed(body, "authorization") == [f"Bearer {guest}"]

    # A guest token never satisfies a user route.
    reply = ask("/api/echo/private", {**XHR, "cookie": f"guestToken={guest}"})
    assert reply.status_code == 401
    assert gateway.events("auth.denied")[-1]["reason"] == "guest_token"

    # Bearer (any case) and the configured scheme carry a token; the configured one is
    # forwarded. Any other scheme (Basic, Token, ...) is not a token: ignored, never
    # validated, and the Authorization header toward the app is the gateway's alone.
    for scheme in ("Bearer", "bearer", "BEARER"):
        body = ask("/api/echo/private", bearer(demo, scheme)).json()
        assert echoed(body, "authorization") == [f"Bearer {demo}"], scheme
        assert echoed(body, "x-auth-user-id") == ["1"]
    before = me_calls(backend)
    for scheme in ("Token", "JWT", "Custom", "Basic"):
        assert ask("/api/echo/private", {**bearer(demo, scheme), **XHR}).status_code == 401
        assert gateway.events("auth.denied")[-1]["reason"] == "no_token"
        body = ask("/api/echo/public/x", bearer(demo, scheme)).json()
        assert echoed(body, "authorization") == [] and identity_seen(body) == {}, scheme
    assert me_calls(backend) == before
    assert_no_raw_tokens(gateway, demo, admin, guest)


# --------------------------------------------------------------------------
# malformed credentials
# --------------------------------------------------------------------------

MALFORMED: list[tuple[str, bytes]] = [
    ("empty value", b""),
    ("scheme only", b"Bearer"),
    ("non-ascii", b"Bearer t\xc3\xb6k\xc3\xa9n"),
    ("latin-1", b"Bearer t\xf6ken"),
    ("10 kB token", b"Bearer " + b"a" * 10240),
    ("inner space", b"Bearer abc def"),
    ("quoted", b'Bearer "abc"'),
    ("comma", b"Bearer a,b"),
]


def test_malformed_authorization(make_gateway: MakeGateway, backend: Backend) -> None:
    gateway = make_gateway(ROUTES)
    before = me_calls(backend)
    for name, value in MALFORMED:
        xhr = [(b"authorization", value), (b"accept", b"application/json"),
               (b"x-requested-with", b"XMLHttpRequest")]
        reply = raw_request(gateway.url, b"/api/echo/private", xhr)
        assert reply.status == 401, name
        assert_unauthenticated_json(reply.status, reply.header("content-type"), reply.body)
        assert reply.header_list("set-cookie") == [], name
        assert gateway.events("auth.denied")[-1]["reason"] == "malformed_token", name

        # On a public route the request goes through, without the Authorization header.
        reply = raw_request(gateway.url, b"/api/echo/public/x", xhr)
        assert reply.status == 200, name
        body = reply.json()
        assert echoed(body, "authorization") == [], name
        assert identity_seen(body) == {}, name
        assert reply.header_list("set-cookie") == [], name
    assert len(gateway.events("auth.denied")) == len(MALFORMED)
    assert me_calls(backend) - before == 0  # never sent to the backend


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _crafted_jwt(payload: bytes) -> str:
    return ".".join((_b64(b'{"alg":"HS256"}'), _b64(payload), _b64(b"signature")))


CRAFTED: list[tuple[str, bytes]] = [
    ("exp beyond float", b'{"exp": 1' + b"0" * 400 + b"}"),
    ("exp negative beyond float", b'{"exp": -1' + b"0" * 400 + b"}"),
    ("exp NaN", b'{"exp": NaN}'),
    ("exp Infinity", b'{"exp": Infinity}'),
    ("exp too long to parse", b'{"exp": 1' + b"0" * 4400 + b"}"),
    ("nested 3000 deep", b"[" * 3000 + b"]" * 3000),
    ("nested inside exp", b'{"exp": ' + b"[" * 2500 + b"]" * 2500 + b"}"),
]


@pytest.mark.parametrize(("name", "payload"), CRAFTED, ids=[n for n, _ in CRAFTED])
def test_crafted_jwt_payloads_are_refused_not_a_500(
        make_gateway: MakeGateway, name: str, payload: bytes) -> None:
    """Unverified claim peeking (exp) must survive any payload the client can craft."""
    gateway = make_gateway(ROUTES)
    token = _crafted_jwt(payload)
    assert len(token) <= MAX_TOKEN_LENGTH  # token-shaped: it reaches the claim peeking
    with httpx.Client(base_url=gateway.url) as client:
        for headers in ({"authorization": f"Bearer {token}"}, {"cookie": f"userToken={token}"}):
            private = client.get("/api/echo/private", headers={**XHR, **headers})
            assert private.status_code == 401, (name, private.text)
            assert private.json()["error"] == "unauthenticated"
            public = client.get("/api/echo/public/x", headers=headers)
            assert public.status_code == 200, (name, public.text)
            assert echoed(public.json(), "authorization") == []


def test_malformed_cookie_token(make_gateway: MakeGateway, backend: Backend) -> None:
    gateway = make_gateway(ROUTES)
    with httpx.Client(base_url=gateway.url) as client:
        reply = client.get("/api/echo/private", headers={**XHR, "cookie": 'userToken="a b"'})
        assert reply.status_code == 401
        assert reply.json()["error"] == "unauthenticated"
        reply = client.get("/api/echo/public/x", headers={"cookie": "userToken=a\\b"})
        assert reply.status_code == 200
        assert echoed(reply.json(), "authorization") == []


# --------------------------------------------------------------------------
# public routes with and without a valid token
# --------------------------------------------------------------------------


def test_public_route_drops_an_invalid_token(make_gateway: MakeGateway, backend: Backend
                                             ) -> None:
    gateway = make_gateway(ROUTES)
    expired = backend.token(1, ttl_s=-120)
    forged = backend.token(1)[:-4] + "AAAA"  # right shape, wrong signature
    with httpx.Client(base_url=gateway.url) as client:
        for headers in (bearer(expired), bearer(forged), {"cookie": f"userToken={expired}"},
                        {"cookie": f"userToken={forged}"}):
            reply = client.get("/api/echo/public/x", headers=headers)
            assert reply.status_code == 200
            body = reply.json()
            assert echoed(body, "authorization") == []
            assert identity_seen(body) == {}
            assert set_cookies(reply) == []  # no cookie cleared: no refresh was rejected
    assert_no_raw_tokens(gateway, expired, forged)


def test_public_route_forwards_a_valid_identity(make_gateway: MakeGateway, backend: Backend
                                                ) -> None:
    gateway = make_gateway(ROUTES)
    token = backend.token(1)
    with httpx.Client(base_url=gateway.url) as client:
        for headers in (bearer(token, "bearer"), {"cookie": f"userToken={token}"}):
            body = client.get("/api/echo/public/x", headers=headers).json()
            assert echoed(body, "authorization") == [f"Bearer {token}"]
            assert echoed(body, "x-auth-user-id") == ["1"]
            assert echoed(body, "x-auth-token-type") == ["user"]
            assert decode_user(echoed(body, "x-auth-user")[0]) == DEMO_USER
        # And no token at all: forwarded, no identity.
        body = client.get("/api/echo/public/x").json()
        assert echoed(body, "authorization") == [] and identity_seen(body) == {}


def test_expired_jwt_costs_no_backend_call(make_gateway: MakeGateway, backend: Backend) -> None:
    gateway = make_gateway(ROUTES)
    expired = backend.token(1, ttl_s=-120)
    before = me_calls(backend)
    with httpx.Client(base_url=gateway.url) as client:
        for _ in range(3):
            reply = client.get("/api/items", headers={**bearer(expired), **XHR})
            assert reply.status_code == 401
        assert me_calls(backend) - before == 0
        assert [e["outcome"] for e in gateway.events("auth.validated")] == ["invalid"] * 3
        assert [e["reason"] for e in gateway.events("auth.denied")] == ["invalid_token"] * 3
        # Within clock_skew_s (30 s by default) the gateway does not decide alone.
        recent = backend.token(1, ttl_s=-5)
        assert client.get("/api/items", headers={**bearer(recent), **XHR}).status_code == 401
        assert me_calls(backend) - before == 1
    assert_no_raw_tokens(gateway, expired, recent)


# --------------------------------------------------------------------------
# backend outage
# --------------------------------------------------------------------------


def test_outage_is_503_with_retry_after_and_no_cookie_change(
    make_gateway: MakeGateway, backend: Backend
) -> None:
    gateway = make_gateway(routes_with("retries = 2"))
    token = backend.token(1)
    refresh = backend.token(1, typ="refresh")
    backend.fault("me", 503, count=-1)
    try:
        before = me_calls(backend)
        with httpx.Client(base_url=gateway.url) as client:
            reply = client.get("/api/items", headers={
                "cookie": f"userToken={token}; refreshToken={refresh}", **XHR})
            assert reply.status_code == 503
            assert reply.headers.get("retry-after")
            assert set_cookies(reply) == []
            assert me_calls(backend) - before == 3  # 1 try + 2 retries
            # A browser navigation is not sent to the login page: it is not a verdict.
            reply = client.get("/api/items", headers={**bearer(token), **BROWSER})
            assert reply.status_code == 503 and "location" not in reply.headers
            assert set_cookies(reply) == []
            assert me_calls(backend) - before == 6
    finally:
        backend.reset()
    events = gateway.events("auth.backend_unavailable")
    assert len(events) == 2
    first = events[0]
    assert {e["reason"] for e in events} == {"backend_error"}
    assert first["path"] == "/api/items" and first["method"] == "GET"
    with httpx.Client(base_url=gateway.url) as client:
        reply = client.get("/api/items", headers=bearer(token))
        assert reply.status_code == 200 and reply.json()["user_id"] == "1"
    assert me_calls(backend) == 1
    assert_no_raw_tokens(gateway, token, refresh)


def _maintenance_backend(me_status: int, me_body: bytes, me_type: str) -> tuple[Any, Counter[str]]:
    """An auth backend whose /auth/me answers a fixed page, counting every call."""
    calls: Counter[str] = Counter()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        calls[scope["path"]] += 1
        status, body, kind = (me_status, me_body, me_type) if scope["path"] == "/auth/me" \
            else (401, b'{"error": "no"}', "application/json")
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", kind.encode())]})
        await send({"type": "http.response.body", "body": body})

    return app, calls


@pytest.mark.parametrize(("status", "body", "kind"), [
    (200, b"<html><body>Down for maintenance</body></html>", "text/html"),
    (200, b"", "application/json"),
    (404, b'{"detail": "Not found."}', "application/json"),
    (429, b'{"detail": "Slow down."}', "application/json"),
])
def test_validate_reply_that_is_no_verdict_is_503_not_a_logout(
        make_gateway: MakeGateway, status: int, body: bytes, kind: str) -> None:
    """Only 401/403 (and a JSON 2xx) say something about the token. A 200 maintenance page
    used to count as "invalid": a refresh followed and, rejected, cleared the cookies."""
    app, calls = _maintenance_backend(status, body, kind)
    with serving(app) as auth:
        gateway = make_gateway(routes_with(f'url = "{auth.url}"', "retries = 0"))
        with httpx.Client(base_url=gateway.url) as client:
            reply = client.get("/api/items", headers={
                "cookie": "userToken=opaque-session-token; refreshToken=opaque-refresh", **XHR})
    assert reply.status_code == 503, reply.text
    assert reply.headers.get("retry-after")
    assert reply.json()["error"] == "auth_unavailable"
    assert set_cookies(reply) == []
    assert calls == {"/auth/me": 1}  # no refresh attempted
    assert [e["reason"] for e in gateway.events("auth.backend_unavailable")] == ["backend_error"]


def test_validate_json_2xx_without_a_user_is_a_verdict(make_gateway: MakeGateway) -> None:
    """The other side of that choice: a JSON 2xx without a usable user (200 {"success": false},
    as some backends answer for a bad token) says "not valid", so the refresh runs; this
    backend rejects it, which ends the session."""
    app, calls = _maintenance_backend(200, b'{"success": false}', "application/json")
    with serving(app) as auth:
        gateway = make_gateway(routes_with(f'url = "{auth.url}"', "retries = 0"))
        with httpx.Client(base_url=gateway.url) as client:
            reply = client.get("/api/items", headers={
                "cookie": "userToken=opaque-session-token; refreshToken=opaque-refresh", **XHR})
    assert reply.status_code == 401, reply.text
    assert reply.json()["error"] == "unauthenticated"
    assert calls == {"/auth/me": 1, "/auth/refresh": 1}
    cleared = {c.split("=", 1)[0] for c in set_cookies(reply) if "max-age=0" in c.lower()}
    assert cleared == {"userToken", "refreshToken"}


def test_slow_backend_times_out_to_503(make_gateway: MakeGateway, backend: Backend) -> None:
    gateway = make_gateway(routes_with("retries = 1",
                                      extra="\n[upstream]\nread_timeout_s = 0.3\n"))
    token = backend.token(1)
    backend.fault("me", 0, count=2, delay_s=1.0)
    before = me_calls(backend)
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        reply = client.get("/api/items", headers=bearer(token))
        assert reply.status_code == 503
        assert reply.headers.get("retry-after")
        assert me_calls(backend) - before == 2
        [event] = gateway.events("auth.backend_unavailable")
        assert event["reason"] == "network"
        # The faults are used up: the same token works.
        assert client.get("/api/items", headers=bearer(token)).status_code == 200


# --------------------------------------------------------------------------
# routes and access (docs/behaviour.md#routes)
# --------------------------------------------------------------------------


def test_unauthenticated_answers(make_gateway: MakeGateway, backend: Backend) -> None:
    gateway = make_gateway(ROUTES)
    with httpx.Client(base_url=gateway.url) as client:
        # Browser navigation: to the login page, with the path and query to come back to.
        reply = client.get("/api/echo/private?a=1&b=x%20y", headers=BROWSER)
        assert reply.status_code == 302
        location = reply.headers["location"]
        assert location.startswith("/login?")
        assert parse_qs(urlsplit(location).query) == {"next": ["/api/echo/private?a=1&b=x%20y"]}
        assert set_cookies(reply) == []
        assert client.head("/api/echo/private", headers=BROWSER).status_code == 302

        # Same with X-Requested-With, or without text/html, or not a GET: 401 JSON.
        for method, headers in (("GET", {**BROWSER, "x-requested-with": "XMLHttpRequest"}),
                                ("GET", XHR), ("GET", {"accept": "application/json"}),
                                ("GET", {"accept": "text/html;q=0"}), ("POST", BROWSER)):
            reply = client.request(method, "/api/echo/private", headers=headers)
            assert_unauthenticated_json(reply.status_code, reply.headers.get("content-type"),
                                        reply.content)
            assert "location" not in reply.headers

        # unauthenticated = "401" forces 401 for browsers, "redirect" forces the redirect.
        reply = client.get("/api/echo/api401/x", headers=BROWSER)
        assert_unauthenticated_json(reply.status_code, reply.headers.get("content-type"),
                                    reply.content)
        reply = client.get("/api/echo/redir/x?q=1", headers=XHR)
        assert reply.status_code == 302
        next_values = parse_qs(urlsplit(reply.headers["location"]).query)["next"]
        assert next_values == ["/api/echo/redir/x?q=1"]
    reasons = Counter(e["reason"] for e in gateway.events("auth.denied"))
    assert reasons == {"no_token": 9}


def test_roles(make_gateway: MakeGateway, backend: Backend) -> None:
    gateway = make_gateway(ROUTES)
    demo, admin = backend.token(1), backend.token(2)
    with httpx.Client(base_url=gateway.url) as client:
        for headers in (bearer(demo), {**bearer(demo), **BROWSER}, {"cookie": f"userToken={demo}"}):
            reply = client.get("/api/admin/stats", headers=headers)
            assert reply.status_code == 403
            assert reply.json()["error"] == "forbidden"
            assert "location" not in reply.headers
            assert set_cookies(reply) == []
        reply = client.get("/api/admin/stats", headers=bearer(admin))
        assert reply.status_code == 200 and reply.json()["user_id"] == "2"
        body = client.get("/api/echo/admin/x", headers=bearer(admin)).json()
        assert decode_user(echoed(body, "x-auth-user")[0])["roles"] == ["admin", "user"]
    denied = gateway.events("auth.denied")
    assert [e["reason"] for e in denied] == ["missing_role"] * 3
    assert {e["user_id"] for e in denied} == {"1"}
    assert {e["token_fp"] for e in denied} == {fp(demo)}
    assert_no_raw_tokens(gateway, demo, admin)


def test_methods_limited_route(make_gateway: MakeGateway, backend: Backend) -> None:
    gateway = make_gateway(ROUTES)
    with httpx.Client(base_url=gateway.url) as client:
        assert client.get("/api/echo/getonly/x").status_code == 200
        assert client.head("/api/echo/getonly/x").status_code == 200  # GET implies HEAD
        for method in ("POST", "PUT", "DELETE"):
            reply = client.request(method, "/api/echo/getonly/x", headers=XHR)
            assert reply.status_code == 401, method  # falls through to the default route


def test_query_string_never_takes_part_in_matching(make_gateway: MakeGateway, backend: Backend
                                                   ) -> None:
    gateway = make_gateway(ROUTES)
    with httpx.Client(base_url=gateway.url) as client:
        reply = client.get("/api/public?x=/admin")
        assert reply.status_code == 404  # forwarded: the backend has no /api/public
        reply = client.get("/api/echo/public/x?next=/api/echo/admin/y&z=%2F..%2F")
        assert reply.status_code == 200
        assert reply.json()["query"] == "next=/api/echo/admin/y&z=%2F..%2F"
        for target in ("/api/echo/private?x=/api/echo/public/", "/api/admin/stats?/api/public/"):
            assert client.get(target, headers=XHR).status_code == 401


def test_path_normalization_before_matching(make_gateway: MakeGateway, backend: Backend
                                            ) -> None:
    gateway = make_gateway(ROUTES)
    demo = backend.token(1)
    xhr = [(b"accept", b"application/json"), (b"x-requested-with", b"XMLHttpRequest")]
    auth = [*xhr, (b"authorization", f"Bearer {demo}".encode())]

    # Escapes from a public prefix land on the user route they resolve to.
    for target in (b"/api/public/../items", b"/api/public/%2e%2e/items",
                   b"/api/public/%2E%2E/items", b"/api/public/.%2E/items",
                   b"/api/public//../../api/items", b"/api/public/./../items"):
        assert raw_request(gateway.url, target, xhr).status == 401, target
        reply = raw_request(gateway.url, target, auth)
        assert reply.status == 200, target
        assert reply.json()["user_id"] == "1"
    for target in (b"/api/echo/public/%2e%2e/%2E%2E/echo/admin/x",
                   b"/api/echo/public/../admin/x"):
        assert raw_request(gateway.url, target, xhr).status == 401, target
        assert raw_request(gateway.url, target, auth).status == 403, target

    # The upstream receives the normalized path with the original query string.
    reply = raw_request(gateway.url, b"/api/echo/public/../private/./a//b?x=1&y=%2F..", auth)
    assert reply.status == 200
    assert reply.json()["path"] == "/api/echo/private/a/b"
    assert reply.json()["query"] == "x=1&y=%2F.."
    reply = raw_request(gateway.url, b"/api/echo//public/./%7e/x", xhr)
    assert reply.status == 200
    assert reply.json()["path"] == "/api/echo/public/~/x"

    # An encoded slash is refused by default (a decoding backend would read a separator
    # there; tests/e2e/test_security_paths.py covers server.allow_encoded_slash), and so are
    # dot segments behind one, since a hop that decodes %2F and resolves dots would reach
    # another route.
    for target in (b"/api/echo/public/a%2fb", b"/api/echo/public/a%252Fb"):
        reply = raw_request(gateway.url, target, xhr)
        assert reply.status == 400, target
        assert reply.json()["error"] == "invalid_path"
    for target in (b"/api/echo/public/..%2fprivate", b"/api/echo/public/..%2F..%2Fprivate",
                   b"/api/echo/public/%2e%2e%5cprivate", b"/api/public/..%2Fadmin%2Fstats",
                   b"/api/echo/public/x%2F..;a%2F..;b%2Fadmin%2Fx"):
        reply = raw_request(gateway.url, target, xhr)
        assert reply.status == 400, target
        assert reply.json()["error"] == "invalid_path"

    # Case folds onto a stricter route but never a looser one: /API/public/... is not
    # public (the path itself matches no public rule).
    for target in (b"/API/public/hello", b"/api/Public/hello", b"/api/ECHO/public/x"):
        assert raw_request(gateway.url, target, xhr).status == 401, target
    assert raw_request(gateway.url, b"/api/public/hello", xhr).status == 200

    # Java-style dot segments with parameters and encoded NULs are refused.
    for target in (b"/api/public/..;/items", b"/api/public/%00/x"):
        assert raw_request(gateway.url, target, xhr).status == 400, target


def test_case_and_params_variants_of_an_admin_route_are_forbidden(
        start: StartGateway, backend: Backend) -> None:
    """Express matches routes case-insensitively, Tomcat drops ``;params``: with the express
    preset a non-admin got 200 for /api/Admin/stats while /api/admin/stats was 403."""
    gateway = start("express", routes=[
        {"match": "/api/echo/admin/**", "access": "user", "roles": ["admin"]}])
    user = [(b"authorization", f"Bearer {backend.token(1)}".encode())]  # no admin role
    admin = [(b"authorization", f"Bearer {backend.token(2)}".encode())]
    # ";x" alone leaves an empty segment, which Tomcat and Spring merge away.
    for target in (b"/api/admin/stats", b"/api/Admin/stats", b"/API/admin/stats",
                   b"/api/admin;x/stats", b"/api;v=1/ADMIN/stats", b"/api/;x/admin/stats",
                   b"/;x/api/admin/stats", b"/api/echo/Admin/x", b"/api/echo/;v/admin/x"):
        reply = raw_request(gateway.url, target, user)
        assert reply.status == 403, target
        assert reply.json()["error"] == "forbidden"
    reply = raw_request(gateway.url, b"/api/admin/stats", admin)
    assert reply.status == 200
    # The admin's variants are forwarded as they are (the echo shows what the upstream got).
    for target in (b"/api/echo/Admin/x", b"/api/echo/admin;v=1/x", b"/api/echo/;v/admin/x"):
        reply = raw_request(gateway.url, target, admin)
        assert reply.status == 200, target
        assert reply.json()["path"] == target.decode()
        assert echoed(reply.json(), "x-auth-user-id") == ["2"]


HOSTILE_PATHS: list[bytes] = [
    b"//evil.com",
    b"///evil.com",
    b"//evil.com/x?y=1",
    b"/\\evil.com",
    b"/\\/evil.com",
    b"/%5cevil.com",
    b"/%5C%5Cevil.com",
    b"/%09/evil.com",
    b"/%0d%0a/evil.com",
    b"/%09%2F%2Fevil.com",
    b"/.//evil.com",
    b"/..//evil.com",
    b"/./%2e/%2E%2E//evil.com",
    b"/%2F%2Fevil.com",
    b"/%2f%2fevil.com",
    b"/%2F%5Cevil.com",
    b"/.%2F%2Fevil.com",
    b"/%252F%252Fevil.com",
    b"/%25252F%25252Fevil.com",
    b"/%5C%2Fevil.com",
    b"/https:%2F%2Fevil.com",
    b"/https://evil.com",
    b"/%68ttps:%2F%2Fevil.com",
    b"/%EF%BC%8F%EF%BC%8Fevil.com",
    b"/%E2%80%8B/%2Fevil.com",
    b"/%E3%80%82/evil.com",
    b"/%20/%2Fevil.com",
    b"/x?next=//evil.com",
    b"/x?%0d%0aLocation:%20//evil.com",
    b"/\t/evil.com",
    b"/javascript:alert(1)",
    b"/%40evil.com",
]


def _same_origin(next_value: str) -> bool:
    cleaned = next_value.replace("\t", "").replace("\r", "").replace("\n", "").replace("\\", "/")
    joined = urlsplit(urljoin("https://app.example/login", cleaned))
    return joined.scheme == "https" and joined.netloc == "app.example"


def _one_slash(value: str) -> bool:
    return value.startswith("/") and not value.startswith(("//", "/\\"))


def test_redirect_safety_over_the_wire(make_gateway: MakeGateway, backend: Backend) -> None:
    gateway = make_gateway(ROUTES)
    seen: dict[bytes, str] = {}
    for target in HOSTILE_PATHS:
        reply = raw_request(gateway.url, target, [(b"accept", BROWSER["accept"].encode())])
        assert reply.status in (400, 302), (target, reply.status)
        if reply.status == 400:
            seen[target] = "400"
            continue
        location = reply.header("location")
        assert location is not None and location.startswith("/login?"), (target, location)
        [next_value] = parse_qs(urlsplit(location).query)["next"]
        seen[target] = next_value
        assert _one_slash(next_value), (target, next_value)
        assert _same_origin(next_value), (target, next_value)
        # However many times a consumer decodes it, it stays on this origin.
        decoded = next_value
        for _ in range(4):
            decoded = unquote(decoded)
            assert _one_slash(decoded.strip()), (target, decoded)
            assert _same_origin(decoded), (target, decoded)
    assert seen[b"/\\evil.com"] == "400"
    assert seen[b"//evil.com"] == "/evil.com"
    assert seen[b"/%2F%2Fevil.com"] in ("/", "400")


# --------------------------------------------------------------------------
# spoofed identity headers (docs/behaviour.md#proxying)
# --------------------------------------------------------------------------


def test_spoofed_identity_headers_are_replaced(make_gateway: MakeGateway, backend: Backend
                                               ) -> None:
    gateway = make_gateway(ROUTES)
    demo = backend.token(1)
    fake_user = base64.urlsafe_b64encode(b'{"id":2,"roles":["admin"]}').decode()
    spoofed = [
        (b"X-Auth-User-Id", b"2"),
        (b"x_auth_user_id", b"2"),
        (b"x-auth-user-id", b"2"),
        (b"X-AUTH-TOKEN-TYPE", b"user"),
        (b"X-Auth-User", fake_user.encode()),
        (b"x_auth_user", fake_user.encode()),
        (b"X-Refreshed-Token", b"x"),
        (b"x_refreshed_token", b"x"),
        (b"X-Auth-Roles", b"admin"),
    ]
    reply = raw_request(gateway.url, b"/api/echo/private",
                        [*spoofed, (b"authorization", f"Bearer {demo}".encode())])
    assert reply.status == 200
    seen = identity_seen(reply.json())
    assert seen["x-auth-user-id"] == ["1"]
    assert seen["x-auth-token-type"] == ["user"]
    assert len(seen["x-auth-user"]) == 1 and decode_user(seen["x-auth-user"][0]) == DEMO_USER
    assert set(seen) == set(IDENTITY_NAMES)  # no x-refreshed-token, no x-auth-roles

    reply = raw_request(gateway.url, b"/api/items",
                        [*spoofed, (b"authorization", f"Bearer {demo}".encode())])
    assert reply.json()["user_id"] == "1"
    # Without a token, on a public route: none of them get through.
    reply = raw_request(gateway.url, b"/api/echo/public/x", spoofed)
    assert reply.status == 200 and identity_seen(reply.json()) == {}
    # And they cannot buy access to a user route.
    reply = raw_request(gateway.url, b"/api/admin/stats",
                        [*spoofed, (b"accept", b"application/json")])
    assert reply.status == 401


# --------------------------------------------------------------------------
# audit events (docs/audit.md)
# --------------------------------------------------------------------------


def test_audit_events(make_gateway: MakeGateway, backend: Backend) -> None:
    gateway = make_gateway(ROUTES + LOG_CACHE_HITS)
    demo, expired = backend.token(1), backend.token(1, ttl_s=-120)
    with httpx.Client(base_url=gateway.url) as client:
        first = client.get("/api/items", headers={**bearer(demo), "x-request-id": "req-one"})
        second = client.get("/api/items", headers={"cookie": f"userToken={demo}"})
        client.get("/api/items", headers=XHR)
        client.get("/api/items", headers={**XHR, "authorization": "Bearer a b"})
        client.get("/api/items", headers={**XHR, **bearer(expired)})
        client.get("/api/admin/stats", headers=bearer(demo))
    assert first.headers["x-request-id"] == "req-one"

    hit, miss = None, None
    validated = gateway.events("auth.validated")
    for event in validated:
        assert event["client_ip"] == "127.0.0.1"
        assert event["method"] == "GET"
        stamp = event["timestamp"]
        assert stamp.endswith("Z") or stamp.endswith("+00:00")
        assert len(event["token_fp"]) == 12
        assert all(c in "0123456789abcdef" for c in event["token_fp"])
    by_request = {e["request_id"]: e for e in validated}
    miss = by_request["req-one"]
    assert miss["cache"] == "miss" and miss["user_id"] == "1" and miss["outcome"] == "valid"
    assert miss["token_fp"] == fp(demo) and miss["path"] == "/api/items"
    hit = by_request[second.headers["x-request-id"]]
    assert hit["cache"] == "hit" and hit["user_id"] == "1" and hit["token_fp"] == fp(demo)
    invalid = [e for e in validated if e["token_fp"] == fp(expired)]
    assert len(invalid) == 1 and invalid[0]["outcome"] == "invalid"
    assert invalid[0].get("user_id") is None

    denied = gateway.events("auth.denied")
    assert [e["reason"] for e in denied] == [
        "no_token", "malformed_token", "invalid_token", "missing_role"]
    for event in denied:
        assert event["request_id"] and event["client_ip"] == "127.0.0.1"
        assert event["method"] == "GET" and event["path"] in ("/api/items", "/api/admin/stats")
        assert event["outcome"] in ("unauthenticated", "forbidden")
    assert denied[2]["token_fp"] == fp(expired)
    assert denied[3]["token_fp"] == fp(demo) and denied[3]["user_id"] == "1"

    text = gateway.audit_path.read_text()
    for line in text.splitlines():
        assert isinstance(json.loads(line), dict)
    assert_no_raw_tokens(gateway, demo, expired)
