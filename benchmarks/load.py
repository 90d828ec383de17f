"""Load generation with ``wrk``, and servers run as subprocesses for it to hit.

Reusable pieces:

- :func:`ensure_wrk` finds ``wrk`` (installing Debian's package with apt-get when it is missing);
- :func:`run_wrk` runs it against one URL and returns a :class:`LoadResult` (requests/s, p50 and
  p99 latency from ``wrk --latency``, errors), parsed from wrk's plain text output (no Lua);
- :class:`ServerProcess` starts a server command, learns its port from the line it logs when it
  listens (so servers can bind port 0), and stops it with SIGTERM;
- :func:`compare` loads several servers side by side, alternating between them round after round
  so that a change in the machine's load falls on all of them alike, and :func:`markdown_table`
  renders the result.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from typing import Callable, Optional, Sequence

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}
_DURATION = r"([\d.]+)(us|ms|s|m)"


@dataclass
class LoadResult:
    """One wrk run. Latencies in milliseconds; ``errors`` counts socket errors and non-2xx/3xx."""

    connections: int
    requests: int
    seconds: float
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int

    def to_dict(self) -> dict:
        return asdict(self)


def ensure_wrk() -> str:
    """The path of ``wrk``; installs Debian's ``wrk`` package if it is missing (needs root)."""
    path = shutil.which("wrk")
    if path:
        return path
    print("wrk is missing; installing it with apt-get", file=sys.stderr)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(["apt-get", "install", "-y", "wrk"], check=True, env=env, stdout=subprocess.DEVNULL)
    path = shutil.which("wrk")
    if not path:
        raise RuntimeError("wrk could not be installed")
    return path


def _milliseconds(value: str, unit: str) -> float:
    return float(value) * _UNITS[unit]


def parse_wrk_output(text: str, connections: int) -> LoadResult:
    """Read requests, duration, requests/s, the 50 % and 99 % latencies and errors from the text
    ``wrk --latency`` prints."""
    done = re.search(r"(\d+) requests in " + _DURATION, text)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", text)
    p50 = re.search(r"^\s+50%\s+" + _DURATION, text, re.MULTILINE)
    p99 = re.search(r"^\s+99%\s+" + _DURATION, text, re.MULTILINE)
    if not (done and rate and p50 and p99):
        raise ValueError(f"unexpected wrk output:\n{text}")
    errors = 0
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if socket_errors:
        errors += sum(int(n) for n in socket_errors.groups())
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if non_2xx:
        errors += int(non_2xx.group(1))
    return LoadResult(
        connections=connections,
        requests=int(done.group(1)),
        seconds=_milliseconds(done.group(2), done.group(3)) / 1e3,
        requests_per_second=float(rate.group(1)),
        p50_ms=_milliseconds(*p50.groups()),
        p99_ms=_milliseconds(*p99.groups()),
        errors=errors,
    )


def run_wrk(url: str, connections: int, seconds: float = 4.0, threads: int = 1,
            headers: Sequence[str] = ()) -> LoadResult:
    """Load ``url`` with ``connections`` keep-alive connections for ``seconds``."""
    argv = [ensure_wrk(), "--latency", "-t", str(max(1, min(threads, connections))), "-c", str(connections),
            "-d", f"{max(1, round(seconds))}s", "--timeout", "5s"]
    for header in headers:
        argv += ["-H", header]
    argv.append(url)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
    return parse_wrk_output(done.stdout, connections)


class ServerProcess:
    """A server command run in a subprocess until :meth:`stop`.

    ``ready`` is a regular expression with a ``port`` group, matched against each line the server
    prints (stdout and stderr together); the server is up once a line matches.
    """

    def __init__(self, argv: Sequence[str], ready: str = r"listening on http://[^\s]*:(?P<port>\d+)",
                 env: Optional[dict] = None, cwd: Optional[str] = None, start_timeout: float = 60.0) -> None:
        self.argv = list(argv)
        self.output: list[str] = []
        self.process = subprocess.Popen(
            self.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd,
        )
        self.port = self._wait_ready(re.compile(ready), start_timeout)
        # Keep draining the output so a chatty server never blocks on a full pipe.
        self._drain = threading.Thread(target=self._read_rest, daemon=True)
        self._drain.start()

    def _wait_ready(self, pattern: re.Pattern, timeout: float) -> int:
        timer = threading.Timer(timeout, self.process.kill)
        timer.start()
        try:
            for line in self.process.stdout:
                self.output.append(line)
                found = pattern.search(line)
                if found:
                    return int(found.group("port"))
        finally:
            timer.cancel()
        raise RuntimeError(f"{' '.join(self.argv)} exited before listening:\n{''.join(self.output)}")

    def _read_rest(self) -> None:
        for line in self.process.stdout:
            self.output.append(line)

    def url(self, path: str = "/", host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, then wait; SIGKILL if it does not exit in ``timeout`` seconds. The exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._drain.join(5)
        return self.process.returncode

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def wait_quiet(seconds: float = 0.5) -> None:
    """A pause between runs so sockets in TIME_WAIT and stray CPU work settle."""
    time.sleep(seconds)


@dataclass
class Summary:
    """One target at one connection count over all rounds: medians, and errors summed."""

    target: str
    connections: int
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int
    runs: list

    def to_dict(self) -> dict:
        data = asdict(self)
        data["runs"] = [run.to_dict() for run in self.runs]
        return data


def compare(targets: dict, connections: Sequence[int] = (1, 16, 64), seconds: float = 3.0, rounds: int = 3,
            warmup: float = 1.0, threads: int = 1,
            on_result: Optional[Callable[[str, LoadResult], None]] = None) -> list:
    """Load each URL of ``targets`` (name -> URL) at each connection count, ``rounds`` times.

    Runs alternate: every round visits each connection count and, within it, each target, in an
    order that rotates from round to round. Returns one :class:`Summary` per (target, connections),
    in the order of ``connections`` then ``targets``.
    """
    names = list(targets)
    for name in names:
        if warmup > 0:
            run_wrk(targets[name], max(connections), warmup, threads)
    results: dict = {(name, c): [] for name in names for c in connections}
    for round_number in range(rounds):
        order = names[round_number % len(names):] + names[:round_number % len(names)]
        for count in connections:
            for name in order:
                wait_quiet(0.3)
                result = run_wrk(targets[name], count, seconds, threads)
                results[(name, count)].append(result)
                if on_result is not None:
                    on_result(name, result)
    return [
        Summary(
            target=name,
            connections=count,
            requests_per_second=statistics.median(r.requests_per_second for r in results[(name, count)]),
            p50_ms=statistics.median(r.p50_ms for r in results[(name, count)]),
            p99_ms=statistics.median(r.p99_ms for r in results[(name, count)]),
            errors=sum(r.errors for r in results[(name, count)]),
            runs=results[(name, count)],
        )
        for count in connections for name in names
    ]


def markdown_table(summaries: Sequence[Summary], baseline: Optional[str] = None) -> str:
    """A Markdown table of ``summaries``; with ``baseline`` (a target name), each row also shows
    its requests/s as a multiple of the baseline's at the same connection count."""
    base = {s.connections: s.requests_per_second for s in summaries if s.target == baseline}
    header = "| server | connections | requests/s | p50 ms | p99 ms | errors |"
    rule = "|---|---:|---:|---:|---:|---:|"
    if baseline is not None:
        header += f" vs {baseline} |"
        rule += "---:|"
    lines = [header, rule]
    for s in summaries:
        line = (f"| {s.target} | {s.connections} | {s.requests_per_second:,.0f} | {s.p50_ms:.2f} | "
                f"{s.p99_ms:.2f} | {s.errors} |")
        if baseline is not None:
            ratio = s.requests_per_second / base[s.connections] if base.get(s.connections) else float("nan")
            line += f" {ratio:.2f}x |"
        lines.append(line)
    return "\n".join(lines)
