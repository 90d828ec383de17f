"""Reading ``GET /metrics`` the way Prometheus would: with ``prometheus_client``'s own parser."""

from __future__ import annotations

from typing import Optional

from prometheus_client.parser import text_string_to_metric_families

from tests.support.rawhttp import Client


class Scrape:
    """One parsed exposition: ``families`` by name (``prometheus_client`` Metric objects, counter
    names without ``_total``) and every sample's value by sample name and labels."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.families = {family.name: family for family in text_string_to_metric_families(text)}
        self.values: dict = {}
        for family in self.families.values():
            for sample in family.samples:
                key = (sample.name, frozenset(sample.labels.items()))
                assert key not in self.values, f"sample {key} appears twice"
                self.values[key] = sample.value

    def value(self, name: str, **labels: str) -> Optional[float]:
        """The sample ``name`` with exactly ``labels``; None if absent."""
        return self.values.get((name, frozenset(labels.items())))

    def series(self, name: str) -> dict:
        """Every sample called ``name``: its labels (a frozenset of pairs) -> value."""
        return {labels: value for (sample, labels), value in self.values.items() if sample == name}

    def total(self, name: str, **match: str) -> float:
        """The sum of the samples called ``name`` whose labels include ``match``."""
        return sum(value for labels, value in self.series(name).items() if set(match.items()) <= labels)


def scrape(port: int, headers: Optional[list] = None) -> Scrape:
    """``GET /metrics`` on a fresh connection, checked for status and content type, then parsed."""
    with Client(port) as client:
        client.request("GET", "/metrics", headers)
        answer = client.read_response()
    assert answer.status == 200, answer.body[:500]
    assert answer.header("content-type") == "text/plain; version=0.0.4; charset=utf-8"
    return Scrape(answer.body.decode("utf-8"))
