"""``/__gateway/metrics`` after known traffic: the histograms' counts move by exactly what was
sent, on one process and across the workers of ``gateway serve --workers 2``
(docs/deployment.md#metrics)."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import sys
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.mmap_dict import MmapedDict

from tests.conftest import Backend, MakeGateway, StartGateway
from tests.helpers.metrics import Scrape, delta, scrape
from tests.helpers.replies import cookie_value, cookieless_client, set_cookies
from tests.servers import ServerProcess, free_port

REQUESTS = "gateway_request_duration_seconds"
UPSTREAM = "gateway_upstream_duration_seconds"
AUTH = "gateway_auth_call_duration_seconds"
DEMO = {"email": "demo@example.com", "password": "demo-password"}
WRONG = {"email": "demo@example.com", "password": "not-the-password"}
JSON = {"accept": "application/json"}


def _count(s: Scrape, name: str, **labels: str) -> float:
    return s.get(name + "_count", **labels)


def _assert_histograms_consistent(s: Scrape) -> None:
    """Each series' +Inf bucket equals its count, and buckets never decrease."""
    for (name, labels), value in s.values.items():
        if not name.endswith("_count") or not name.startswith("gateway_"):
            continue
        base = name[: -len("_count")]
        plain = dict(labels)
        assert s.get(base + "_bucket", **plain, le="+Inf") == value, (name, plain)
        buckets = sorted(
            ((float(dict(lb)["le"]), v) for (n, lb), v in s.values.items()
             if n == base + "_bucket" and {k: v for k, v in lb if k != "le"} == plain),
            key=lambda item: item[0])
        counts = [v for _, v in buckets]
        assert counts == sorted(counts), (name, plain, buckets)
        if value:
            assert s.get(base + "_sum", **plain) > 0, (name, plain)


async def test_histograms_count_a_known_session(start: StartGateway, backend: Backend) -> None:
    """A failed login, a login, two guest-route requests as the user (validated once: the
    login's validation is cached), a logout, a new guest, a public hit and a 401."""
    gateway = start("next-api-layer", {"auth": {"cache_ttl_s": 60}})
    before = scrape(gateway.url)
    calls_before = backend.stats()["calls"]
    async with cookieless_client(gateway.url) as client:
        assert (await client.post("/auth/login", json=WRONG)).status_code == 401
        login = await client.post("/auth/login", json=DEMO)
        assert login.status_code == 200
        session = {**JSON, "cookie": f"userToken={cookie_value(set_cookies(login)['userToken'])}"}
        for _ in range(2):
            items = await client.get("/api/items", headers=session)
            assert items.status_code == 200, items.text
        assert (await client.post("/auth/logout", headers=session)).status_code == 204
        assert (await client.get("/api/items", headers=JSON)).status_code == 200  # a guest
        assert (await client.get("/api/public/hello")).status_code == 200
        assert (await client.get("/api/admin/stats", headers=JSON)).status_code == 401
    after = scrape(gateway.url)
    calls = backend.stats()["calls"]

    def moved(name: str, **labels: str) -> float:
        return delta(before, after, name + "_count", **labels)

    assert moved(REQUESTS, access="public", status_class="4xx") == 1  # the failed login
    assert moved(REQUESTS, access="public", status_class="2xx") == 3  # login, logout, hello
    assert moved(REQUESTS, access="guest", status_class="2xx") == 3
    assert moved(REQUESTS, access="user", status_class="4xx") == 1
    assert moved(REQUESTS, access="gateway", status_class="2xx") == 1  # the first scrape
    assert moved(UPSTREAM, outcome="2xx") == 5  # login, items x3, hello
    assert moved(UPSTREAM, outcome="4xx") == 1  # the failed login
    assert moved(AUTH, endpoint="login", outcome="4xx") == 1
    assert moved(AUTH, endpoint="login", outcome="2xx") == 1
    assert moved(AUTH, endpoint="validate", outcome="2xx") == 1  # at login, then cached
    assert moved(AUTH, endpoint="logout", outcome="2xx") == 1
    assert moved(AUTH, endpoint="guest", outcome="2xx") == 1
    # What the backend counted agrees with what the gateway says it asked.
    for key, endpoint in (("me", "validate"), ("logout", "logout"), ("guest", "guest")):
        assert calls.get(key, 0) - calls_before.get(key, 0) == moved(
            AUTH, endpoint=endpoint, outcome="2xx"), key
    _assert_histograms_consistent(after)


async def test_each_auth_try_is_timed_and_failures_have_their_outcome(
        start: StartGateway, backend: Backend) -> None:
    """A validate endpoint answering 503 is tried 1 + retries times: three observations, one
    503 to the client; a revoked token is a 4xx validation and a 4xx refresh."""
    gateway = start("next-api-layer", {"auth": {"retries": 2}})
    token = backend.token(1)
    before = scrape(gateway.url)
    backend.fault("me", 503, count=3)
    async with cookieless_client(gateway.url) as client:
        reply = await client.get("/api/items", headers={**JSON, "authorization": f"Bearer {token}"})
        assert reply.status_code == 503
        revoked = backend.login()["accessToken"]
        await client.post("/auth/logout", headers={**JSON, "authorization": f"Bearer {revoked}"})
        gone = await client.get("/api/admin/stats",
                                headers={**JSON, "authorization": f"Bearer {revoked}"})
        assert gone.status_code == 401
    after = scrape(gateway.url)
    assert delta(before, after, AUTH + "_count", endpoint="validate", outcome="5xx") == 3
    assert delta(before, after, REQUESTS + "_count", access="guest", status_class="5xx") == 1
    assert delta(before, after, AUTH + "_count", endpoint="validate", outcome="4xx") == 1
    assert delta(before, after, AUTH + "_count", endpoint="refresh", outcome="4xx") == 1
    assert delta(before, after, REQUESTS + "_count", access="user", status_class="4xx") == 1


async def test_upstream_failures_are_timed_by_outcome(make_gateway: MakeGateway,
                                                      backend: Backend) -> None:
    routes = '[[routes]]\nmatch = "/**"\naccess = "public"\n'
    dead = make_gateway(routes, upstream=f"http://127.0.0.1:{free_port()}")
    slow = make_gateway(routes + "[upstream]\nread_timeout_s = 0.3\n")
    async with httpx.AsyncClient(timeout=20) as client:
        before_dead, before_slow = scrape(dead.url), scrape(slow.url)
        assert (await client.get(dead.url + "/anything")).status_code == 502
        assert (await client.get(slow.url + "/test/slow?delay=3")).status_code == 504
        after_dead, after_slow = scrape(dead.url), scrape(slow.url)
    assert delta(before_dead, after_dead, UPSTREAM + "_count", outcome="network") == 1
    assert delta(before_dead, after_dead, REQUESTS + "_count", access="public",
                 status_class="5xx") == 1
    assert delta(before_slow, after_slow, UPSTREAM + "_count", outcome="timeout") == 1
    # The timeout is the time the gateway waited: at least read_timeout_s.
    assert delta(before_slow, after_slow, UPSTREAM + "_sum", outcome="timeout") >= 0.3


async def test_in_flight_and_upstream_pool_gauges(make_gateway: MakeGateway) -> None:
    gateway = make_gateway('[[routes]]\nmatch = "/**"\naccess = "public"\n')
    idle = scrape(gateway.url)
    assert idle.get("gateway_requests_in_flight") == 1  # the scrape itself
    assert idle.get("gateway_upstream_connections_in_use") == 0
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
        pending = asyncio.create_task(client.get("/test/slow?delay=2"))
        busy = idle
        deadline = time.monotonic() + 20
        while busy.get("gateway_requests_in_flight") < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            busy = await asyncio.to_thread(scrape, gateway.url)
        assert busy.get("gateway_requests_in_flight") == 2
        assert busy.get("gateway_upstream_connections_in_use") == 1
        assert (await pending).status_code == 200
    done = scrape(gateway.url)
    assert done.get("gateway_requests_in_flight") == 1
    assert done.get("gateway_upstream_connections_in_use") == 0


async def test_labels_stay_a_fixed_vocabulary(start: StartGateway, backend: Backend) -> None:
    """Paths, user ids and status codes never become histogram labels."""
    gateway = start("next-api-layer")
    tokens = [backend.token(user) for user in (1, 2)]
    async with cookieless_client(gateway.url) as client:
        for index in range(5):
            await client.get(f"/api/public/hello/{index}?q={index}")
            await client.get(f"/api/echo/{index}", headers={
                **JSON, "authorization": f"Bearer {tokens[index % 2]}"})
        refused = await client.get("/api/a%00b", headers=JSON)
        assert refused.status_code == 400, refused.text
    result = scrape(gateway.url)
    allowed = {
        "access": {"public", "guest", "user", "gateway", "none"},
        "status_class": {"1xx", "2xx", "3xx", "4xx", "5xx"},
        "outcome": {"2xx", "3xx", "4xx", "5xx", "network", "timeout"},
        "endpoint": {"validate", "refresh", "guest", "login", "logout", "probe", "other"},
    }
    for name, labels in result.values:
        if not name.startswith(("gateway_request_duration", "gateway_upstream_duration",
                                "gateway_auth_call_duration")):
            continue
        for key, value in labels:
            if key == "le":
                continue
            assert value in allowed[key], (name, key, value)
    assert result.label_values(REQUESTS + "_count", "access") >= {"public", "user", "none"}


# -- several workers ------------------------------------------------------------------------


def _serve(config: Path, port: int, workers: int, env: dict[str, str]) -> ServerProcess:
    return ServerProcess([sys.executable, "-m", "gateway", "serve", "--config", str(config),
                          "--port", str(port), "--workers", str(workers)], port, env=env)


def _workers_that_served_public(directory: Path) -> set[str]:
    """The pids whose own metric file counts a public request: read with prometheus_client's
    reader, so the proof does not hang on a file merely existing."""
    pids: set[str] = set()
    for path in directory.glob("histogram_*.db"):
        match = re.fullmatch(r"histogram_(\d+)\.db", path.name)
        assert match
        for key, value, *_ in MmapedDict.read_all_values_from_file(str(path)):
            _, sample, labels, _ = json.loads(key)
            # Buckets are kept per bucket (not cumulative) in these files.
            if sample == REQUESTS + "_bucket" and labels["access"] == "public" and value > 0:
                pids.add(match.group(1))
    return pids


def _metrics_dirs(tmp: Path) -> list[Path]:
    return sorted(tmp.glob("gateway-metrics-*"))


@pytest.mark.timeout(120)
def test_two_workers_report_one_total(tmp_path: Path, backend: Backend) -> None:
    """``gateway serve --workers 2``: requests spread over both workers (each new connection
    may land on either), yet every scrape, whichever worker answers it, reports all of them.
    The metric files live in a fresh directory that is removed at exit."""
    config = tmp_path / "gateway.toml"
    config.write_text(f'[upstream]\nurl = "{backend.url}"\n[audit]\nsink = "stderr"\n'
                      '[[routes]]\nmatch = "/api/public/**"\naccess = "public"\n',
                      encoding="utf-8")
    temp = tmp_path / "tmp"
    temp.mkdir()
    server = _serve(config, free_port(), 2, {"TMPDIR": str(temp)})
    server.env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    server.start(timeout=60)
    try:
        [directory] = _metrics_dirs(temp)
        sent = 0
        deadline = time.monotonic() + 60
        # New connections until both workers have served some (bounded), then ten more.
        while len(_workers_that_served_public(directory)) < 2 and time.monotonic() < deadline:
            assert httpx.get(server.url + "/api/public/hello", timeout=20).status_code == 200
            sent += 1
        assert len(_workers_that_served_public(directory)) == 2, "one worker took them all"
        for _ in range(10):
            assert httpx.get(server.url + "/api/public/hello", timeout=20).status_code == 200
            sent += 1
        scrapes = [scrape(server.url) for _ in range(6)]
        for result in scrapes:
            assert _count(result, REQUESTS, access="public", status_class="2xx") == sent
            assert _count(result, UPSTREAM, outcome="2xx") == sent
            assert result.get("gateway_requests_in_flight") == 1  # the scrape itself
            _assert_histograms_consistent(result)
        # Each scrape is a request too (to whichever worker answered it): one more each time.
        own = [_count(s, REQUESTS, access="gateway", status_class="2xx") for s in scrapes]
        assert [b - a for a, b in itertools.pairwise(own)] == [1] * 5
    finally:
        output = server.stop()
    assert "Traceback" not in output
    assert _metrics_dirs(temp) == [], "the metrics directory outlived the server"


@pytest.mark.timeout(120)
def test_an_operator_chosen_metrics_directory_is_used_and_kept(
        tmp_path: Path, backend: Backend) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(f'[upstream]\nurl = "{backend.url}"\n[audit]\nsink = "stderr"\n'
                      '[[routes]]\nmatch = "/api/public/**"\naccess = "public"\n',
                      encoding="utf-8")
    chosen = tmp_path / "prom"
    chosen.mkdir()
    server = _serve(config, free_port(), 2, {"PROMETHEUS_MULTIPROC_DIR": str(chosen)})
    server.start(timeout=60)
    try:
        for _ in range(3):
            assert httpx.get(server.url + "/api/public/hello", timeout=20).status_code == 200
        assert _count(scrape(server.url), REQUESTS, access="public", status_class="2xx") == 3
    finally:
        server.stop()
    assert any(chosen.glob("histogram_*.db"))

