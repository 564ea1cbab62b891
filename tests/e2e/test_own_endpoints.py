"""The gateway's own endpoints on real sockets (docs/behaviour.md#own-endpoints): health (also
for path variants that resolve to it), the reserved prefix never proxied, bad paths as a
JSON 400, metrics and readiness.
"""

from __future__ import annotations

import pytest

from tests.conftest import Backend, MakeGateway, RunningGateway
from tests.helpers.proxy import PUBLIC, assert_clean_error
from tests.helpers.raw_http import raw_request
from tests.servers import free_port

# -- the gateway's own endpoints and bad paths -------------------------------------------------


@pytest.mark.parametrize("target", [
    "/__gateway/health",
    "/x/../__gateway/health",
    "//__gateway//health",
    "/%5F%5Fgateway/health",
    "/__gateway/./health",
])
async def test_health(gw: RunningGateway, target: str) -> None:
    response = await raw_request(gw.url, target)
    assert response.status == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.parametrize("target", [
    "/__gateway/nope",
    "/__gateway",
    "/__gateway/",
    "/__gateway/health/x",
    "/api/echo/../../__gateway/echo",
    "/__gateway/api/echo/x",
])
async def test_reserved_prefix_never_proxied(gw: RunningGateway, backend: Backend,
                                             target: str) -> None:
    before = backend.calls("echo")
    response = await raw_request(gw.url, target)
    assert_clean_error(response, 404)
    assert backend.calls("echo") == before


async def test_health_head_and_post(gw: RunningGateway) -> None:
    head = await raw_request(gw.url, "/__gateway/health", method="HEAD")
    assert head.status == 200
    post = await raw_request(gw.url, "/__gateway/health", method="POST", body=b"{}")
    assert_clean_error(post, 405)


@pytest.mark.parametrize("target", ["/a/%00", "/api/echo/%00", "/a/%zz", "/a/%4", "/a\\b"])
async def test_bad_path_is_400_json(gw: RunningGateway, backend: Backend, target: str) -> None:
    before = backend.calls("echo")
    response = await raw_request(gw.url, target)
    assert_clean_error(response, 400)
    assert backend.calls("echo") == before


# -- the gateway's own endpoints ------------------------------------------------------------------


async def test_metrics_count_what_was_served(make_gateway: MakeGateway, backend: Backend
                                             ) -> None:
    gateway = make_gateway(PUBLIC)
    async with gateway.client() as client:
        assert (await client.get("/api/echo/one")).status_code == 200
        assert (await client.get("/test/status/418")).status_code == 418
        assert (await client.get("/api/private", headers={"accept": "application/json"})
                ).status_code == 401
        metrics = await client.get("/__gateway/metrics")
        head = await client.head("/__gateway/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
               for line in metrics.text.splitlines() if line and not line.startswith("#")}
    assert samples['gateway_http_responses_total{code="200"}'] == 1
    assert samples['gateway_http_responses_total{code="418"}'] == 1
    assert samples['gateway_http_responses_total{code="401"}'] == 1
    assert samples['gateway_auth_events_total{event="auth.denied",outcome="unauthenticated"}'] == 1
    assert head.status_code == 200 and head.content == b""


async def test_ready_follows_the_auth_backend(make_gateway: MakeGateway, backend: Backend
                                              ) -> None:
    up = make_gateway(PUBLIC)
    down = make_gateway(PUBLIC + f'\n[auth]\nurl = "http://127.0.0.1:{free_port()}"\n')
    async with up.client() as client:
        ready = await client.get("/__gateway/ready")
    async with down.client() as client:
        not_ready = await client.get("/__gateway/ready")
        health = await client.get("/__gateway/health")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "checks": {"auth": "ok", "state": "ok"}}
    assert not_ready.status_code == 503
    assert not_ready.json()["checks"]["auth"] == "unavailable"
    assert health.status_code == 200 and health.json() == {"status": "ok"}
