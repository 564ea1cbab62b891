"""Prometheus metrics for ``/__gateway/metrics`` (prometheus_client, a registry per app)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest


class Metrics:
    # The classic text format every Prometheus (and most scrapers) reads; our metric and label
    # names are plain, so the body is the same in 0.0.4 and prometheus_client's newer 1.0.0.
    content_type = "text/plain; version=0.0.4; charset=utf-8"

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._events = Counter("gateway_auth_events", "Audit events by event and outcome",
                               ["event", "outcome"], registry=self.registry)
        self._responses = Counter("gateway_http_responses", "Responses sent, by status code",
                                  ["code"], registry=self.registry)
        self._gauges: list[Gauge] = []

    def event(self, name: str, outcome: str) -> None:
        self._events.labels(name, outcome).inc()

    def response(self, status: int) -> None:
        self._responses.labels(str(status)).inc()

    def gauge(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        gauge = Gauge(name, documentation, registry=self.registry)
        gauge.set_function(read)
        self._gauges.append(gauge)

    def render(self) -> bytes:
        return generate_latest(self.registry)
