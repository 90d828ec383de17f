"""What metrics cost: each recording call in nanoseconds beside ``prometheus_client`` doing the
same, and ``GET /health`` throughput with ``/metrics`` on and off.

    python -m benchmarks.metrics_bench [--calls 200000] [--seconds 3] [--rounds 3] [--no-http]

**Calls.** In this process, each call is timed over ``--calls`` repetitions, in seven rounds that
alternate between all the calls, and each call's fastest round is kept (the least disturbed by
the machine's other work):

- ``token``: :meth:`RequestMetrics.token`, what a backend calls per generated token (a clock
  read, the inter-token histogram, the token counter);
- ``request``: a whole generation request's calls (``request``, ``started``, 32 tokens,
  ``finished``), per call;
- ``http``: the access hook: the route lookup and :meth:`Metrics.http_request`;
- the ``prometheus_client`` equivalents, when it is installed: ``Histogram.observe`` plus
  ``Counter.inc`` for a token, a labelled counter and histogram for an HTTP request.

A token's share is its cost over the time a token takes: 7.2 ms for the default model on this
machine (SmolLM2-135M, README benchmarks) and 0.17 ms for the tiny test model.

**HTTP.** ``python -m helios_raw --no-model --no-access-log`` with and without ``--no-metrics``,
loaded by ``wrk`` at 1 and 16 connections, alternating round after round; requests/s medians and
their ratio. Results go to ``benchmarks/results/metrics_bench.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

from helios_raw.app import App
from helios_raw.http.request import Request
from helios_raw.metrics import Metrics
from helios_raw.metrics.route import access_recorder

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "metrics_bench.json")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKEN_SECONDS = {"default model": 7.2e-3, "tiny model": 0.17e-3}


def per_call_ns(calls: dict, repeat: int, rounds: int = 7) -> dict:
    """Nanoseconds per call of each of ``calls`` (name -> function), each timed ``repeat`` times
    per round, the rounds alternating between them; the fastest round is kept (the one the
    machine's other work disturbed least), less the empty loop's cost."""
    best = {name: float("inf") for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            start = time.perf_counter_ns()
            for _ in range(repeat):
                call()
            best[name] = min(best[name], (time.perf_counter_ns() - start) / repeat)
    start = time.perf_counter_ns()
    for _ in range(repeat):
        pass
    empty = (time.perf_counter_ns() - start) / repeat
    return {name: value - empty for name, value in best.items()}


def our_calls() -> dict:
    metrics = Metrics("bench")
    tracker = metrics.request()
    tracker.token()

    def whole_request() -> None:
        request = metrics.request()
        request.started()
        for _ in range(32):
            request.token()
        request.finished(20, 32, 8, "stop")

    app = App()
    app.add_route("GET", "/health", lambda r: None)
    app.add_route("GET", "/v1/models/{model}", lambda r: None)
    record = access_recorder(metrics, app.router)
    static = Request("GET", b"/health", [])
    templated = Request("GET", b"/v1/models/tiny", [])
    return {
        "token": tracker.token,
        "request of 32 tokens / 34": whole_request,
        "http, static route": lambda: record(static, 200, 0.001),
        "http, templated route": lambda: record(templated, 200, 0.001),
    }


def their_calls() -> dict:
    try:
        import prometheus_client as prom
    except ImportError:
        return {}
    registry = prom.CollectorRegistry()
    itl = prom.Histogram("itl_seconds", "x", buckets=(0.001, 0.005, 0.01, 0.05, 0.1), registry=registry)
    tokens = prom.Counter("tokens", "x", registry=registry)
    requests = prom.Counter("requests", "x", ("method", "route", "status"), registry=registry)
    duration = prom.Histogram("duration_seconds", "x", ("method", "route"), registry=registry)

    def token() -> None:
        itl.observe(0.007)
        tokens.inc()

    def http() -> None:
        requests.labels("GET", "/health", "200").inc()
        duration.labels("GET", "/health").observe(0.001)

    return {"prometheus_client token": token, "prometheus_client http": http}


def call_costs(repeat: int) -> tuple[dict, dict]:
    ours, theirs = our_calls(), their_calls()
    timed = per_call_ns({**ours, **theirs}, repeat)
    timed["request of 32 tokens / 34"] /= 34  # per call: request, started, 32 tokens, finished
    return ({name: timed[name] for name in ours},
            {"token": timed.get("prometheus_client token"), "http, static route": timed.get("prometheus_client http")})


def http_rows(seconds: float, rounds: int) -> list:
    from .load import ServerProcess, compare

    argv = [sys.executable, "-m", "helios_raw", "--no-model", "--no-access-log", "--bind", "127.0.0.1:0"]
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("HELIOS_API_KEY", None)
    servers = {"metrics on": ServerProcess(argv, env=env, cwd=ROOT),
               "metrics off": ServerProcess(argv + ["--no-metrics"], env=env, cwd=ROOT)}
    try:
        summaries = compare({name: s.url("/health") for name, s in servers.items()}, connections=(1, 16),
                            seconds=seconds, rounds=rounds, warmup=1.0)
    finally:
        for server in servers.values():
            server.stop()
    rows = []
    for count in (1, 16):
        on, off = (next(s for s in summaries if s.target == name and s.connections == count)
                   for name in ("metrics on", "metrics off"))
        rows.append({"connections": count, "on_rps": round(on.requests_per_second),
                     "off_rps": round(off.requests_per_second),
                     "ratio": round(on.requests_per_second / off.requests_per_second, 3)})
    return rows


def report(results: dict) -> str:
    lines = ["| call | helios_raw ns | prometheus_client ns |", "|---|---:|---:|"]
    theirs = results["prometheus_client"]
    for name, value in results["calls"].items():
        other = theirs.get(name)
        lines.append(f"| {name} | {value:.0f} | {'' if other is None else f'{other:.0f}'} |")
    token = results["calls"]["token"]
    for model, seconds in TOKEN_SECONDS.items():
        lines.append(f"\nA token's recording is {token / (seconds * 1e9) * 100:.4f} % of a {model} token "
                     f"({seconds * 1e3:g} ms).")
    if results["http"]:
        lines += ["", "| connections | /health req/s, metrics on | off | on / off |", "|---:|---:|---:|---:|"]
        for row in results["http"]:
            lines.append(f"| {row['connections']} | {row['on_rps']:,} | {row['off_rps']:,} | {row['ratio']:.3f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=50_000, help="repetitions of each call per round")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-http", action="store_true", help="only the per-call timings")
    args = parser.parse_args(argv)
    results = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d")},
        "calls": None,
        "prometheus_client": None,
        "http": [] if args.no_http else http_rows(args.seconds, args.rounds),
    }
    results["calls"], results["prometheus_client"] = call_costs(args.calls)
    text = report(results)
    print(text)
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
