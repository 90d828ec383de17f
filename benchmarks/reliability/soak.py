"""The soak: a mixed load on many keep-alive connections for a fixed time, with the server's
memory and open file descriptors sampled every second.

Each connection loops over requests drawn (seeded) from :data:`MIX`, reusing its connection
while the server keeps it open. An answer with a status its kind does not allow, a broken or
reset connection in the middle of a request, or no answer within the timeout is an error. After
the load the connections are closed and, once the server has settled, memory and descriptors
are compared with the baseline taken at the end of the warm-up.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass, field
from typing import Optional

import h11

from benchmarks.reliability.target import Target
from benchmarks.report import percentile

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hello world"}], "max_tokens": 8, "temperature": 0}
SCHEMA_CHAT = dict(CHAT, response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": {
    "type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}}})

#: (kind, weight, needs the model, method, path, body or None, allowed statuses)
MIX = (
    ("health", 25, False, "GET", "/health", None, {200}),
    ("models", 8, False, "GET", "/v1/models", None, {200}),
    ("custom_get", 12, False, "GET", "/api/items/7", None, {200}),
    ("custom_post", 5, False, "POST", "/api/echo", b'{"x": [1, 2, 3]}', {201}),
    ("not_found", 5, False, "GET", "/nowhere", None, {404}),
    ("bad_json", 5, False, "POST", "/v1/chat/completions", b'{"model": ', {400, 404}),
    ("chat", 15, True, "POST", "/v1/chat/completions", json.dumps(CHAT).encode(), {200, 429}),
    ("chat_stream", 10, True, "POST", "/v1/chat/completions", json.dumps(dict(CHAT, stream=True)).encode(),
     {200, 429}),
    ("chat_schema", 5, True, "POST", "/v1/chat/completions", json.dumps(SCHEMA_CHAT).encode(), {200, 429}),
    ("chat_invalid", 5, True, "POST", "/v1/chat/completions", json.dumps(dict(CHAT, temperature=9)).encode(), {400}),
)
REQUEST_TIMEOUT = 60.0


@dataclass
class SoakResult:
    seconds: float = 0.0
    connections: int = 0
    requests: int = 0
    by_kind: dict = field(default_factory=dict)
    statuses: dict = field(default_factory=dict)
    errors: list = field(default_factory=list)
    error_count: int = 0
    latencies_ms: list = field(default_factory=list, repr=False)
    samples: list = field(default_factory=list)  # [seconds since start, rss MiB, fds]
    baseline: dict = field(default_factory=dict)
    after: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"seconds": round(self.seconds, 1), "connections": self.connections, "requests": self.requests,
                "requests_per_second": round(self.requests / self.seconds, 1) if self.seconds else None,
                "p50_ms": percentile(self.latencies_ms, 50), "p99_ms": percentile(self.latencies_ms, 99),
                "max_ms": max(self.latencies_ms, default=None), "by_kind": self.by_kind, "statuses": self.statuses,
                "error_count": self.error_count, "errors": self.errors[:20], "baseline": self.baseline,
                "after": self.after, "rss_max_mib": max((s[1] for s in self.samples if s[1]), default=None),
                "fds_max": max((s[2] for s in self.samples if s[2]), default=None), "samples": self.samples}


class _Client:
    """One keep-alive connection speaking through h11, reopened whenever the server closes it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader = self.writer = self.conn = None

    async def request(self, method: str, path: str, body: Optional[bytes]) -> tuple:
        if self.conn is None or self.conn.our_state is not h11.IDLE:
            await self.reopen()
        headers = [("host", "127.0.0.1"), ("content-type", "application/json")]
        if body is not None:
            headers.append(("content-length", str(len(body))))
        data = self.conn.send(h11.Request(method=method, target=path, headers=headers))
        if body:
            data += self.conn.send(h11.Data(data=body))
        data += self.conn.send(h11.EndOfMessage())
        self.writer.write(data)
        status, size = None, 0
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(await self.reader.read(65536))
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                size += len(event.data)
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionResetError("closed in the middle of a response")
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        else:
            self.close()
        return status, size

    async def reopen(self) -> None:
        self.close()
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.conn = h11.Connection(h11.CLIENT)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.transport.abort()
        self.reader = self.writer = self.conn = None


async def _connection(port: int, rng: random.Random, deadline: float, mix: tuple, result: SoakResult,
                      warmup_end: float) -> None:
    client = _Client(port)
    weights = [m[1] for m in mix]
    try:
        while time.monotonic() < deadline:
            kind, _, _, method, path, body, allowed = rng.choices(mix, weights)[0]
            started = time.monotonic()
            try:
                status, _ = await asyncio.wait_for(client.request(method, path, body), REQUEST_TIMEOUT)
                problem = None if status in allowed else f"{kind}: HTTP {status}"
            except asyncio.TimeoutError:
                status, problem = None, f"{kind}: no answer in {REQUEST_TIMEOUT:.0f} s"
                client.close()
            except (OSError, h11.ProtocolError) as exc:
                status, problem = None, f"{kind}: {type(exc).__name__}: {exc}"
                client.close()
            elapsed = time.monotonic() - started
            result.requests += 1
            result.by_kind[kind] = result.by_kind.get(kind, 0) + 1
            result.statuses[str(status)] = result.statuses.get(str(status), 0) + 1
            if started >= warmup_end:
                result.latencies_ms.append(elapsed * 1e3)
            if problem:
                result.error_count += 1
                if len(result.errors) < 100:
                    result.errors.append(problem)
    finally:
        client.close()


async def _sample(target: Target, result: SoakResult, started: float, stop: asyncio.Event) -> None:
    while not stop.is_set():
        result.samples.append([round(time.monotonic() - started, 1), target.rss_mib(), target.fd_count()])
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
        except asyncio.TimeoutError:
            pass


def settle(target: Target, fds: Optional[int], timeout: float) -> dict:
    """Wait up to ``timeout`` s for the descriptor count to fall back to ``fds``; what it was then."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and fds is not None and (target.fd_count() or 0) > fds:
        time.sleep(0.2)
    return {"rss_mib": target.rss_mib(), "fds": target.fd_count()}


def run(target: Target, seconds: float, connections: int = 64, seed: int = 0, warmup: float = 0.0,
        settle_timeout: float = 15.0) -> SoakResult:
    """Soak ``target`` for ``seconds`` with ``connections`` connections; the first ``warmup``
    seconds (default a sixth, at least 3 s) are left out of latencies and end with the baseline."""
    warmup = warmup or max(3.0, seconds / 6)
    mix = tuple(m for m in MIX if target.settings.model or not m[2])
    result = SoakResult(connections=connections)
    idle_fds = target.fd_count()

    async def main() -> None:
        started = time.monotonic()
        stop = asyncio.Event()
        sampler = asyncio.ensure_future(_sample(target, result, started, stop))
        load = asyncio.gather(*(_connection(target.port, random.Random(seed * 1000 + i), started + seconds, mix,
                                            result, started + warmup) for i in range(connections)))
        await asyncio.sleep(warmup)
        result.baseline = {"rss_mib": target.rss_mib(), "fds": target.fd_count(), "idle_fds": idle_fds}
        await load
        result.seconds = time.monotonic() - started
        stop.set()
        await sampler

    asyncio.run(main())
    result.after = settle(target, idle_fds, settle_timeout)
    return result
