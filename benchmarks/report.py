"""From raw samples to one table of medians with ratios, checked against issue 5's targets.

:func:`build_rows` reads the measurements the runner collected (see ``run.py`` for their shape);
:func:`write` saves ``latest.json`` (meta, notes, rows and every raw sample) and ``latest.md``
(the table) to the results folder; :func:`markdown` renders the table for the console too.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from typing import Optional

HELIOS, PEER, PEER_NOINT = "helios_raw", "llama_cpp.server", "llama_cpp.server (no interrupt)"
IN_PROCESS, CEILING_H11, CEILING_FIXED = "in-process Llama", "bare asyncio + h11", "fixed-response asyncio"


def percentile(values: list, q: float) -> Optional[float]:
    """The ``q``-th percentile (0-100), interpolating between closest ranks; None if empty."""
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    position = (len(values) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return values[low] + (values[high] - values[low]) * (position - low)


def median(values: list) -> Optional[float]:
    return percentile(values, 50)


@dataclass
class Row:
    """One line of the table. ``better`` is "higher", "lower" or "" (a check, not a race); the
    ratios are plain quotients (helios_raw / other), and the peer ratio and ``ahead`` use the peer
    mode named by ``compare_with``."""

    metric: str
    unit: str
    better: str
    helios_raw: Optional[float] = None
    peer: Optional[float] = None
    peer_no_interrupt: Optional[float] = None
    ceiling: Optional[float] = None
    ceiling_name: str = ""
    target: str = ""
    met: Optional[bool] = None
    #: Which peer mode ``ahead`` and the peer ratio use: "best" of both, or "no_interrupt".
    compare_with: str = "best"

    @property
    def compared_peer(self) -> Optional[float]:
        if self.compare_with == "no_interrupt":
            return self.peer_no_interrupt
        values = [v for v in (self.peer, self.peer_no_interrupt) if v is not None]
        if not values:
            return None
        return max(values) if self.better == "higher" else min(values)

    @property
    def ratio_peer(self) -> Optional[float]:
        return _ratio(self.helios_raw, self.compared_peer)

    @property
    def ratio_ceiling(self) -> Optional[float]:
        return _ratio(self.helios_raw, self.ceiling)

    @property
    def ahead(self) -> Optional[bool]:
        other = self.compared_peer
        if self.helios_raw is None or other is None or not self.better:
            return None
        return self.helios_raw > other if self.better == "higher" else self.helios_raw < other

    def to_dict(self) -> dict:
        return dict(asdict(self), ratio_peer=self.ratio_peer, ratio_ceiling=self.ratio_ceiling, ahead=self.ahead)


def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    if a is None or b is None or b == 0:
        return None
    return a / b


def build_rows(m: dict) -> list:
    """The table's rows from the runner's measurements ``m``."""
    rows: list[Row] = []
    rows += _health_rows(m)
    rows += _latency_rows(m)
    stream_rows = _stream_rows(m)
    rows += stream_rows
    rows += _concurrent_rows(m)
    rows += _disconnect_rows(m, stream_rows)
    rows += _memory_rows(m)
    return rows


def _health_rows(m: dict) -> list:
    health = m.get("health", {})
    rows = []
    for connections in sorted({c for runs in health.values() for c in runs}, key=int):
        def stat(target: str, key: str) -> Optional[float]:
            return median([run[key] for run in health.get(target, {}).get(connections, [])])

        label = f"GET /health, {connections} conn"
        rps = Row(f"{label}: requests/s", "req/s", "higher", stat(HELIOS, "requests_per_second"),
                  stat(PEER, "requests_per_second"), ceiling=stat(CEILING_H11, "requests_per_second"),
                  ceiling_name=CEILING_H11)
        if int(connections) == 64:
            rps.target = ">= 2x peer and >= 0.6x bare h11"
            if None not in (rps.helios_raw, rps.peer, rps.ceiling):
                rps.met = rps.helios_raw >= 2 * rps.peer and rps.helios_raw >= 0.6 * rps.ceiling
        rows.append(rps)
        for key, name in (("p50_ms", "p50"), ("p99_ms", "p99")):
            rows.append(Row(f"{label}: {name} latency", "ms", "lower", stat(HELIOS, key), stat(PEER, key),
                            ceiling=stat(CEILING_H11, key), ceiling_name=CEILING_H11))
    same_route = m.get("models_route", {})
    if same_route:
        rows.append(Row("GET /v1/models (same route on both), 64 conn: requests/s", "req/s", "higher",
                        median([r["requests_per_second"] for r in same_route.get(HELIOS, [])]),
                        median([r["requests_per_second"] for r in same_route.get(PEER, [])])))
    return rows


def _latency_rows(m: dict) -> list:
    latency = m.get("latency_1", {})
    if not latency:
        return []
    rows = []
    for q in (50, 99):
        rows.append(Row(f"non-streamed max_tokens 1: p{q} latency", "ms", "lower",
                        percentile(latency.get(HELIOS, []), q), percentile(latency.get(PEER, []), q),
                        ceiling=percentile(latency.get(IN_PROCESS, []), q), ceiling_name=IN_PROCESS))
    return rows


def _stream_rows(m: dict) -> list:
    stream = m.get("stream", {})
    if not stream:
        return []

    def stat(target: str, key: str) -> Optional[float]:
        return median([rep[key] for rep in stream.get(target, [])])

    def gap99(target: str) -> Optional[float]:
        return median([percentile(rep["gaps_ms"], 99) for rep in stream.get(target, [])])

    max_tokens = m.get("plan", {}).get("stream_tokens", 128)
    ttft = Row(f"stream max_tokens {max_tokens}: time to first token", "ms", "lower", stat(HELIOS, "ttft_ms"),
               stat(PEER, "ttft_ms"), ceiling=stat(IN_PROCESS, "ttft_ms"), ceiling_name=IN_PROCESS,
               target="<= ceiling + 2 ms")
    rate = Row(f"stream max_tokens {max_tokens}: tokens/s", "tok/s", "higher", stat(HELIOS, "tokens_per_s"),
               stat(PEER, "tokens_per_s"), ceiling=stat(IN_PROCESS, "tokens_per_s"), ceiling_name=IN_PROCESS,
               target=">= 0.99x ceiling")
    gap = Row(f"stream max_tokens {max_tokens}: p99 gap between chunks (median of reps)", "ms", "lower", gap99(HELIOS), gap99(PEER),
              ceiling=gap99(IN_PROCESS), ceiling_name=IN_PROCESS)
    tokens = Row(f"stream max_tokens {max_tokens}: content chunks received", "chunks", "higher",
                 stat(HELIOS, "tokens"), stat(PEER, "tokens"), ceiling=stat(IN_PROCESS, "tokens"),
                 ceiling_name=IN_PROCESS)
    tokens.better = ""  # a check that all generate alike, not a race
    if ttft.helios_raw is not None and ttft.ceiling is not None:
        ttft.met = ttft.helios_raw <= ttft.ceiling + 2.0
    if rate.helios_raw is not None and rate.ceiling is not None:
        rate.met = rate.helios_raw >= 0.99 * rate.ceiling
    return [ttft, rate, gap, tokens]


def _concurrent_rows(m: dict) -> list:
    runs = m.get("concurrent", {})
    if not runs:
        return []

    def stat(target: str, pick) -> Optional[float]:
        return median([pick(run) for run in runs.get(target, [])])

    def fewest_completed(target: str) -> Optional[float]:
        values = [run["completed"] for run in runs.get(target, [])]
        return min(values) if values else None

    count = m.get("plan", {}).get("concurrent", 4)
    # As shipped, llama_cpp.server ends all but one stream early: its TTFTs and rate cover less work,
    # so helios_raw is judged against the mode that serves all of them.
    rows = [
        Row(f"{count} concurrent streams: aggregate tokens/s", "tok/s", "higher",
            *(stat(t, lambda r: r["aggregate_tokens_per_s"]) for t in (HELIOS, PEER, PEER_NOINT))),
        Row(f"{count} concurrent streams: median time to first token", "ms", "lower",
            *(stat(t, lambda r: median(r["ttft_ms"])) for t in (HELIOS, PEER, PEER_NOINT))),
        Row(f"{count} concurrent streams: slowest time to first token", "ms", "lower",
            *(stat(t, lambda r: max([v for v in r["ttft_ms"] if v is not None], default=None)) for t in (HELIOS, PEER, PEER_NOINT))),
        Row(f"{count} concurrent streams: completed normally (fewest in a round)", f"of {count}", "",
            *(fewest_completed(t) for t in (HELIOS, PEER, PEER_NOINT)), target=f"all {count} complete"),
    ]
    for row in rows[:3]:
        row.compare_with = "no_interrupt"
    if rows[-1].helios_raw is not None:
        rows[-1].met = rows[-1].helios_raw == count
    return rows


def _disconnect_rows(m: dict, stream_rows: list) -> list:
    runs = m.get("disconnect", {})
    if not runs:
        return []

    def stat(target: str, key: str) -> Optional[float]:
        return median([run[key] for run in runs.get(target, [])])

    def extra(target: str) -> Optional[float]:
        waits = stat(target, "wait_ms"), stat(target, "control_ms")
        return None if None in waits else waits[0] - waits[1]

    plan = m.get("plan", {})
    abandon, after = plan.get("abandon_tokens", 512), plan.get("abandon_after", 3)
    targets = (HELIOS, PEER, PEER_NOINT)
    rows = [
        Row(f"max_tokens 1 right after abandoning a {abandon}-token stream at chunk {after}: latency", "ms",
            "lower", *(stat(t, "wait_ms") for t in targets)),
        Row(f"max_tokens 1 right after a {after}-token stream that finished (control): latency", "ms",
            "lower", *(stat(t, "control_ms") for t in targets)),
        Row("time spent on the abandoned generation (abandoned - control)", "ms", "lower",
            *(extra(t) for t in targets), target="< one token's time"),
    ]
    rate = next((row.helios_raw for row in stream_rows if row.unit == "tok/s"), None)
    if rate and rows[-1].helios_raw is not None:
        one_token_ms = 1000.0 / rate
        rows[-1].target = f"< one token's time ({one_token_ms:.1f} ms)"
        rows[-1].met = rows[-1].helios_raw < one_token_ms
    return rows


def _memory_rows(m: dict) -> list:
    rss = m.get("rss_mib", {})
    if not rss:
        return []
    return [
        Row(f"resident memory {when.replace('_', ' ')}", "MiB", "lower",
            *(rss.get(t, {}).get(when) for t in (HELIOS, PEER, PEER_NOINT)))
        for when in ("after_warmup", "after_run")
    ]


# --- rendering -------------------------------------------------------------------------------


def number(value: Optional[float], unit: str = "") -> str:
    if value is None:
        return "—"
    if unit.startswith("of "):
        return f"{value:.0f}/{unit[3:]}"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _ratio_text(value: Optional[float]) -> str:
    return "—" if value is None else f"{value:.2f}x"


def _which_peer(row: Row) -> str:
    compared = row.compared_peer
    if compared is not None and compared is row.peer_no_interrupt and compared != row.peer:
        return " (vs no interrupt)"
    return ""


def markdown(rows: list, meta: dict, notes: list) -> str:
    """The table, with a heading line naming date, machine and versions, and the notes below."""
    versions = ", ".join(f"{name} {version}" for name, version in meta.get("versions", {}).items())
    machine = meta.get("machine", {})
    lines = [
        f"Run {meta.get('date', '?')} on {machine.get('cores', '?')} cores ({machine.get('cpu', '?')}), "
        f"{'quick' if meta.get('quick') else 'full'} run; model {meta.get('model', {}).get('file', '?')}, "
        f"{meta.get('threads', '?')} threads, n_ctx {meta.get('n_ctx', '?')}. Versions: {versions}.",
        "",
        f"| metric | {HELIOS} | {PEER} | {PEER} --interrupt_requests False | ceiling | "
        "helios_raw / peer | helios_raw / ceiling | ahead of peer | target |",
        "|---|---:|---:|---:|---:|---:|---:|:-:|---|",
    ]
    for row in rows:
        ceiling = number(row.ceiling, row.unit) + (f" ({row.ceiling_name})" if row.ceiling is not None else "")
        ahead = {True: "yes", False: "**no**", None: ""}[row.ahead] if row.better else ""
        target = ""
        if row.target:
            target = row.target + {True: ": met", False: ": **missed**", None: ": not measured"}[row.met]
        better = {"higher": " ↑", "lower": " ↓"}.get(row.better, "")
        lines.append(
            f"| {row.metric} ({row.unit}{better}) | {number(row.helios_raw, row.unit)} | "
            f"{number(row.peer, row.unit)} | {number(row.peer_no_interrupt, row.unit)} | {ceiling} | "
            f"{_ratio_text(row.ratio_peer)}{_which_peer(row)} | {_ratio_text(row.ratio_ceiling)} | {ahead} | {target} |")
    if notes:
        lines += [""] + [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def write(directory: str, rows: list, meta: dict, notes: list, measurements: dict) -> tuple:
    """Write ``latest.json`` and ``latest.md`` into ``directory``; returns their paths."""
    os.makedirs(directory, exist_ok=True)
    json_path = os.path.join(directory, "latest.json")
    md_path = os.path.join(directory, "latest.md")
    with open(json_path, "w") as out:
        json.dump({"meta": meta, "notes": notes, "rows": [row.to_dict() for row in rows],
                   "measurements": measurements}, out, indent=1)
        out.write("\n")
    with open(md_path, "w") as out:
        out.write(markdown(rows, meta, notes))
    return json_path, md_path

