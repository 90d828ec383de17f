"""The reliability run's report: ``reliability.json`` (everything, samples included) and
``reliability.md`` (the verdict, each phase in a few lines, and every failure with its request)."""

from __future__ import annotations

import json
import os


def _fmt(value, digits: int = 1) -> str:
    if value is None:
        return "—"
    return f"{value:,.{digits}f}" if isinstance(value, float) else f"{value:,}"


def markdown(report: dict) -> str:
    fuzzed, soaked = report.get("fuzz", {}), report.get("soak", {})
    lines = [
        f"# Reliability run ({report.get('profile')})",
        "",
        f"{report.get('date', '')} · {report.get('machine', {}).get('cores', '?')} cores · seed {report.get('seed')} · "
        f"target: helios_raw {'serving the tiny test model' if report.get('model') else '--no-model'} with custom "
        f"endpoints · limits: {report.get('limits')} · {_fmt(report.get('seconds'))} s in all.",
        "",
        "**Verdict: " + ("passed**" if report.get("passed") else "failed**"),
    ]
    lines += [f"- missed: {text}" for text in report.get("missed", [])]
    statuses = ", ".join(f"{k}: {v:,}" for k, v in fuzzed.get("statuses", {}).items())
    outcomes = ", ".join(f"{k}: {v:,}" for k, v in fuzzed.get("outcomes", {}).items())
    lines += [
        "",
        "## Fuzzing",
        "",
        f"{_fmt(fuzzed.get('sent'))} requests in {_fmt(fuzzed.get('seconds'))} s over raw sockets; crashes: "
        f"{fuzzed.get('crashes')}; log alarms: {fuzzed.get('alarms')}; families left out after repeated crashes: "
        f"{', '.join(fuzzed.get('disabled_families', [])) or 'none'}.",
        "",
        "| family | requests | answers (status or outcome: count) |",
        "|---|---:|---|",
    ]
    for family, answers in fuzzed.get("answers_by_family", {}).items():
        lines.append(f"| {family} | {fuzzed.get('by_family', {}).get(family, 0):,} | "
                     + ", ".join(f"{k}: {v:,}" for k, v in answers.items()) + " |")
    lines += [
        "",
        f"- outcomes: {outcomes}",
        f"- statuses: {statuses}",
        "",
        "## Slow clients",
        "",
        "| scenario | clients | passed | server dropped them after (s) | their answers | "
        "/health meanwhile (ok / refused 503 / failed, worst ms) |",
        "|---|---:|:-:|---:|---|---|",
    ]
    for s in report.get("slow", []):
        answers = ", ".join(f"{k}: {v}" for k, v in s.get("answers", {}).items())
        passed = "yes" if s["passed"] else ("no (known bug)" if s.get("known") else "**no**")
        lines.append(f"| {s['name']} | {s['clients']} | {passed} | "
                     f"{_fmt(s.get('dropped_after_s'), 2)} | {answers} | {s['health_ok']} / {s['health_refused']} / "
                     f"{s['health_failed']}, "
                     f"{_fmt(s.get('health_worst_ms'))} |")
    base, after = soaked.get("baseline", {}), soaked.get("after", {})
    lines += [
        "",
        "## Soak",
        "",
        f"{_fmt(soaked.get('seconds'))} s at {soaked.get('connections')} keep-alive connections: "
        f"{_fmt(soaked.get('requests'))} requests ({_fmt(soaked.get('requests_per_second'))}/s), "
        f"{soaked.get('error_count')} errors, latency p50 {_fmt(soaked.get('p50_ms'))} ms, p99 "
        f"{_fmt(soaked.get('p99_ms'))} ms, max {_fmt(soaked.get('max_ms'))} ms.",
        "",
        f"- RSS: {_fmt(base.get('rss_mib'))} MiB after warm-up, at most {_fmt(soaked.get('rss_max_mib'))} MiB "
        f"under load, {_fmt(after.get('rss_mib'))} MiB after it.",
        f"- File descriptors: {base.get('idle_fds')} idle, at most {soaked.get('fds_max')} under load, "
        f"{after.get('fds')} after it.",
        f"- statuses: {', '.join(f'{k}: {v:,}' for k, v in soaked.get('statuses', {}).items())}",
        "",
        "## Failures found",
        "",
    ]
    findings = fuzzed.get("findings", [])
    if not findings and not report.get("alarms"):
        lines.append("None.")
    for f in findings:
        lines += [f"### {f['kind']} · {f['family']} · seen {f['count']} times", "", f"`{f['signature']}`", "",
                  "Shortest request:", "", "```", f["request"][:1500], "```", ""]
    for alarm in report.get("alarms", []):
        lines += ["### log alarm outside fuzzing", "", "```", alarm["excerpt"][:1500], "```", ""]
    return "\n".join(lines) + "\n"


def write(directory: str, report: dict) -> tuple:
    os.makedirs(directory, exist_ok=True)
    json_path = os.path.join(directory, "reliability.json")
    md_path = os.path.join(directory, "reliability.md")
    with open(json_path, "w") as out:
        json.dump(report, out, indent=1, default=str)
        out.write("\n")
    with open(md_path, "w") as out:
        out.write(markdown(report))
    return json_path, md_path
