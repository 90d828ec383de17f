"""The concurrency benchmark's table: from the raw rounds of ``concurrency.py`` to medians,
percentiles and ratios, written as ``concurrency.json`` (meta, notes, rows, every sample) and
``concurrency.md`` (the table, what each row shows, and what this run shows)."""

from __future__ import annotations

import json
import os
from typing import Optional

from benchmarks.report import median, number, percentile

HELIOS, LLAMA_SERVER, PEER = "helios_raw", "llama-server", "llama_cpp.server"
COLUMNS = (HELIOS, LLAMA_SERVER, PEER)

EXPLAINED = """\
## What each row shows

Each measurement also records how much of the machine other processes took meanwhile; rows of
throughput, TTFT and the 4th request leave out the rounds where that was over 25 % (when the same
server has calmer rounds of the same scenario), and the notes say how many.

- **N streams: aggregate tokens/s**: N streamed essays sent at the same moment, each on its own
  connection; every stream's completion tokens (from the server's `usage` when it sends one, else
  its content chunks) summed and divided by the time from the first request sent to the last
  content chunk received. Median over the rounds. A server that runs one generation at a time
  stays near its single-stream rate; one that batches slots should grow with N up to its slots.
- **N streams: TTFT p50 / p90**: time from sending a request to its first non-empty
  `delta.content`, over every stream of every round at that N. With one generation at a time
  the k-th request waits for the k-1 before it, so p90 grows with N.
- **N streams: completed normally**: streams that ended with a `finish_reason` and `[DONE]`,
  out of all sent; **ran to max_tokens**: of those, how many ended with `finish_reason: "length"`
  (the prompts ask for long essays so that all should, without `ignore_eos`).
- **4th request while 3 stream**: in each round the request is first sent alone to the idle
  server (lone TTFT), then three long essays are sent and, once they are streaming (or after 2 s
  if they are not all started), the same request again; its TTFT over the lone TTFT is the X in
  "a request arriving while 3 others stream gets its first token within X times the lone TTFT".
  "streaming when sent" counts how many of the three had started.
- **8 streams on 4 slots**: eight essays sent 25 ms apart. *Completed normally* as above;
  *first-token order*: pairs of requests whose first tokens came in the opposite order to their
  sending (0 means strictly first-come, first-served); *first 4 before last 4*: rounds in which
  every one of the first four sent got its first token before any of the last four (FIFO at the
  granularity of slots); *interrupted*: streams that ended without `finish_reason` + `[DONE]`.
"""


def _stat(values: list, how) -> Optional[float]:
    values = [v for v in values if v is not None]
    return how(values) if values else None


#: A round in which other processes took more than this share of the machine is left out of
#: the table when its scenario has calmer rounds for the same server.
DISTURBED = 0.25


def calm(rounds: list) -> list:
    """The rounds other processes did not disturb (all of them if every one was disturbed)."""
    quiet = [r for r in rounds if (r.get("others_cpu_share") or 0.0) <= DISTURBED]
    return quiet or rounds


def _streams(rounds: list) -> list:
    return [s for r in rounds if "streams" in r for s in r["streams"]]


def _level(count: str) -> str:
    return f"{count} stream" + ("" if count == "1" else "s")


def _inversions(streams: list) -> int:
    firsts = [s["first"] if s["first"] is not None else float("inf") for s in sorted(streams, key=lambda s: s["sent"])]
    return sum(1 for i in range(len(firsts)) for j in range(i + 1, len(firsts)) if firsts[j] < firsts[i])


def _slots_fifo(streams: list, slots: int) -> bool:
    ordered = sorted(streams, key=lambda s: s["sent"])
    head = [s["first"] for s in ordered[:slots]]
    tail = [s["first"] for s in ordered[slots:]]
    if None in head:
        return False
    return not tail or max(head) <= min(t if t is not None else float("inf") for t in tail)


def build_rows(m: dict, slots: int) -> list:
    """[(metric, unit, better, {label: value or text})]; ``better`` is "higher", "lower" or ""."""
    rows = []
    for count in sorted(m["levels"], key=int):
        by = {label: calm(rounds) for label, rounds in m["levels"][count].items()}
        rate = {k: _stat([r.get("aggregate_tokens_per_s") for r in v], median) for k, v in by.items()}
        rows.append((f"{_level(count)}: aggregate tokens/s", "tok/s", "higher", rate))
        for q in (50, 90):
            ttft = {k: _stat([s["ttft_ms"] for s in _streams(v)], lambda x, q=q: percentile(x, q)) for k, v in by.items()}
            rows.append((f"{_level(count)}: TTFT p{q}", "ms", "lower", ttft))
        done = {}
        for label, rounds in by.items():
            streams = _streams(rounds)
            sent = int(count) * len(rounds)
            complete = sum(1 for s in streams if s["complete"])
            length = sum(1 for s in streams if s["complete"] and s["finish_reason"] == "length")
            done[label] = f"{complete}/{sent} ({length} length)"
        rows.append((f"{_level(count)}: completed normally (ran to max_tokens)", "", "", done))
    fourth = m.get("fourth", {})
    if fourth:
        ok = {k: [r for r in calm(v) if "fourth" in r] for k, v in fourth.items()}
        rows.append(("lone request: TTFT", "ms", "lower",
                     {k: _stat([r["lone"]["ttft_ms"] for r in v], median) for k, v in ok.items()}))
        rows.append(("4th request while 3 stream: TTFT", "ms", "lower",
                     {k: _stat([r["fourth"]["ttft_ms"] for r in v], median) for k, v in ok.items()}))
        rows.append(("4th request while 3 stream: TTFT / lone TTFT (X)", "x", "lower",
                     {k: _stat([r["ratio"] for r in v], median) for k, v in ok.items()}))
        rows.append(("4th request: of the 3, streaming when it was sent (fewest)", "", "",
                     {k: (f"{min(r['streaming_when_sent'] for r in v)}/3" if v else "—") for k, v in ok.items()}))
    overflow = m.get("overflow", {})
    if overflow:
        label_n = None
        done, order, fifo, interrupted = {}, {}, {}, {}
        for label, rounds in overflow.items():
            good = [r for r in rounds if "streams" in r]  # order and completion hold however busy
            streams = _streams(good)
            label_n = label_n or (len(good[0]["streams"]) if good else None)
            done[label] = f"{sum(1 for s in streams if s['complete'])}/{len(streams)}"
            order[label] = float(sum(_inversions(r["streams"]) for r in good))
            fifo[label] = f"{sum(1 for r in good if _slots_fifo(r['streams'], slots))}/{len(good)} rounds"
            interrupted[label] = float(sum(1 for s in streams if not s["complete"]))
        title = f"{label_n or 8} streams on {slots} slots"
        rows.append((f"{title}: completed normally", "", "", done))
        rows.append((f"{title}: first-token pairs out of arrival order (all rounds)", "pairs", "lower", order))
        rows.append((f"{title}: first {slots} sent got first tokens before the rest", "", "", fifo))
        rows.append((f"{title}: interrupted streams", "streams", "lower", interrupted))
    return rows


def _number(value) -> str:
    return value if isinstance(value, str) else number(value)


def _ratio(a, b) -> str:
    if not isinstance(a, (int, float)) or not isinstance(b, (int, float)) or not b:
        return "—"
    return f"{a / b:.2f}x"


def findings(rows: list) -> list:
    """Sentences stating what this run's numbers show, computed from the rows."""
    said = []
    values = {metric: cells for metric, _, _, cells in rows}
    for count in ("1", "4", "8"):
        cells = values.get(f"{_level(count)}: aggregate tokens/s", {})
        if cells.get(HELIOS) and cells.get(LLAMA_SERVER):
            said.append(f"At {_level(count)} helios_raw generated "
                        f"{_number(cells[HELIOS])} tok/s in aggregate, {cells[HELIOS] / cells[LLAMA_SERVER]:.2f}x "
                        f"llama-server's {_number(cells[LLAMA_SERVER])}"
                        + (f" and {cells[HELIOS] / cells[PEER]:.2f}x llama_cpp.server's {_number(cells[PEER])}."
                           if cells.get(PEER) else "."))
    x = values.get("4th request while 3 stream: TTFT / lone TTFT (X)", {})
    if x:
        said.append("A request arriving while 3 others stream got its first token within "
                    + ", ".join(f"{_number(v)}x the lone TTFT on {k}" for k, v in x.items() if v is not None) + ".")
    return said


def markdown(meta: dict, notes: list, rows: list) -> str:
    machine, versions = meta.get("machine", {}), meta.get("versions", {})
    servers = meta.get("servers", {})
    lines = [
        "# Concurrent streams",
        "",
        f"Run {meta.get('date', '?')} on {machine.get('cores', '?')} cores ({machine.get('cpu', '?')}), "
        f"{'quick' if meta.get('plan', {}).get('rounds', 0) < 2 else 'full'} run; model "
        f"{meta.get('model', {}).get('file', '?')}, {meta.get('threads', '?')} threads, n_ctx {meta.get('n_ctx')} "
        f"per slot, max_tokens {meta.get('plan', {}).get('max_tokens')}, {meta.get('plan', {}).get('rounds')} rounds "
        f"per level (the calm ones kept). Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".",
        "",
        "Servers: " + "; ".join(f"**{k}**: `{v}`" for k, v in servers.items()) + ".",
        "",
        f"| metric | {' | '.join(COLUMNS)} | helios_raw / llama-server | helios_raw / llama_cpp.server |",
        "|---|" + "---:|" * (len(COLUMNS) + 2),
    ]
    for metric, unit, better, cells in rows:
        arrow = {"higher": " ↑", "lower": " ↓"}.get(better, "")
        label = f"{metric} ({unit}{arrow})" if unit else metric
        lines.append(f"| {label} | " + " | ".join(_number(cells.get(c)) for c in COLUMNS) + " | "
                     f"{_ratio(cells.get(HELIOS), cells.get(LLAMA_SERVER))} | {_ratio(cells.get(HELIOS), cells.get(PEER))} |")
    lines += ["", "## This run", ""] + [f"- {line}" for line in findings(rows) + notes]
    return "\n".join(lines) + "\n\n" + EXPLAINED


def write(directory: str, meta: dict, notes: list, measurements: dict) -> tuple:
    """Write ``concurrency.json`` and ``concurrency.md``; (json path, md path, markdown)."""
    share = meta.get("machine_busy_share")
    if share is not None:
        notes = notes + [f"The machine's CPU was {share:.0%} busy over the run (all processes, these servers "
                         "included; 2 threads of generation on 2 cores is about 100%)."]
    openmp = meta.get("openmp")
    notes = notes + [f"OpenMP environment of every server: {', '.join(f'{k}={v}' for k, v in openmp.items())}."
                     if openmp else "No OpenMP setting in the environment: each server's own default."]
    kept = total = 0
    for scenario in [*measurements["levels"].values(), measurements.get("fourth", {})]:
        for rounds in scenario.values():
            kept, total = kept + len(calm(rounds)), total + len(rounds)
    if kept < total:
        notes = notes + [f"{total - kept} of {total} rounds were left out of the throughput, TTFT and 4th-request "
                         f"rows: other processes took more than {DISTURBED:.0%} of the machine during them (each "
                         "round's share is in the JSON as others_cpu_share)."]
    tokens_from = {}
    for rounds in measurements["levels"].values():
        for label, runs in rounds.items():
            for s in _streams(runs):
                tokens_from.setdefault(label, set()).add("usage" if s["usage_tokens"] is not None else "chunks")
    notes = notes + ["Tokens counted from: " + ", ".join(
        f"{label}: {' and '.join(sorted(kinds))}" for label, kinds in tokens_from.items()) + "."]
    rows = build_rows(measurements, meta.get("slots", 4))
    os.makedirs(directory, exist_ok=True)
    json_path, md_path = os.path.join(directory, "concurrency.json"), os.path.join(directory, "concurrency.md")
    table = markdown(meta, notes, rows)
    with open(json_path, "w") as out:
        json.dump({"meta": meta, "notes": notes, "rows": [
            {"metric": m, "unit": u, "better": b, "values": c} for m, u, b, c in rows], "measurements": measurements},
            out, indent=1)
        out.write("\n")
    with open(md_path, "w") as out:
        out.write(table)
    return json_path, md_path, table
