"""Prometheus metrics for ``/__gateway/metrics`` (prometheus_client, a registry per app)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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
        # labels() looks its child up under a lock on every call: keep the children, since
        # every request counts at least one response and usually one event.
        self._event_children: dict[tuple[str, str], Any] = {}
        self._response_children: dict[int, Any] = {}

    def event(self, name: str, outcome: str) -> None:
        child = self._event_children.get((name, outcome))
        if child is None:
            child = self._events.labels(name, outcome)
            self._event_children[(name, outcome)] = child
        child.inc()

    def response(self, status: int) -> None:
        child = self._response_children.get(status)
        if child is None:
            child = self._responses.labels(str(status))
            self._response_children[status] = child
        child.inc()

    def gauge(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        gauge = Gauge(name, documentation, registry=self.registry)
        gauge.set_function(read)
        self._gauges.append(gauge)

    def render(self) -> bytes:
        return generate_latest(self.registry)
