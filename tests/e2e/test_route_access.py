"""Routes and access on real sockets (docs/behaviour.md#routes): the unauthenticated answers
(401 or redirect), roles, method limits, path normalization before matching (dot segments,
encoded slashes, case and parameter variants of a protected path) and safe redirect targets.

The paths are written to a raw socket (tests/helpers/raw_http.py) so that no client library
normalizes them first.
"""

from __future__ import annotations

from collections import Counter
from urllib.parse import parse_qs, unquote, urljoin, urlsplit

import httpx

from tests.conftest import Backend, MakeGateway, StartGateway
from tests.helpers.raw_http import send
from tests.helpers.replies import (
    BROWSER,
    XHR,
    assert_no_raw_tokens,
    decode_user,
    echoed,
    fp,
    set_cookies,
)
from tests.helpers.validation import ROUTES, assert_unauthenticated_json, bearer

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
        assert set_cookies(reply) == {}
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
            assert set_cookies(reply) == {}
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
        assert send(gateway.url, target, xhr).status == 401, target
        reply = send(gateway.url, target, auth)
        assert reply.status == 200, target
        assert reply.json()["user_id"] == "1"
    for target in (b"/api/echo/public/%2e%2e/%2E%2E/echo/admin/x",
                   b"/api/echo/public/../admin/x"):
        assert send(gateway.url, target, xhr).status == 401, target
        assert send(gateway.url, target, auth).status == 403, target

    # The upstream receives the normalized path with the original query string.
    reply = send(gateway.url, b"/api/echo/public/../private/./a//b?x=1&y=%2F..", auth)
    assert reply.status == 200
    assert reply.json()["path"] == "/api/echo/private/a/b"
    assert reply.json()["query"] == "x=1&y=%2F.."
    reply = send(gateway.url, b"/api/echo//public/./%7e/x", xhr)
    assert reply.status == 200
    assert reply.json()["path"] == "/api/echo/public/~/x"

    # An encoded slash is refused by default (a decoding backend would read a separator
    # there; tests/e2e/test_security_paths.py covers server.allow_encoded_slash), and so are
    # dot segments behind one, since a hop that decodes %2F and resolves dots would reach
    # another route.
    for target in (b"/api/echo/public/a%2fb", b"/api/echo/public/a%252Fb"):
        reply = send(gateway.url, target, xhr)
        assert reply.status == 400, target
        assert reply.json()["error"] == "invalid_path"
    for target in (b"/api/echo/public/..%2fprivate", b"/api/echo/public/..%2F..%2Fprivate",
                   b"/api/echo/public/%2e%2e%5cprivate", b"/api/public/..%2Fadmin%2Fstats",
                   b"/api/echo/public/x%2F..;a%2F..;b%2Fadmin%2Fx"):
        reply = send(gateway.url, target, xhr)
        assert reply.status == 400, target
        assert reply.json()["error"] == "invalid_path"

    # Case folds onto a stricter route but never a looser one: /API/public/... is not
    # public (the path itself matches no public rule).
    for target in (b"/API/public/hello", b"/api/Public/hello", b"/api/ECHO/public/x"):
        assert send(gateway.url, target, xhr).status == 401, target
    assert send(gateway.url, b"/api/public/hello", xhr).status == 200

    # Java-style dot segments with parameters and encoded NULs are refused.
    for target in (b"/api/public/..;/items", b"/api/public/%00/x"):
        assert send(gateway.url, target, xhr).status == 400, target


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
        reply = send(gateway.url, target, user)
        assert reply.status == 403, target
        assert reply.json()["error"] == "forbidden"
    reply = send(gateway.url, b"/api/admin/stats", admin)
    assert reply.status == 200
    # The admin's variants are forwarded as they are (the echo shows what the upstream got).
    for target in (b"/api/echo/Admin/x", b"/api/echo/admin;v=1/x", b"/api/echo/;v/admin/x"):
        reply = send(gateway.url, target, admin)
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
        reply = send(gateway.url, target, [(b"accept", BROWSER["accept"].encode())])
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
