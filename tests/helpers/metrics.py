"""Reading ``/__gateway/metrics`` the way Prometheus does (prometheus_client's own parser)."""

from __future__ import annotations

from collections.abc import Mapping

import httpx
from prometheus_client.parser import text_string_to_metric_families

Sample = tuple[str, frozenset[tuple[str, str]]]


class Scrape:
    """One scrape: every sample by name and labels; absent samples read as 0."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.values: dict[Sample, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                self.values[(sample.name, frozenset(sample.labels.items()))] = sample.value

    def get(self, name: str, **labels: str) -> float:
        return self.values.get((name, frozenset(labels.items())), 0.0)

    def names(self) -> set[str]:
        return {name for name, _ in self.values}

    def label_values(self, name: str, label: str) -> set[str]:
        return {dict(labels)[label] for n, labels in self.values if n == name
                and label in dict(labels)}


def scrape(url: str, prefix: str = "/__gateway") -> Scrape:
    reply = httpx.get(url + prefix + "/metrics", timeout=20)
    reply.raise_for_status()
    return Scrape(reply.text)


def delta(before: Scrape, after: Scrape, name: str, **labels: str) -> float:
    return after.get(name, **labels) - before.get(name, **labels)


def deltas(before: Scrape, after: Scrape, name: str, label_sets: Mapping[str, dict[str, str]]
           ) -> dict[str, float]:
    """``{key: change}`` for each named label set of ``name``."""
    return {key: delta(before, after, name, **labels) for key, labels in label_sets.items()}
