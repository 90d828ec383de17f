"""Clients that are slow on purpose: a head sent a byte at a time (slowloris), a body sent a byte
at a time and then abandoned, clients that ask for large answers and never read them, and more
connections than the server takes, all idle.

Each scenario opens its connections, keeps them misbehaving for a bounded time, and meanwhile
asks ``/health`` on a fresh connection every half second: the server must keep answering. Then
it checks that the server has dropped the connections on its own (its descriptor count back to
the idle count) while the clients still hold their ends open, within the server's own timeouts
plus a margin.
"""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import dataclass, field
from typing import Optional

from benchmarks.reliability import wire
from benchmarks.reliability.cases import request
from benchmarks.reliability.target import Target


@dataclass
class SlowResult:
    name: str
    clients: int
    health_ok: int = 0
    health_refused: int = 0
    health_failed: int = 0
    health_worst_ms: float = 0.0
    answers: dict = field(default_factory=dict)  # what the slow clients got back: status or "closed"
    dropped_after_s: Optional[float] = None  # when the server's fds were back to idle
    idle_fds: Optional[int] = None
    peak_fds: Optional[int] = None
    passed: bool = False
    detail: str = ""
    #: The known bug this scenario shows, if any: its failure is listed but does not fail a run.
    known: str = ""

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _socket(port: int, rcvbuf: Optional[int] = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    return sock


def _answer(sock: socket.socket) -> str:
    """What the server sent on ``sock`` so far: its status line's code, "closed", or "nothing"."""
    data = b""
    try:
        while True:
            piece = sock.recv(65536)
            if not piece:
                return data[9:12].decode("latin-1") if data.startswith(b"HTTP/1.1 ") else "closed"
            data += piece
            if len(data) > 64:
                break
    except BlockingIOError:
        pass
    except OSError:
        return "reset"
    return data[9:12].decode("latin-1") if data.startswith(b"HTTP/1.1 ") else "nothing"


async def _health_probe(target: Target, result: SlowResult, stop: asyncio.Event) -> None:
    while not stop.is_set():
        reply = await wire.exchange(target.port, request("GET", "/health"), "GET", timeout=10.0)
        if reply.status == 200:
            result.health_ok += 1
            result.health_worst_ms = max(result.health_worst_ms, reply.seconds * 1e3)
        elif reply.status == 503 and b"too_many_connections" in reply.body:
            result.health_refused += 1  # documented while every connection slot is taken
        else:
            result.health_failed += 1
        try:
            await asyncio.wait_for(stop.wait(), 0.5)
        except asyncio.TimeoutError:
            pass


async def _wait(socks) -> None:
    """Misbehaving by doing nothing: a second for the clients' requests to reach the server."""
    await asyncio.sleep(1.0)


async def _scenario(target: Target, result: SlowResult, open_clients, misbehave, limit_s: float) -> None:
    """Open the clients, misbehave, then wait up to ``limit_s`` for the server to drop them."""
    result.idle_fds = target.fd_count()
    stop = asyncio.Event()
    probe = asyncio.ensure_future(_health_probe(target, result, stop))
    socks = open_clients()
    try:
        await misbehave(socks)
        started = time.monotonic()
        result.peak_fds = target.fd_count()
        while time.monotonic() - started < limit_s:
            fds = target.fd_count()
            result.peak_fds = max(result.peak_fds or 0, fds or 0)
            if fds is not None and fds <= result.idle_fds:
                result.dropped_after_s = round(time.monotonic() - started, 2)
                break
            await asyncio.sleep(0.2)
        for sock in socks:
            answer = _answer(sock)
            result.answers[answer] = result.answers.get(answer, 0) + 1
    finally:
        stop.set()
        await probe
        for sock in socks:
            sock.close()
    alive = target.alive()
    result.passed = alive and result.dropped_after_s is not None and result.health_failed == 0
    result.detail = ("" if result.passed else
                     f"alive={alive}, dropped_after_s={result.dropped_after_s}, health_failed={result.health_failed}")


def slowloris(target: Target, clients: int, limits: dict, margin: float = 10.0) -> SlowResult:
    """Heads sent one byte every 0.5 s, never finished: each must get 408 (or be closed) once
    ``head_timeout`` has passed."""
    result = SlowResult("slowloris", clients)
    head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 10000

    async def misbehave(socks) -> None:
        deadline = time.monotonic() + limits.get("head_timeout", 10.0) + 2.0
        index = 0
        while time.monotonic() < deadline:
            for sock in socks:
                try:
                    sock.send(head[index:index + 1])
                except OSError:
                    pass
            index += 1
            await asyncio.sleep(0.5)

    asyncio.run(_scenario(target, result, lambda: [_socket(target.port) for _ in range(clients)], misbehave,
                          limits.get("head_timeout", 10.0) + margin))
    return result


def slow_body(target: Target, clients: int, limits: dict, trickle_s: float = 4.0, margin: float = 10.0) -> SlowResult:
    """A body announced as 100 kB, sent one byte every 0.3 s for ``trickle_s``, then nothing:
    each must be dropped (408) once ``body_idle_timeout`` has passed without a byte."""
    result = SlowResult("slow body", clients)
    head = b"POST /api/echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"

    def open_clients() -> list:
        socks = [_socket(target.port) for _ in range(clients)]
        for sock in socks:
            sock.send(head)
        return socks

    async def misbehave(socks) -> None:
        deadline = time.monotonic() + trickle_s
        while time.monotonic() < deadline:
            for sock in socks:
                try:
                    sock.send(b" ")
                except OSError:
                    pass
            await asyncio.sleep(0.3)

    asyncio.run(_scenario(target, result, open_clients, misbehave, limits.get("body_idle_timeout", 30.0) + margin))
    return result


def never_reading(target: Target, clients: int, limits: dict, pipelined: int = 1, margin: float = 30.0) -> SlowResult:
    """Clients with a 4 KiB receive buffer that ask for a 1 MiB answer (``pipelined`` requests
    for it at once) or, with a model, a long stream, and never read: the server must drop them
    once ``write_timeout`` (or, with everything handed to the kernel, ``keepalive_timeout``) has
    passed."""
    result = SlowResult("never reading" + (f", {pipelined} pipelined" if pipelined > 1 else ""), clients)
    large = request("GET", "/api/large") * pipelined
    stream = request("POST", "/v1/chat/completions", [(b"Content-Type", b"application/json")],
                     b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2000, '
                     b'"stream": true}')

    def open_clients() -> list:
        socks = []
        for index in range(clients):
            sock = _socket(target.port, rcvbuf=4096)
            sock.setblocking(True)
            sock.sendall(stream if target.settings.model and index % 2 else large)
            sock.setblocking(False)
            socks.append(sock)
        return socks

    limit = limits.get("write_timeout", 60.0) + limits.get("keepalive_timeout", 5.0) + margin
    asyncio.run(_scenario(target, result, open_clients, _wait, limit))
    return result


def flood(target: Target, limits: dict, extra: int = 50, margin: float = 20.0) -> SlowResult:
    """``max_connections + extra`` connections opened at once that send nothing: the server must
    refuse or close the excess (503 ``too_many_connections`` is documented), and drop the rest
    once they have been idle for ``keepalive_timeout``."""
    count = int(limits.get("max_connections", 1024)) + extra
    result = SlowResult("connection flood", count)

    def open_clients() -> list:
        socks = []
        for _ in range(count):
            try:
                socks.append(_socket(target.port))
            except OSError:
                break
        return socks

    limit = limits.get("keepalive_timeout", 5.0) + limits.get("head_timeout", 10.0) + margin
    asyncio.run(_scenario(target, result, open_clients, _wait, limit))
    return result


def run_all(target: Target, clients: int, limits: dict) -> list:
    """Every scenario, in turn."""
    return [slowloris(target, clients, limits), slow_body(target, clients, limits),
            never_reading(target, clients, limits), never_reading(target, clients, limits, pipelined=8),
            flood(target, limits)]
