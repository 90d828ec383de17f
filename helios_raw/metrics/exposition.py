"""Prometheus' text exposition format (version 0.0.4) of metric snapshots.

A snapshot (:meth:`~helios_raw.metrics.recording.Metrics.snapshot`) is a list of families, each a
dict: ``name``, ``type`` (``counter``, ``gauge`` or ``histogram``), ``help``, ``labels`` (names),
``samples`` (``[label values, value]``; for a histogram ``[label values, [count per bucket...,
+Inf count, sum]]`` with the bucket bounds in ``bounds``). Snapshots are plain data so that worker
processes can send theirs to the one answering a scrape; :func:`render` writes several as one
exposition, each worker's samples labelled ``worker``, every family once.
"""

from __future__ import annotations

import math
from typing import Iterable, Optional

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def render(parts: Iterable[tuple[Optional[str], list]]) -> bytes:
    """The exposition of ``parts``: ``(worker, snapshot)`` pairs, ``worker`` None for a server
    of one process (no ``worker`` label)."""
    parts = list(parts)
    order: dict[str, dict] = {}
    for _, snapshot in parts:
        for family in snapshot:
            order.setdefault(family["name"], family)
    lines: list[str] = []
    for name, first in order.items():
        lines.append(f"# HELP {name} {_help(first['help'])}")
        lines.append(f"# TYPE {name} {first['type']}")
        for worker, snapshot in parts:
            for family in snapshot:
                if family["name"] == name:
                    _samples(lines, family, worker)
    lines.append("")
    return "\n".join(lines).encode()


def _samples(lines: list, family: dict, worker: Optional[str]) -> None:
    names = family["labels"] + (["worker"] if worker is not None else [])
    name = family["name"]
    for values, value in family["samples"]:
        pairs = list(zip(names, values + ([worker] if worker is not None else [])))
        if family["type"] != "histogram":
            lines.append(f"{name}{_labels(pairs)} {_number(value)}")
            continue
        cumulative = 0
        for bound, count in zip(family["bounds"] + [math.inf], value[:-1]):
            cumulative += count
            lines.append(f"{name}_bucket{_labels(pairs + [('le', _number(float(bound)))])} {cumulative}")
        lines.append(f"{name}_sum{_labels(pairs)} {_number(value[-1])}")
        lines.append(f"{name}_count{_labels(pairs)} {cumulative}")


def _labels(pairs: list) -> str:
    if not pairs:
        return ""
    return "{" + ",".join(f'{key}="{_escape(str(value))}"' for key, value in pairs) + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(value)
