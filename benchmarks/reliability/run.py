"""One reliability run: start the target, fuzz it, send it slow clients, soak it, judge it.

    python -m benchmarks.reliability            # the short run (what CI runs), about a minute
    python -m benchmarks.reliability --long     # >= 100,000 fuzzed requests and a 10-minute soak
    python -m benchmarks.reliability --no-model # against --no-model with custom endpoints only

The verdict (:func:`verdict`) passes when the process stayed alive, its log holds no unhandled
exception, no answer failed the oracle (see ``wire.judge``), the soak had no errors, its memory
after the load is within 5 % of the baseline taken after warm-up and its descriptors came back
to the idle count, and every slow-client scenario passed. The long run writes
``benchmarks/results/reliability.{json,md}``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from typing import Optional

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.reliability import fuzz, results, slow, soak  # noqa: E402
from benchmarks.reliability.target import Settings, Target  # noqa: E402

#: Short server timeouts so the slow-client scenarios of a short run end in seconds.
SHORT_LIMITS = {"head_timeout": 2.0, "body_idle_timeout": 2.0, "keepalive_timeout": 2.0, "write_timeout": 3.0,
                "max_connections": 200}


@dataclass(frozen=True)
class Profile:
    name: str
    fuzz_requests: int
    fuzz_workers: int
    soak_seconds: float
    soak_connections: int
    slow_clients: int
    limits: dict = field(default_factory=dict)
    #: How much the RSS after the soak may exceed the baseline taken after its warm-up.
    rss_tolerance: float = 0.05


SHORT = Profile("short", 1200, 16, 30.0, 64, 4, SHORT_LIMITS)
LONG = Profile("long", 100_000, 24, 600.0, 64, 20, {})


def verdict(report: dict, profile: Profile) -> list:
    """Every pass criterion the run missed, as sentences (empty: passed)."""
    missed = []
    if not report["alive_at_end"]:
        missed.append("the server was not alive at the end")
    fuzzed = report["fuzz"]
    unknown_crashes = fuzzed["crashes"] - sum(f["count"] for f in fuzzed["findings"]
                                              if f["kind"] == "known" and "crash: " in f["signature"])
    if unknown_crashes:
        missed.append(f"the server crashed {unknown_crashes} times while fuzzed (besides known bugs)")
    failures = [f for f in fuzzed["findings"] if f["kind"] != "known"]
    if failures:
        missed.append(f"{len(failures)} distinct fuzz failures: " + "; ".join(
            f"{f['kind']} {f['family']}: {f['signature']}" for f in failures[:10]))
    if report["alarms"]:
        missed.append(f"{len(report['alarms'])} unhandled exceptions in the log")
    soaked = report["soak"]
    if soaked["error_count"]:
        missed.append(f"{soaked['error_count']} soak errors, e.g. {soaked['errors'][:3]}")
    base, after = soaked["baseline"].get("rss_mib"), soaked["after"].get("rss_mib")
    if base and after and after > base * (1 + profile.rss_tolerance):
        missed.append(f"RSS after the soak {after:.1f} MiB > baseline {base:.1f} MiB + {profile.rss_tolerance:.0%}")
    idle, fds = soaked["baseline"].get("idle_fds"), soaked["after"].get("fds")
    if idle is not None and fds is not None and fds > idle:
        missed.append(f"{fds} descriptors open after the soak, {idle} before it")
    for scenario in report["slow"]:
        if not scenario["passed"] and not scenario["known"]:
            missed.append(f"slow clients ({scenario['name']}): {scenario['detail']}")
    return missed


def run(profile: Profile, model: bool = True, seed: int = 1, include_known: bool = False,
        workdir: Optional[str] = None, log=None) -> dict:
    """Run ``profile`` against a fresh target; the report (see :func:`verdict`)."""
    log = log or (lambda text: print(text, file=sys.stderr, flush=True))
    own_dir = workdir is None
    workdir = workdir or tempfile.mkdtemp(prefix="helios-reliability-")
    settings = Settings(model=model, limits=dict(profile.limits))
    target = Target(workdir, settings)
    started = time.monotonic()
    report: dict = {"profile": profile.name, "model": model, "seed": seed, "include_known": include_known,
                    "limits": profile.limits or "defaults"}
    try:
        target.start()
        report["idle"] = {"rss_mib": target.rss_mib(), "fds": target.fd_count()}
        log(f"reliability: helios_raw on port {target.port} ({'tiny model' if model else '--no-model'}); "
            f"fuzzing {profile.fuzz_requests} requests")
        fuzzed = fuzz.run(target, seed, profile.fuzz_requests, profile.fuzz_workers, include_known, log=log)
        report["fuzz"] = fuzzed.to_dict()
        log(f"reliability: fuzz done in {fuzzed.seconds:.0f} s: {fuzzed.crashes} crashes, "
            f"{len(fuzzed.failures())} distinct failures; slow clients")
        alarms_before = len(target.alarms)
        limits = {**_defaults(), **profile.limits}
        report["slow"] = [s.to_dict() for s in slow.run_all(target, profile.slow_clients, limits)]
        log("reliability: slow clients: " + ", ".join(f"{s['name']} {'ok' if s['passed'] else 'FAILED'}"
                                                     for s in report["slow"]) + f"; soak {profile.soak_seconds:.0f} s")
        soaked = soak.run(target, profile.soak_seconds, profile.soak_connections, seed)
        report["soak"] = soaked.to_dict()
        target.read_log()
        log(f"reliability: soak {soaked.requests} requests, {soaked.error_count} errors, RSS "
            f"{soaked.baseline.get('rss_mib')} -> {soaked.after.get('rss_mib')} MiB, fds "
            f"{soaked.baseline.get('idle_fds')} -> {soaked.after.get('fds')}")
        report["alarms"] = [{"line": a.line, "excerpt": a.excerpt} for a in target.alarms[alarms_before:]]
        report["alive_at_end"] = target.alive()
    finally:
        target.stop()
        if own_dir and not os.environ.get("HELIOS_RELIABILITY_KEEP"):
            shutil.rmtree(workdir, ignore_errors=True)
    report["seconds"] = round(time.monotonic() - started, 1)
    report["missed"] = verdict(report, profile)
    report["passed"] = not report["missed"]
    return report


def _defaults() -> dict:
    from helios_raw.http.limits import Limits

    return dict(Limits().__dict__)


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.reliability", description=__doc__.split("\n\n")[0])
    parser.add_argument("--long", action="store_true", help="the long run (100,000 fuzzed requests, 10-minute soak)")
    parser.add_argument("--no-model", action="store_true", help="serve no model (custom endpoints and /health only)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--fuzz", type=int, help="fuzzed requests (overrides the profile)")
    parser.add_argument("--soak", type=float, help="soak seconds (overrides the profile)")
    parser.add_argument("--include-known", action="store_true",
                        help="also send the requests of bugs already reported (always on with --long)")
    parser.add_argument("--output", help="where to write reliability.{json,md} (the long run: benchmarks/results)")
    args = parser.parse_args(argv)
    for sig in (signal.SIGTERM, signal.SIGHUP):  # end as SIGINT does: through run()'s finally
        signal.signal(sig, lambda signum, frame: sys.exit(128 + signum))
    profile = LONG if args.long else SHORT
    if args.fuzz is not None:
        profile = replace(profile, fuzz_requests=args.fuzz)
    if args.soak is not None:
        profile = replace(profile, soak_seconds=args.soak)
    # The long run also sends the requests of known bugs, to show whether they still reproduce.
    report = run(profile, model=not args.no_model, seed=args.seed, include_known=args.include_known or args.long)
    report["date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    report["machine"] = {"cores": os.cpu_count(), "python": platform.python_version()}
    output = args.output or (os.path.join(ROOT, "benchmarks", "results") if args.long else None)
    if output:
        paths = results.write(output, report)
        print(f"wrote {paths[0]} and {paths[1]}", file=sys.stderr)
    print(results.markdown(report))
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
