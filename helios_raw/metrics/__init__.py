"""Prometheus metrics: recording (:mod:`.recording`), the text format (:mod:`.exposition`), one
scrape covering several workers (:mod:`.peers`), and the ``/metrics`` route with the access hook
(:mod:`.route`, the one module here that knows HTTP: backends import this package, not it).

The text is written here rather than with ``prometheus_client``: recording a token stays a
clock read, a bisect and a locked list update (``benchmarks/metrics_bench.py`` compares the two).
"""

from .exposition import CONTENT_TYPE, render
from .peers import Peers
from .recording import GAUGES, UPSTREAM_ERRORS, Metrics, RequestMetrics

__all__ = ["CONTENT_TYPE", "GAUGES", "Metrics", "Peers", "RequestMetrics", "UPSTREAM_ERRORS", "render"]
