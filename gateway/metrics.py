"""Prometheus metrics for ``/__gateway/metrics`` (prometheus_client, a registry per app)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST


class Metrics:
    content_type = CONTENT_TYPE_LATEST

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
