"""Prometheus metrics for ``/__gateway/metrics`` (prometheus_client, a registry per app).

Every worker of ``gateway serve --workers N`` is one process with its own numbers; a scrape
reaches one of them. So ``gateway serve`` sets ``PROMETHEUS_MULTIPROC_DIR`` to a fresh
directory before any worker starts (``gateway.cli._metrics_dir``): prometheus_client keeps
each worker's values in files there, and a scrape answered by any worker merges them all
(``MultiProcessCollector``). Without that variable (tests, an embedding app) the numbers are
this process's own. Labels are small fixed vocabularies, never paths or user ids: see
``docs/deployment.md#metrics`` for the list.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any, Literal

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from gateway.vocabulary import RouteAccess

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Where a request went: its route's access level (RouteAccess, gateway/vocabulary.py);
# "gateway" for the gateway's own endpoints, "none" for a request refused before any route was
# chosen (a bad path).
AccessLevel = Literal[RouteAccess, "gateway", "none"]
# The auth backend's endpoints the gateway calls ("probe" is the readiness check).
AuthEndpoint = Literal["validate", "refresh", "guest", "login", "logout", "probe", "other"]
# How one HTTP try ended: by status class, or without an answer.
CallOutcome = Literal["2xx", "3xx", "4xx", "5xx", "network", "timeout"]
StatusClass = Literal["1xx", "2xx", "3xx", "4xx", "5xx"]

# From a cache hit (about a millisecond) to a slow upload (a minute).
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            30.0, 60.0)
_GAUGE_REFRESH_S = 1.0


def status_class(status: int) -> StatusClass:
    if status < 200:
        return "1xx"
    if status < 300:
        return "2xx"
    if status < 400:
        return "3xx"
    if status < 500:
        return "4xx"
    return "5xx"


def call_outcome(status: int) -> CallOutcome:
    """The outcome label of an HTTP try that got an answer."""
    cls = status_class(status)
    return "2xx" if cls == "1xx" else cls


def multiprocess_enabled() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


class Metrics:
    # The classic text format every Prometheus (and most scrapers) reads; our metric and label
    # names are plain, so the body is the same in 0.0.4 and prometheus_client's newer 1.0.0.
    content_type = "text/plain; version=0.0.4; charset=utf-8"

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._events = Counter("gateway_auth_events", "Audit events by event and outcome",
                               ["event", "outcome"], registry=r)
        self._responses = Counter("gateway_http_responses", "Responses sent, by status code",
                                  ["code"], registry=r)
        self._requests = Histogram(
            "gateway_request_duration_seconds",
            "Time from a request's arrival to the end of its response, by the route's access "
            "level and the status class", ["access", "status_class"], buckets=_BUCKETS,
            registry=r)
        self._upstream = Histogram(
            "gateway_upstream_duration_seconds",
            "Time from sending a request upstream to the upstream's response head, by outcome",
            ["outcome"], buckets=_BUCKETS, registry=r)
        self._auth_calls = Histogram(
            "gateway_auth_call_duration_seconds",
            "One HTTP try at an auth endpoint, by endpoint and outcome",
            ["endpoint", "outcome"], buckets=_BUCKETS, registry=r)
        # livesum: the sum over the workers that are alive (a dead worker's file is dropped).
        self.in_flight = Gauge("gateway_requests_in_flight", "HTTP requests being handled",
                               registry=r, multiprocess_mode="livesum")
        self.upstream_in_use = Gauge(
            "gateway_upstream_connections_in_use",
            "Upstream pool slots held by requests being forwarded (upstream.max_connections "
            "per worker)", registry=r, multiprocess_mode="livesum")
        self._sampled: list[tuple[Gauge, Callable[[], float]]] = []
        self._sampled_at = 0.0
        # labels() looks its child up under a lock on every call: keep the children, since
        # every request counts a response, observes its duration and usually counts an event.
        self._children: dict[tuple[object, tuple[str, ...]], Any] = {}

    def _child(self, metric: Counter | Histogram, *labels: str) -> Any:
        """``metric.labels(*labels)``, looked up once per label set (the sets are bounded)."""
        key = (metric, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def event(self, name: str, outcome: str) -> None:
        self._child(self._events, name, outcome).inc()

    def response(self, status: int) -> None:
        self._child(self._responses, str(status)).inc()

    def request(self, access: AccessLevel, status: int, seconds: float) -> None:
        self._child(self._requests, access, status_class(status)).observe(seconds)
        self.sample(force=False)

    def upstream(self, outcome: CallOutcome, seconds: float) -> None:
        self._child(self._upstream, outcome).observe(seconds)

    def auth_call(self, endpoint: AuthEndpoint, outcome: CallOutcome, seconds: float) -> None:
        self._child(self._auth_calls, endpoint, outcome).observe(seconds)

    def gauge(self, name: str, documentation: str, read: Callable[[], float],
              mode: Literal["livesum", "livemin", "livemax"] = "livesum") -> None:
        """A gauge read from ``read``: sampled on each scrape and at most once a second
        after a request (a callback gauge would be invisible to other workers' scrapes)."""
        gauge = Gauge(name, documentation, registry=self.registry, multiprocess_mode=mode)
        gauge.set(read())
        self._sampled.append((gauge, read))

    def sample(self, *, force: bool = True) -> None:
        now = time.monotonic()
        if not force and now - self._sampled_at < _GAUGE_REFRESH_S:
            return
        self._sampled_at = now
        for gauge, read in self._sampled:
            gauge.set(read())

    def render(self) -> bytes:
        self.sample()
        if multiprocess_enabled():
            merged = CollectorRegistry()
            multiprocess.MultiProcessCollector(merged)  # type: ignore[no-untyped-call]
            return generate_latest(merged)
        return generate_latest(self.registry)

    @staticmethod
    def process_exiting() -> None:
        """Drop this worker's live gauges from the shared directory."""
        if multiprocess_enabled():
            multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]
