"""The forward-auth endpoint itself (docs/forward-auth.md), on real sockets: a gateway with
``[forward_auth] enabled`` in front of the reference backend, asked the way nginx
(``X-Original-*``), Traefik and Caddy (``X-Forwarded-Method``/``-Uri``) and Envoy (the original
path after ``/__gateway/auth``) ask. The answers are the proxy mode's decisions: same cache,
refresh, guests, audit events and metrics."""

from __future__ import annotations

import base64
import json

import httpx
import pytest

from gateway.cli import summary
from gateway.settings import SettingsError, settings_from_mapping
from tests.conftest import Backend, RunningGateway, StartGateway
from tests.helpers.forward_auth import forward_auth_gateway

AUTH = "/__gateway/auth"
HTML = "text/html,application/xhtml+xml,*/*;q=0.8"


def nginx_style(method: str, uri: str, **headers: str) -> dict[str, str]:
    return {"x-original-method": method, "x-original-uri": uri, **headers}


def forwarded_style(method: str, uri: str, **headers: str) -> dict[str, str]:
    return {"x-forwarded-method": method, "x-forwarded-uri": uri, **headers}


def cookie(**values: str) -> str:
    return "; ".join(f"{name}={value}" for name, value in values.items())


def set_cookie_names(response: httpx.Response) -> dict[str, str]:
    return {h.split("=", 1)[0]: h.split(";", 1)[0].split("=", 1)[1]
            for h in response.headers.get_list("set-cookie")}


@pytest.fixture
def gateway(start: StartGateway) -> RunningGateway:
    return forward_auth_gateway(start)


def ask(gateway: RunningGateway, headers: dict[str, str], method: str = "GET",
        path: str = AUTH) -> httpx.Response:
    return httpx.request(method, gateway.url + path, headers=headers, timeout=20)


def test_nginx_convention_allows_a_valid_session_with_identity_headers(
        gateway: RunningGateway, backend: Backend) -> None:
    token = backend.token(user_id=1)
    reply = ask(gateway, nginx_style("GET", "/api/items?page=2",
                                     cookie=cookie(userToken=token, theme="dark")))
    assert reply.status_code == 200
    assert reply.content == b""
    assert reply.headers["x-auth-user-id"] == "1"
    assert reply.headers["x-auth-token-type"] == "user"
    user = json.loads(base64.urlsafe_b64decode(reply.headers["x-auth-user"] + "=="))
    assert user["email"] == "demo@example.com"
    assert reply.headers["x-auth-authorization"] == f"Bearer {token}"
    assert "authorization" not in reply.headers
    assert "set-cookie" not in reply.headers and "x-auth-cookie-1" not in reply.headers
    assert "x-request-id" in reply.headers
    validated = gateway.events("auth.validated")
    assert validated[-1]["path"] == "/api/items" and validated[-1]["method"] == "GET"


def test_traefik_caddy_convention_role_miss_is_403_and_admin_is_allowed(
        gateway: RunningGateway, backend: Backend) -> None:
    user, admin = backend.token(user_id=1), backend.token(user_id=2)
    denied = ask(gateway, forwarded_style("GET", "/api/admin/stats",
                                          authorization=f"Bearer {user}"))
    assert denied.status_code == 403
    assert denied.json()["error"] == "forbidden"
    assert "set-cookie" not in denied.headers  # never a logout
    allowed = ask(gateway, forwarded_style("GET", "/api/admin/stats",
                                           authorization=f"Bearer {admin}"))
    assert allowed.status_code == 200
    assert allowed.headers["x-auth-user-id"] == "2"
    assert gateway.events("auth.denied")[-1]["reason"] == "missing_role"


def test_envoy_convention_reads_the_path_after_the_prefix(
        gateway: RunningGateway, backend: Backend) -> None:
    token = backend.token(user_id=1)
    allowed = ask(gateway, {"authorization": f"Bearer {token}"}, method="DELETE",
                  path=AUTH + "/api/items/7?x=1")
    assert allowed.status_code == 200
    assert allowed.headers["x-auth-user-id"] == "1"
    assert gateway.events("auth.validated")[-1]["method"] == "DELETE"
    public = ask(gateway, {}, path=AUTH + "/api/public/hello")
    assert public.status_code == 200
    assert "x-auth-user-id" not in public.headers
    navigation = ask(gateway, {"accept": HTML}, path=AUTH + "/dashboard?tab=2")
    assert navigation.status_code == 401
    assert navigation.headers["location"] == "/login?next=/dashboard%3Ftab%3D2"


def test_nginx_headers_win_over_forwarded_ones(gateway: RunningGateway) -> None:
    reply = ask(gateway, {**forwarded_style("GET", "/api/public/hello"),
                          **nginx_style("GET", "/api/private")})
    assert reply.status_code == 401


def test_unauthenticated_navigation_gets_location_and_xhr_gets_json(
        gateway: RunningGateway) -> None:
    navigation = ask(gateway, nginx_style("GET", "/dashboard/../reports?year=2025",
                                          accept=HTML))
    assert navigation.status_code == 401
    assert navigation.headers["location"] == "/login?next=/reports%3Fyear%3D2025"
    assert navigation.json()["error"] == "unauthenticated"
    xhr = ask(gateway, nginx_style("GET", "/reports", accept=HTML,
                                   **{"x-requested-with": "XMLHttpRequest"}))
    assert xhr.status_code == 401
    assert "location" not in xhr.headers
    assert xhr.json() == {"error": "unauthenticated", "detail": "Authentication is required."}


def test_expired_session_is_refreshed_and_cookies_are_set_and_mirrored(
        gateway: RunningGateway, backend: Backend) -> None:
    expired = backend.token(user_id=1, ttl_s=-60)
    reply = ask(gateway, nginx_style("GET", "/api/items", cookie=cookie(userToken=expired)))
    assert reply.status_code == 200
    new = set_cookie_names(reply)
    assert set(new) == {"userToken", "refreshToken"}
    assert new["userToken"] != expired
    assert reply.headers["x-auth-authorization"] == f"Bearer {new['userToken']}"
    assert reply.headers["x-refreshed-token"] == new["userToken"]
    mirrored = [reply.headers[f"x-auth-cookie-{n}"] for n in (1, 2)]
    assert mirrored == reply.headers.get_list("set-cookie")
    assert "x-auth-cookie-3" not in reply.headers
    assert backend.calls("refresh") == 1
    # A second tab with the old cookie inside the grace window: same new tokens, no call.
    again = ask(gateway, nginx_style("GET", "/api/items", cookie=cookie(userToken=expired)))
    assert set_cookie_names(again)["userToken"] == new["userToken"]
    assert backend.calls("refresh") == 1
    assert gateway.events("auth.refreshed")[0]["via"] in ("backend", "refresh")


def test_rejected_refresh_clears_the_session_in_the_401(
        gateway: RunningGateway, backend: Backend) -> None:
    forged = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.bad"
    reply = ask(gateway, nginx_style("GET", "/api/private", cookie=cookie(userToken=forged)))
    assert reply.status_code == 401
    cleared = reply.headers.get_list("set-cookie")
    assert sorted(h.split("=", 1)[0] for h in cleared) == ["refreshToken", "userToken"]
    assert all("Max-Age=0" in h for h in cleared)
    assert [reply.headers["x-auth-cookie-1"], reply.headers["x-auth-cookie-2"]] == cleared


def test_guest_route_issues_a_guest_without_authorization_for_local_mode(
        start: StartGateway, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_GUEST_SECRET", "s" * 32)
    gateway = forward_auth_gateway(start, overrides={"guest": {"mode": "local"}})
    reply = ask(gateway, nginx_style("GET", "/api/items"))
    assert reply.status_code == 200
    assert reply.headers["x-auth-token-type"] == "guest"
    assert reply.headers["x-auth-user-id"].startswith("guest:")
    assert "x-auth-authorization" not in reply.headers  # the backend could not verify it
    assert list(set_cookie_names(reply)) == ["guestToken"]
    assert reply.headers["x-auth-cookie-1"] == reply.headers["set-cookie"]


def test_backend_outage_is_503_with_retry_after_and_no_cookie_change(
        gateway: RunningGateway, backend: Backend) -> None:
    token = backend.token(user_id=1)
    backend.fault("me", 503)
    try:
        reply = ask(gateway, nginx_style("GET", "/api/items", cookie=cookie(userToken=token)))
    finally:
        backend.fault("me", 0, count=0)
    assert reply.status_code == 503
    assert reply.headers["retry-after"] == "5"
    assert "set-cookie" not in reply.headers
    assert gateway.events("auth.backend_unavailable")


def test_cross_site_request_with_the_cookie_session_is_403_csrf(
        gateway: RunningGateway, backend: Backend) -> None:
    """Forward-auth applies the proxy mode's CSRF rule (docs/behaviour.md#cross-site-requests):
    a state-changing request that the browser says comes from another site, riding the cookie
    session, is refused before any backend call; the same request from the site itself, or
    with a Bearer token, is allowed."""
    token = backend.token(user_id=1)
    before = backend.calls("me")
    refused = ask(gateway, nginx_style("POST", "/api/items", cookie=cookie(userToken=token),
                                       origin="https://evil.example",
                                       **{"sec-fetch-site": "cross-site"}))
    assert refused.status_code == 403
    assert refused.json()["error"] == "csrf"
    assert "x-auth-user-id" not in refused.headers
    assert backend.calls("me") == before
    assert [e["reason"] for e in gateway.events("auth.csrf_refused")]
    same_site = ask(gateway, nginx_style("POST", "/api/items", cookie=cookie(userToken=token),
                                         **{"sec-fetch-site": "same-origin"}))
    assert same_site.status_code == 200
    bearer = ask(gateway, nginx_style("POST", "/api/items", authorization=f"Bearer {token}",
                                      origin="https://evil.example",
                                      **{"sec-fetch-site": "cross-site"}))
    assert bearer.status_code == 200
    assert bearer.headers["x-auth-user-id"] == "1"


def test_peer_outside_trusted_gets_404(start: StartGateway, backend: Backend) -> None:
    gateway = forward_auth_gateway(start, trusted=["10.0.0.0/8", "fd00::/8"])
    token = backend.token(user_id=1)
    reply = ask(gateway, nginx_style("GET", "/api/items", cookie=cookie(userToken=token)))
    assert reply.status_code == 404
    assert reply.json()["error"] == "not_found"
    assert "x-auth-user-id" not in reply.headers
    assert backend.calls("me") == 0
    # The rest of the gateway is unaffected.
    assert httpx.get(gateway.url + "/api/items",
                     cookies={"userToken": token}).status_code == 200


def test_disabled_endpoint_is_an_unknown_gateway_endpoint(start: StartGateway) -> None:
    gateway = start("next-api-layer")
    reply = httpx.get(gateway.url + AUTH, headers=nginx_style("GET", "/api/items"))
    assert reply.status_code == 404


@pytest.mark.parametrize(("headers", "path", "error"), [
    ({}, AUTH, "invalid_request"),
    (nginx_style("GET", "/api/%2F..%2Fadmin"), AUTH, "invalid_path"),
    (nginx_style("G E T", "/api/items"), AUTH, "invalid_request"),
    (nginx_style("GET", "api/items"), AUTH, "invalid_request"),
    ({}, AUTH + "/api/%2e%2e%2Fadmin", "invalid_path"),
])
def test_unusable_subrequests_get_400_json(gateway: RunningGateway, headers: dict[str, str],
                                           path: str, error: str) -> None:
    reply = ask(gateway, headers, path=path)
    assert reply.status_code == 400
    assert reply.json()["error"] == error


def test_absolute_form_original_uri(gateway: RunningGateway) -> None:
    reply = ask(gateway, nginx_style("GET", "http://app.example/api/public/hello?x=1"))
    assert reply.status_code == 200


def test_answers_are_counted_in_the_metrics(gateway: RunningGateway) -> None:
    ask(gateway, nginx_style("GET", "/api/private"))
    metrics = httpx.get(gateway.url + "/__gateway/metrics").text
    assert 'gateway_http_responses_total{code="401"} 1.0' in metrics
    assert 'gateway_auth_events_total{event="auth.denied",outcome="unauthenticated"} 1.0' \
        in metrics


def test_trusted_must_be_networks_and_errors_name_the_key() -> None:
    with pytest.raises(SettingsError) as raised:
        settings_from_mapping({"upstream": {"url": "http://127.0.0.1:1"},
                               "forward_auth": {"enabled": True,
                                                "trusted": ["127.0.0.1/32", "nginx"]}})
    assert raised.value.problems == [
        "forward_auth.trusted[1]: not an IP address or CIDR network"]
    with pytest.raises(SettingsError) as raised:
        settings_from_mapping({"upstream": {"url": "http://127.0.0.1:1"},
                               "forward_auth": {"enabled": "yes", "trusted": "127.0.0.1"}})
    assert sorted(raised.value.problems) == ["forward_auth.enabled: must be true or false",
                                             "forward_auth.trusted: must be a list of strings"]


def test_defaults_are_off_and_loopback_only() -> None:
    settings = settings_from_mapping({"upstream": {"url": "http://127.0.0.1:1"}})
    assert settings.forward_auth.enabled is False
    assert settings.forward_auth.trusted == ("127.0.0.1/32", "::1/128")


def test_client_address_comes_from_the_trusted_proxys_forwarded_for(
        gateway: RunningGateway, backend: Backend) -> None:
    token = backend.token(user_id=1)
    reply = ask(gateway, nginx_style("GET", "/api/items", cookie=cookie(userToken=token),
                                     **{"x-forwarded-for": "198.51.100.4, 203.0.113.9"}))
    assert reply.status_code == 200
    assert gateway.events("auth.validated")[-1]["client_ip"] == "203.0.113.9"


def test_preflight_is_allowed_without_a_token(gateway: RunningGateway, backend: Backend
                                              ) -> None:
    reply = ask(gateway, nginx_style("OPTIONS", "/api/private", origin="https://app.example",
                                     **{"access-control-request-method": "DELETE"}))
    assert reply.status_code == 200
    assert "x-auth-user-id" not in reply.headers
    assert backend.calls("me") == 0
    # Not a preflight (no Access-Control-Request-Method): checked like any request.
    plain = ask(gateway, nginx_style("OPTIONS", "/api/private", origin="https://app.example"))
    assert plain.status_code == 401


def test_gateway_check_summary_names_the_endpoint_and_who_may_ask() -> None:
    settings = settings_from_mapping({"upstream": {"url": "http://127.0.0.1:1"},
                                      "forward_auth": {"enabled": True,
                                                       "trusted": ["10.0.0.0/8"]}})
    assert "forward-auth: /__gateway/auth (trusted: 10.0.0.0/8)" in summary(settings).splitlines()
    off = settings_from_mapping({"upstream": {"url": "http://127.0.0.1:1"}})
    assert "forward-auth" not in summary(off)
