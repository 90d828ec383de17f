"""Fuzz cases: what one generated request is, how requests are put together, and the families.

A family is a function ``(rng) -> Case`` drawing one request from a seeded :class:`random.Random`,
so a seed gives the same sequence of requests on every run. Families whose ``known`` names a
server bug already reported (and awaiting its fix) run only when asked for: their findings are
listed as known and do not fail a run. When the bug is fixed, its family's ``known`` is emptied
and it joins every run.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Optional


@dataclass
class Case:
    """One request. ``complete``: the bytes form whole, well-framed requests, so the server owes
    an answer (no answer is a failure); otherwise it may wait for more or close. ``half_close``:
    end our side of the connection after sending."""

    family: str
    data: bytes
    method: str = "GET"
    complete: bool = True
    half_close: bool = False
    #: Seconds after sending at which the client drops the connection without reading (None:
    #: it reads the answer).
    abandon_after: Optional[float] = None


def request(method: str, target: str, headers: Optional[list] = None, body: Optional[bytes] = None,
            chunked: bool = False, version: str = "HTTP/1.1") -> bytes:
    """A request as bytes: ``Host`` first unless ``headers`` has one, then the headers, then a
    Content-Length (or chunked) framing for ``body``."""
    lines = [f"{method} {target} {version}".encode("latin-1", "replace")]
    headers = list(headers or [])
    if not any(name.lower() == b"host" for name, _ in headers):
        headers.insert(0, (b"Host", b"127.0.0.1"))
    if body is not None:
        headers.append((b"Transfer-Encoding", b"chunked") if chunked else (b"Content-Length", str(len(body)).encode()))
    lines += [name + b": " + value for name, value in headers]
    head = b"\r\n".join(lines) + b"\r\n\r\n"
    if body is None:
        return head
    return head + (chunk(body) if chunked else body)


def chunk(body: bytes, size: int = 0) -> bytes:
    """``body`` in chunked coding (pieces of ``size`` bytes; one piece when 0), ended."""
    size = size or max(1, len(body))
    pieces = [body[i:i + size] for i in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


JSON_HEADERS = [(b"Content-Type", b"application/json")]


def pick(rng: random.Random, values):
    """One of ``values`` (a sequence), drawn from ``rng``."""
    return values[rng.randrange(len(values))]


def post_json(path: str, body: bytes, extra: Optional[list] = None) -> bytes:
    return request("POST", path, JSON_HEADERS + list(extra or []), body)


@dataclass
class Family:
    name: str
    draw: Callable[[random.Random], Case]
    weight: int
    #: Needs the model (chat completions); skipped against a --no-model target.
    model: bool = False
    #: The known server bug this family triggers ("" if none): such a family runs only when
    #: known bugs are included, and what it finds is reported as known.
    known: str = ""


def families(model: bool, include_known: bool = False) -> list[Family]:
    from benchmarks.reliability import body_cases, http_cases

    every = http_cases.FAMILIES + body_cases.FAMILIES
    return [f for f in every if (model or not f.model) and (include_known or not f.known)]


def generate(seed: int, count: int, model: bool, include_known: bool = False,
             only: Optional[set] = None):
    """``count`` cases from ``seed``: the same sequence for the same arguments."""
    rng = random.Random(seed)
    chosen = [f for f in families(model, include_known) if only is None or f.name in only]
    weights = [f.weight for f in chosen]
    for _ in range(count):
        family = rng.choices(chosen, weights)[0]
        case = family.draw(rng)
        case.family = family.name
        yield case
