"""Token discovery on real sockets (docs/behaviour.md#tokens): where the gateway looks for a token
and in which order, and malformed or crafted credentials refused with a 401, never a 500.

Where the exact request bytes matter the request is written to a raw socket
(tests/helpers/raw_http.py) so that no client library normalizes it first.
"""

from __future__ import annotations

import base64

import httpx
import pytest

from gateway.tokens import MAX_TOKEN_LENGTH
from tests.conftest import Backend, MakeGateway
from tests.helpers.raw_http import send
from tests.helpers.replies import XHR, assert_no_raw_tokens, echoed
from tests.helpers.validation import (
    ROUTES,
    assert_unauthenticated_json,
    bearer,
    guest_token,
    identity_seen,
    me_calls,
)

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
        reply = send(gateway.url, b"/api/echo/private", xhr)
        assert reply.status == 401, name
        assert_unauthenticated_json(reply.status, reply.header("content-type"), reply.body)
        assert reply.header_list("set-cookie") == [], name
        assert gateway.events("auth.denied")[-1]["reason"] == "malformed_token", name

        # On a public route the request goes through, without the Authorization header.
        reply = send(gateway.url, b"/api/echo/public/x", xhr)
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
