"""Proxy throughput at 1 and 2 workers, side by side in one run.

    python -m benchmarks.workers_bench [--seconds 5] [--rounds 3] [--connections 32] [--workers 1,2]

The proxy is ``python -m helios_raw --backend remote --no-access-log --workers N`` in front of an
upstream that costs next to nothing (the ``h11`` ceiling of ``ceilings.py``: it parses each
request and answers a fixed JSON body, standing for an inference cluster much larger than this
machine), so the proxy itself is what is loaded. ``wrk`` (one thread, keep-alive) sends
non-streamed ``POST /v1/chat/completions`` requests through it, and ``GET /health`` for the HTTP
layer alone. Servers and ``wrk`` share the machine's cores, as they would on one box; rounds
alternate between the worker counts so that drifts in the machine's load fall on all alike.

Prints requests/s medians with their ratio to one worker and writes
``benchmarks/results/workers_bench.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .ceilings import start_ceiling
from .load import ServerProcess, ensure_wrk, parse_wrk_output, wait_quiet

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "workers_bench.json"
CHAT = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 16})
SCRIPT = f"""wrk.method = "POST"
wrk.body = '{CHAT}'
wrk.headers["Content-Type"] = "application/json"
"""


def start_proxy(config: Path, workers: int) -> ServerProcess:
    argv = [sys.executable, "-m", "helios_raw", "--backend", "remote", "--config", str(config), "--no-access-log",
            "--bind", "127.0.0.1:0", "--workers", str(workers)]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("HELIOS_API_KEY", None)
    return ServerProcess(argv, env=env, cwd=str(ROOT))


def load(url: str, connections: int, seconds: float, script: str = "") -> float:
    """Requests/s of one wrk run; raises if any request failed."""
    argv = [ensure_wrk(), "--latency", "-t", "1", "-c", str(connections), "-d", f"{max(1, round(seconds))}s",
            "--timeout", "5s"] + (["-s", script] if script else []) + [url]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30)
    result = parse_wrk_output(done.stdout, connections)
    if result.errors:
        raise RuntimeError(f"{result.errors} requests failed:\n{done.stdout}")
    return result.requests_per_second


def run(worker_counts: list, connections: int, seconds: float, rounds: int, workdir: Path) -> dict:
    script = workdir / "chat.lua"
    script.write_text(SCRIPT)
    upstream = start_ceiling("h11")
    config = workdir / "proxy.toml"
    config.write_text(f'[remote]\nbase_url = "http://127.0.0.1:{upstream.port}/v1"\nmodel_name = "tiny"\n'
                      f'max_connections = {connections}\n')
    proxies = {n: start_proxy(config, n) for n in worker_counts}
    samples: dict = {(n, kind): [] for n in worker_counts for kind in ("chat", "health")}
    try:
        for proxy in proxies.values():  # warm-up: every worker's upstream pool filled
            load(proxy.url("/v1/chat/completions"), connections, 1, str(script))
        for number in range(rounds):
            order = worker_counts[number % len(worker_counts):] + worker_counts[:number % len(worker_counts)]
            for n in order:
                for kind, path, lua in (("chat", "/v1/chat/completions", str(script)), ("health", "/health", "")):
                    wait_quiet(0.3)
                    samples[(n, kind)].append(load(proxies[n].url(path), connections, seconds, lua))
    finally:
        for proxy in proxies.values():
            proxy.stop()
        upstream.stop()
    rows = []
    for kind in ("chat", "health"):
        base = statistics.median(samples[(worker_counts[0], kind)])
        for n in worker_counts:
            rps = statistics.median(samples[(n, kind)])
            rows.append({"route": kind, "workers": n, "requests_per_second": round(rps),
                         "ratio": round(rps / base, 3), "runs": [round(r) for r in samples[(n, kind)]]})
    return {"machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                        "date": time.strftime("%Y-%m-%d")},
            "connections": connections, "seconds": seconds, "rounds": rounds, "rows": rows}


def report(results: dict) -> str:
    lines = [f"{results['connections']} connections, {results['rounds']} rounds of {results['seconds']:g} s, "
             f"{results['machine']['cpus']} cores", "",
             "| route | workers | requests/s | vs 1 worker |", "|---|---:|---:|---:|"]
    for row in results["rows"]:
        route = "POST /v1/chat/completions (proxied)" if row["route"] == "chat" else "GET /health"
        lines.append(f"| {route} | {row['workers']} | {row['requests_per_second']:,} | {row['ratio']:.2f}x |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--workers", default="1,2", help="worker counts, comma-separated (the first is the base)")
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.workers.split(",")]
    with tempfile.TemporaryDirectory() as workdir:
        results = run(counts, args.connections, args.seconds, args.rounds, Path(workdir))
    print(report(results))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
