"""The shipped Traefik and Envoy configs of ``config/forward-auth/`` (no Traefik or Envoy binary
on Debian, so the e2e tests run only nginx and Caddy). Envoy's is parsed against Envoy's own
API schema (the ``xds-protos`` package: unknown fields, wrong types and unknown ``@type``s are
errors); Traefik's keys are checked against its ForwardAuth options."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.settings import CookieSettings, ServerSettings

CONFIGS = Path(__file__).resolve().parents[1] / "config" / "forward-auth"
AUTH_PATH = ServerSettings().reserved_prefix + "/auth"
COOKIES = [CookieSettings().access, CookieSettings().refresh, CookieSettings().guest]
IDENTITY = ["x-auth-user-id", "x-auth-token-type", "x-auth-user", "x-auth-authorization",
            "x-refreshed-token"]
CLIENT_HEADERS = ["cookie", "authorization", "accept", "x-requested-with", "origin"]

# Traefik v3's ForwardAuth middleware options (pkg/config/dynamic/middlewares.go, ForwardAuth).
TRAEFIK_FORWARD_AUTH = {
    "address", "tls", "trustForwardHeader", "authResponseHeaders", "authResponseHeadersRegex",
    "authRequestHeaders", "addAuthCookiesToResponse", "headerField", "forwardBody",
    "maxBodySize", "preserveLocationHeader", "preserveRequestMethod",
}
TRAEFIK_ROUTER = {"rule", "entryPoints", "service", "middlewares", "priority", "tls",
                  "ruleSyntax", "observability"}


def _load(name: str) -> Any:
    return yaml.safe_load((CONFIGS / name).read_text())


def test_traefik_forward_auth_middleware() -> None:
    http = _load("traefik.yml")["http"]
    forward = http["middlewares"]["gateway-auth"]["forwardAuth"]
    assert set(forward) <= TRAEFIK_FORWARD_AUTH, set(forward) - TRAEFIK_FORWARD_AUTH
    assert forward["address"].endswith(AUTH_PATH)
    assert [h.lower() for h in forward["authResponseHeaders"]] == IDENTITY
    requested = [h.lower() for h in forward["authRequestHeaders"]]
    assert set(CLIENT_HEADERS) <= set(requested)
    assert {"sec-fetch-site", "sec-fetch-mode", "sec-fetch-dest"} <= set(requested)
    # A client's X-Original-* would be read before Traefik's X-Forwarded-*.
    assert not [h for h in requested if h.startswith("x-original-")]
    assert forward["addAuthCookiesToResponse"] == COOKIES
    for name, router in http["routers"].items():
        assert set(router) <= TRAEFIK_ROUTER, name
        service = router["service"]
        assert service in http["services"] or service.endswith("@internal"), name
        for middleware in router.get("middlewares", []):
            assert middleware in http["middlewares"], name
    assert "gateway-auth" in http["routers"]["app"]["middlewares"]
    assert "gateway-auth" not in http["routers"]["gateway-session"].get("middlewares", [])


def _envoy_bootstrap() -> Any:
    json_format = pytest.importorskip(
        "google.protobuf.json_format", reason="protobuf comes with the xds-protos test extra")
    bootstrap_pb2 = pytest.importorskip(
        "envoy.config.bootstrap.v3.bootstrap_pb2",
        reason="xds-protos (Envoy's API schema) is in the test extra: pip install -e '.[test]'")
    # Every @type the config names must be known to the parser.
    for module in ("envoy.extensions.filters.network.http_connection_manager.v3."
                   "http_connection_manager_pb2",
                   "envoy.extensions.filters.http.ext_authz.v3.ext_authz_pb2",
                   "envoy.extensions.filters.http.header_mutation.v3.header_mutation_pb2",
                   "envoy.extensions.filters.http.router.v3.router_pb2"):
        pytest.importorskip(module)
    bootstrap = bootstrap_pb2.Bootstrap()
    json_format.ParseDict(_load("envoy.yaml"), bootstrap)  # raises on any unknown field
    return json_format.MessageToDict(bootstrap, preserving_proto_field_name=True)


def _patterns(matchers: dict[str, Any]) -> list[str]:
    return [p.get("exact") or p.get("prefix") for p in matchers["patterns"]]


def test_envoy_bootstrap_is_valid_against_envoys_api() -> None:
    config = _envoy_bootstrap()
    manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
        "typed_config"]
    filters = {f["name"]: f["typed_config"] for f in manager["http_filters"]}
    assert list(filters)[-1] == "envoy.filters.http.router"
    ext_authz = filters["envoy.filters.http.ext_authz"]
    service = ext_authz["http_service"]
    assert service["path_prefix"] == AUTH_PATH
    assert set(CLIENT_HEADERS) <= set(_patterns(
        service["authorization_request"]["allowed_headers"]))
    response = service["authorization_response"]
    assert _patterns(response["allowed_upstream_headers"]) == IDENTITY
    assert {"set-cookie", "location", "retry-after", "www-authenticate"} <= set(
        _patterns(response["allowed_client_headers"]))
    assert _patterns(response["allowed_client_headers_on_success"]) == ["set-cookie"]
    assert ext_authz.get("failure_mode_allow", False) is False
    # The client's copies of the gateway's headers are removed before ext_authz runs.
    names = list(filters)
    assert names.index("envoy.filters.http.header_mutation") < names.index(
        "envoy.filters.http.ext_authz")
    removed = [m["remove"] for m in filters["envoy.filters.http.header_mutation"][
        "mutations"]["request_mutations"]]
    assert set(IDENTITY) | {"x-original-uri", "x-forwarded-uri"} <= set(removed)
    clusters = {c["name"] for c in config["static_resources"]["clusters"]}
    assert service["server_uri"]["cluster"] in clusters
    routes = manager["route_config"]["virtual_hosts"][0]["routes"]
    for route in routes:
        if "route" in route:
            assert route["route"]["cluster"] in clusters
