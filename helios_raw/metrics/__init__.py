"""Prometheus metrics: recording (:mod:`.recording`), the text format (:mod:`.exposition`), the
``/metrics`` route (:mod:`.route`) and, with several workers, one scrape covering them all
(:mod:`.peers`). The text is written here rather than with ``prometheus_client``: recording a
token must stay a sub-microsecond lock and list update (``benchmarks/metrics_bench.py`` compares)."""

from .exposition import CONTENT_TYPE, render
from .peers import Peers
from .recording import GAUGES, UPSTREAM_ERRORS, Metrics, RequestMetrics
from .route import MetricsRoute, access_recorder

__all__ = ["CONTENT_TYPE", "GAUGES", "Metrics", "MetricsRoute", "Peers", "RequestMetrics", "UPSTREAM_ERRORS",
           "access_recorder", "render"]
