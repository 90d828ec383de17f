"""What the server counts, and the cheap calls that count it.

A server owns one :class:`Metrics`. The HTTP layer calls :meth:`Metrics.http_request` once per
answered request; a backend calls :meth:`Metrics.request` when a generation request arrives and
reports that request's life on the :class:`RequestMetrics` it gets back; a proxy reports
:meth:`Metrics.upstream_error`; state (queue length, KV-cache use) is read at scrape time from
callables given to :meth:`Metrics.gauge`.

Recording takes one lock, updates a dict or a list, and for a histogram bisects a tuple of
bounds: well under a microsecond, from any thread (a model's generation thread included).
Nothing is formatted until a scrape asks for :meth:`Metrics.snapshot`.

Names follow vLLM's (``vllm:time_to_first_token_seconds`` is ``helios_time_to_first_token_seconds``
here) so that dashboards port; model-level families carry vLLM's ``model_name`` label.
"""

from __future__ import annotations

import logging
import threading
from bisect import bisect_left
from time import perf_counter
from typing import Callable, Optional

log = logging.getLogger("helios_raw.metrics")

#: Seconds: an HTTP request from its head to its last byte (a health check to a long stream).
HTTP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                60.0, 120.0, 300.0, 600.0)
#: Seconds to the first token (vLLM's bounds).
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
#: Seconds between tokens: vLLM's bounds, with finer ones below 10 ms where small CPU models run.
ITL_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5,
               0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
#: Seconds for a whole request or its wait in the queue.
REQUEST_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0,
                   40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)

#: Gauges a backend may report, by the name after ``helios_``, with their help text.
GAUGES = {
    "num_requests_running": "Requests being generated now.",
    "num_requests_waiting": "Requests waiting for a slot.",
    "kv_cache_usage_perc": "Fraction of the KV cache in use, from 0 to 1.",
    "num_slots": "Sequences the model can generate at once.",
    "num_slots_in_use": "Sequences being generated now.",
}

#: HTTP methods counted by name; any other is counted as ``other``.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
#: Finish reasons counted by name; any other is counted as ``other``.
FINISH_REASONS = frozenset({"stop", "length", "tool_calls", "content_filter", "function_call", "abort", "error"})

#: Kinds of :meth:`Metrics.upstream_error`.
UPSTREAM_ERRORS = ("connect", "connect_timeout", "read_timeout", "status_4xx", "status_5xx", "protocol",
                   "error_event")


class Counter:
    """A counter family: per tuple of label values, a one-item list holding the count (a cell a
    hot path may keep and update in place, under the lock)."""

    kind = "counter"
    __slots__ = ("name", "help", "labels", "model_label", "cells", "_lock")

    def __init__(self, name: str, help: str, labels: tuple, lock: threading.Lock, model_label: bool = False) -> None:
        self.name, self.help, self.labels, self.model_label = name, help, labels, model_label
        self.cells: dict = {} if labels else {(): [0]}
        self._lock = lock

    def cell(self, key: tuple = ()) -> list:
        cell = self.cells.get(key)
        if cell is None:
            with self._lock:
                cell = self.cells.setdefault(key, [0])
        return cell

    def inc(self, key: tuple = (), amount: float = 1) -> None:
        cell = self.cell(key)
        with self._lock:
            cell[0] += amount

    def samples(self) -> list:
        return [[list(key), cell[0]] for key, cell in self.cells.items()]


class Histogram:
    """A histogram family: per tuple of label values, a list of a count per bucket (``le``
    bound), the +Inf bucket's count, then the sum of the observed values."""

    kind = "histogram"
    __slots__ = ("name", "help", "labels", "model_label", "bounds", "series", "_lock")

    def __init__(self, name: str, help: str, labels: tuple, bounds: tuple, lock: threading.Lock,
                 model_label: bool = False) -> None:
        self.name, self.help, self.labels, self.model_label = name, help, labels, model_label
        self.bounds = bounds
        self.series: dict = {}
        self._lock = lock

    def cell(self, key: tuple = ()) -> list:
        series = self.series.get(key)
        if series is None:
            with self._lock:
                series = self.series.setdefault(key, [0] * (len(self.bounds) + 2))
        return series

    def observe(self, value: float, key: tuple = (), count: int = 1) -> None:
        """Record ``count`` observations of ``value``."""
        series = self.cell(key)
        index = bisect_left(self.bounds, value)
        with self._lock:
            series[index] += count
            series[-1] += value * count

    def samples(self) -> list:
        return [[list(key), list(series)] for key, series in self.series.items()]


class Metrics:
    """Every metric of one server process. ``model_name`` labels the model-level families."""

    def __init__(self, model_name: str = "") -> None:
        self.model_name = model_name
        self.lock = lock = threading.Lock()
        self.http_requests = Counter(
            "helios_http_requests_total", "HTTP requests answered, by method, route template and status "
            "(499: the client left before an answer started).", ("method", "route", "status"), lock)
        self.http_duration = Histogram(
            "helios_http_request_duration_seconds", "Seconds from a request's head to its answer's last byte.",
            ("method", "route"), HTTP_BUCKETS, lock)
        self.cancelled = Counter(
            "helios_requests_cancelled_total", "Requests whose client left before the answer ended "
            "(the generation stopped with it).", ("route",), lock)
        self.queue_time = Histogram(
            "helios_request_queue_time_seconds", "Seconds a request waited before its generation started.",
            (), REQUEST_BUCKETS, lock, True)
        self.ttft = Histogram(
            "helios_time_to_first_token_seconds", "Seconds from a request's arrival to its first token.",
            (), TTFT_BUCKETS, lock, True)
        self.itl = Histogram(
            "helios_inter_token_latency_seconds", "Seconds between consecutive tokens of one request.",
            (), ITL_BUCKETS, lock, True)
        self.e2e = Histogram(
            "helios_e2e_request_latency_seconds", "Seconds from a request's arrival to its last token.",
            (), REQUEST_BUCKETS, lock, True)
        self.prompt_tokens = Counter("helios_prompt_tokens_total", "Prompt tokens of finished requests.",
                                     (), lock, True)
        self.generation_tokens = Counter("helios_generation_tokens_total", "Tokens generated.", (), lock, True)
        self.prefix_queries = Counter("helios_prefix_cache_queries_total",
                                      "Prompt tokens looked up in the prefix cache.", (), lock, True)
        self.prefix_hits = Counter("helios_prefix_cache_hits_total",
                                   "Prompt tokens found in the prefix cache (reused, not computed).", (), lock, True)
        self.success = Counter("helios_request_success_total", "Generation requests finished, by finish reason "
                               "(abort: the client left).", ("finished_reason",), lock, True)
        self.upstream_errors = Counter("helios_upstream_errors_total", "Failures of the remote upstream, by kind.",
                                       ("kind",), lock)
        self._gauges: dict[str, Callable[[], float]] = {}
        self._http: dict[tuple, tuple] = {}
        self.ttft_series, self.itl_series = self.ttft.cell(), self.itl.cell()
        self.tokens_cell = self.generation_tokens.cell()
        self.model_families = (self.queue_time, self.ttft, self.itl, self.e2e, self.prompt_tokens,
                               self.generation_tokens, self.prefix_queries, self.prefix_hits, self.success)

    # -- recording ---------------------------------------------------------------------------

    def http_request(self, method: str, route: str, status: int, seconds: float, cancelled: bool) -> None:
        """One answered HTTP request. ``route`` is the matched template and ``method`` one of
        :data:`METHODS` (else ``other``), so the label values stay few whatever clients send."""
        cells = self._http.get((method, route, status))
        if cells is None:
            if method not in METHODS:
                method = "other"
            cells = self._http[(method, route, status)] = (
                self.http_requests.cell((method, route, str(status))), self.http_duration.cell((method, route)))
        count, series = cells
        index = bisect_left(HTTP_BUCKETS, seconds)
        with self.lock:
            count[0] += 1
            series[index] += 1
            series[-1] += seconds
        if cancelled:
            self.cancelled.inc((route,))

    def request(self) -> "RequestMetrics":
        """A generation request has arrived; report its life on the object returned."""
        return RequestMetrics(self)

    def upstream_error(self, kind: str) -> None:
        """The upstream failed a request; ``kind`` is one of :data:`UPSTREAM_ERRORS`."""
        if kind not in UPSTREAM_ERRORS:
            raise ValueError(f"unknown upstream error kind {kind!r}; known: {', '.join(UPSTREAM_ERRORS)}")
        self.upstream_errors.inc((kind,))

    def gauge(self, name: str, read: Optional[Callable[[], float]]) -> None:
        """Report ``helios_<name>`` as ``read()`` at every scrape (None stops reporting it);
        ``name`` is one of :data:`GAUGES`."""
        if name not in GAUGES:
            raise ValueError(f"unknown gauge {name!r}; known: {', '.join(GAUGES)}")
        if read is None:
            self._gauges.pop(name, None)
        else:
            self._gauges[name] = read

    # -- reading -----------------------------------------------------------------------------

    def snapshot(self, model_level: bool = True) -> list:
        """Every family as plain data (see :mod:`.exposition`); without ``model_level``, only
        the HTTP and upstream families (a server with no model)."""
        families = [self.http_requests, self.http_duration, self.cancelled, self.upstream_errors]
        if model_level:
            families[3:3] = self.model_families
        with self.lock:
            out = [_family(f, self.model_name) for f in families]
        if model_level:
            out.extend(self._read_gauges())
        return out

    def _read_gauges(self) -> list:
        out = []
        for name, read in list(self._gauges.items()):
            try:
                value = float(read())
            except Exception as exc:  # a backend's reader failing must not fail the scrape
                log.debug("gauge %s could not be read: %s", name, exc)
                continue
            out.append({"name": "helios_" + name, "type": "gauge", "help": GAUGES[name], "labels": ["model_name"],
                        "samples": [[[self.model_name], value]]})
        return out


class RequestMetrics:
    """One generation request, from its arrival (when this was made) to :meth:`finished`.

    A backend calls :meth:`started` when the request leaves the queue, :meth:`token` as tokens
    are generated, and :meth:`finished` exactly once. Times are taken here.
    """

    __slots__ = ("metrics", "arrived", "last", "generated")

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.arrived = self.last = perf_counter()
        self.generated = 0

    def started(self) -> None:
        """Generation begins (the prompt is being evaluated): records the time queued."""
        self.metrics.queue_time.observe(perf_counter() - self.arrived)

    def token(self, count: int = 1) -> None:
        """``count`` tokens were generated just now (more than one when they came together):
        the first gives the time to first token, each later one an inter-token latency."""
        now = perf_counter()
        metrics = self.metrics
        if self.generated:
            seconds = (now - self.last) / count
            series, index, observed = metrics.itl_series, bisect_left(ITL_BUCKETS, seconds), count
        else:
            seconds = now - self.arrived
            series, index, observed = metrics.ttft_series, bisect_left(TTFT_BUCKETS, seconds), 1
        with metrics.lock:
            series[index] += observed
            series[-1] += seconds * observed
            metrics.tokens_cell[0] += count
        self.last = now
        self.generated += count

    def finished(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0,
                 reason: str = "stop") -> None:
        """The request is over. The counts are its usage (``cached_tokens``: prompt tokens reused
        from the prefix cache); ``reason`` its finish reason (``stop``, ``length``, ``tool_calls``),
        ``abort`` if the client left, ``error`` if it failed. Tokens beyond those reported by
        :meth:`token` are counted now, so a backend that only knows the usage reports it here."""
        metrics = self.metrics
        metrics.e2e.observe(perf_counter() - self.arrived)
        metrics.success.inc((reason if reason in FINISH_REASONS else "other",))
        metrics.prompt_tokens.inc((), prompt_tokens)
        metrics.prefix_queries.inc((), prompt_tokens)
        metrics.prefix_hits.inc((), cached_tokens)
        if completion_tokens > self.generated:
            metrics.generation_tokens.inc((), completion_tokens - self.generated)
            self.generated = completion_tokens


def _family(family, model_name: str) -> dict:
    """A family as plain data (called with the metrics lock held)."""
    data = {"name": family.name, "type": family.kind, "help": family.help, "labels": list(family.labels),
            "samples": family.samples()}
    if family.kind == "histogram":
        data["bounds"] = list(family.bounds)
    if family.model_label:
        data["labels"].insert(0, "model_name")
        for sample in data["samples"]:
            sample[0].insert(0, model_name)
    return data
