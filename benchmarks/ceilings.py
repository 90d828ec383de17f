"""Two reference servers that bound what any asyncio HTTP server in Python can do here.

- ``fixed``: the smallest asyncio server that answers a fixed response without parsing: it
  counts request ends (``\\r\\n\\r\\n``) in what it reads and writes one canned response each.
  That is the cost of asyncio and the sockets alone.
- ``h11``: the smallest asyncio + h11 loop that parses each request with h11 and answers a fixed
  response through h11, with no routing or anything else. That is the parser's cost on top.

Both answer every request with the same bytes as ``helios_raw``'s ``GET /health`` body, so the
responses compare. Run one with ``python -m benchmarks.ceilings fixed|h11 [--bind HOST:PORT]``
(it logs ``listening on http://HOST:PORT``, port 0 picks a free one), or start one as a
subprocess with :func:`start_ceiling`.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import Optional

import h11

from .load import ServerProcess

BODY = b'{"status":"ok"}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]
FIXED_RESPONSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
    + str(len(BODY)).encode() + b"\r\n\r\n" + BODY
)
KINDS = ("fixed", "h11")


class FixedProtocol(asyncio.Protocol):
    """One canned response per blank line seen; requests split across reads are counted once."""

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.tail = b""

    def data_received(self, data: bytes) -> None:
        data = self.tail + data
        count = data.count(b"\r\n\r\n")
        self.tail = data[data.rfind(b"\r\n\r\n") + 4:][-3:] if count else data[-3:]
        if count:
            self.transport.write(FIXED_RESPONSE * count)


class H11Protocol(asyncio.Protocol):
    """Parses every request with h11 and answers the fixed response through h11."""

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.conn = h11.Connection(h11.SERVER)

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        conn.receive_data(data)
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError:
                self.transport.close()
                return
            if event is h11.NEED_DATA:
                return
            if event is h11.PAUSED:
                if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                    conn.start_next_cycle()
                    continue
                return
            if type(event) is h11.EndOfMessage:
                out = conn.send(h11.Response(status_code=200, headers=HEADERS))
                out += conn.send(h11.Data(data=BODY))
                out += conn.send(h11.EndOfMessage())
                self.transport.write(out)
                if conn.our_state is h11.MUST_CLOSE:
                    self.transport.close()
                    return
                conn.start_next_cycle()
            elif type(event) is h11.ConnectionClosed:
                self.transport.close()
                return


async def serve(kind: str, host: str, port: int) -> None:
    """Serve the ``kind`` ceiling until SIGINT/SIGTERM."""
    protocol = {"fixed": FixedProtocol, "h11": H11Protocol}[kind]
    loop = asyncio.get_running_loop()
    server = await loop.create_server(protocol, host, port, reuse_address=True, backlog=2048)
    bound = server.sockets[0].getsockname()
    print(f"{kind} ceiling listening on http://{bound[0]}:{bound[1]}", flush=True)
    stopping = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    server.close()


def start_ceiling(kind: str, host: str = "127.0.0.1", port: int = 0, python: Optional[str] = None) -> ServerProcess:
    """Run the ``kind`` ceiling (``fixed`` or ``h11``) in a subprocess; stop it with ``.stop()``."""
    if kind not in KINDS:
        raise ValueError(f"unknown ceiling {kind!r} (known: {', '.join(KINDS)})")
    return ServerProcess([python or sys.executable, "-m", "benchmarks.ceilings", kind, "--bind", f"{host}:{port}"])


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(description="Run a reference HTTP server for benchmarks.")
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("--bind", default="127.0.0.1:0", metavar="HOST:PORT")
    args = parser.parse_args(argv)
    host, _, port = args.bind.rpartition(":")
    asyncio.run(serve(args.kind, host or "127.0.0.1", int(port)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
