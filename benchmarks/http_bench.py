"""``GET /health`` throughput and latency of helios_raw beside two ceilings, in one run.

    python -m benchmarks.http_bench [--seconds 3] [--rounds 3] [--connections 1,16,64]

Starts three servers as subprocesses, each on a free port:

- ``fixed ceiling``: asyncio answering a canned response without parsing (benchmarks/ceilings.py);
- ``h11 ceiling``: asyncio + h11 parsing each request, canned response, no routing;
- ``helios_raw``: ``python -m helios_raw --no-model --no-access-log`` (``/health`` and nothing else
  to load); with ``--access-log`` a fourth, ``helios_raw +log``, logs every request to a file.

then loads each with ``wrk`` (keep-alive, one wrk thread) at each connection count, alternating
between the servers round after round, and prints medians and the ratios to the ceilings. The
results go to ``benchmarks/results/http_bench.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import subprocess
import sys

import h11

from .ceilings import start_ceiling
from .load import ServerProcess, compare, ensure_wrk, markdown_table

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = "helios_raw"


def start_helios(access_log_file: str = "") -> ServerProcess:
    """helios_raw from this checkout on a free port, without a model; access log to a file if given."""
    argv = [sys.executable, "-m", "helios_raw", "--no-model", "--bind", "127.0.0.1:0"]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("HELIOS_API_KEY", None)
    if not access_log_file:
        return ServerProcess(argv + ["--no-access-log"], env=env, cwd=ROOT)
    # The access log goes to a file, as in production, not through a pipe the benchmark must drain.
    script = (
        "import logging, sys\n"
        "from helios_raw.cli import main\n"
        "handler = logging.FileHandler(sys.argv.pop(1))\n"
        "logging.getLogger('helios_raw.access').addHandler(handler)\n"
        "logging.getLogger('helios_raw.access').propagate = False\n"
        "raise SystemExit(main(sys.argv[1:]))\n"
    )
    return ServerProcess([sys.executable, "-c", script, access_log_file] + argv[3:], env=env, cwd=ROOT)


def machine() -> dict:
    wrk = subprocess.run([ensure_wrk(), "--version"], capture_output=True, text=True)
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "h11": h11.__version__,
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "wrk": (wrk.stdout or wrk.stderr).splitlines()[0] if (wrk.stdout or wrk.stderr) else "wrk",
    }


def ratios(summaries) -> list:
    """helios_raw's requests/s as a fraction of each ceiling's, per connection count."""
    by_key = {(s.target, s.connections): s.requests_per_second for s in summaries}
    rows = []
    for count in sorted({s.connections for s in summaries}):
        ours = by_key[(TARGET, count)]
        rows.append({
            "connections": count,
            "vs_h11_ceiling": ours / by_key[("h11 ceiling", count)],
            "vs_fixed_ceiling": ours / by_key[("fixed ceiling", count)],
        })
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per wrk run (default 3)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over all servers (default 3)")
    parser.add_argument("--connections", default="1,16,64", help="comma-separated connection counts")
    parser.add_argument("--access-log", action="store_true", help="also run helios_raw with its access log on")
    parser.add_argument("--out", default=RESULTS, help="directory for http_bench.json and .md")
    args = parser.parse_args(argv)
    connections = [int(c) for c in args.connections.split(",")]
    ensure_wrk()

    with contextlib.ExitStack() as stack:
        servers = {
            "fixed ceiling": stack.enter_context(start_ceiling("fixed")),
            "h11 ceiling": stack.enter_context(start_ceiling("h11")),
            TARGET: stack.enter_context(start_helios()),
        }
        if args.access_log:
            os.makedirs(args.out, exist_ok=True)
            log_file = os.path.join(args.out, "access.log")
            servers[TARGET + " +log"] = stack.enter_context(start_helios(log_file))
            stack.callback(lambda: os.path.exists(log_file) and os.remove(log_file))
        targets = {name: server.url("/health") for name, server in servers.items()}
        for name, url in targets.items():
            print(f"{name}: {url}", flush=True)

        def progress(name, result):
            print(f"  {name:<16} c={result.connections:<3} {result.requests_per_second:>10,.0f} req/s  "
                  f"p50 {result.p50_ms:.2f} ms  p99 {result.p99_ms:.2f} ms  errors {result.errors}", flush=True)

        summaries = compare(targets, connections, args.seconds, args.rounds, on_result=progress)

    table = markdown_table(summaries, baseline="h11 ceiling")
    ratio_rows = ratios(summaries)
    ratio_table = "\n".join(
        ["| connections | helios_raw / h11 ceiling | helios_raw / fixed ceiling |", "|---:|---:|---:|"]
        + [f"| {r['connections']} | {r['vs_h11_ceiling']:.2f}x | {r['vs_fixed_ceiling']:.2f}x |" for r in ratio_rows]
    )
    facts = machine()
    summary = (f"`GET /health`, keep-alive, wrk with one thread, {args.rounds} rounds of {args.seconds:g} s "
               f"alternating between servers (medians); {facts['cpus']} CPUs shared with the load generator, "
               f"Python {facts['python']}, h11 {facts['h11']}, {facts['date']}.")
    print()
    print(table)
    print()
    print(ratio_table)

    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "http_bench.json"), "w") as f:
        json.dump({"machine": facts, "seconds": args.seconds, "rounds": args.rounds,
                   "results": [s.to_dict() for s in summaries], "ratios": ratio_rows}, f, indent=2)
    with open(os.path.join(args.out, "http_bench.md"), "w") as f:
        f.write(f"# HTTP core benchmark\n\n{summary}\n\n{table}\n\n{ratio_table}\n")
    print(f"\nwrote {os.path.join(args.out, 'http_bench.json')} and http_bench.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
