"""HTTPProtocol on a recording transport: feed it exact bytes, read back the exact bytes written.

The transport stands in for asyncio's socket transport (write, close, write_eof, pause_reading
...); everything above it (protocol, h11, App, router, handlers) is the real code. Run on a
:class:`~tests.support.clock.VirtualClockLoop`, its timers fire on a virtual clock.
"""

from __future__ import annotations

import asyncio
import re

from helios_raw.app import App
from helios_raw.http.limits import Limits
from helios_raw.http.protocol import HTTPProtocol
from helios_raw.http.server import ConnectionRegistry

#: The varying parts of a response, which :meth:`Wire.take` writes as ``DATE``, ``ID`` (an id the
#: server minted; one a client sent is kept) and ``MS``.
DATE = re.compile(rb"\r\ndate: (?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT\r\n")
MINTED_ID = re.compile(rb"\r\nx-request-id: req_[0-9a-f]{32}\r\n")
PROCESSING_MS = re.compile(rb"\r\nopenai-processing-ms: \d+\r\n")


class RecordingTransport(asyncio.Transport):
    """Records what the protocol writes and how it steers the connection."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.protocol = None
        self.closing = False
        self.eof_written = False
        self.reading = True
        self.aborted = False
        self.buffered = 0

    def write(self, data) -> None:
        assert not self.eof_written, "write after write_eof"
        assert not self.closing, "write after close"
        self.written += data

    def get_extra_info(self, name, default=None):
        return {"peername": ("127.0.0.1", 50000)}.get(name, default)

    def set_write_buffer_limits(self, high=None, low=None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    def abort(self) -> None:
        self.aborted = True
        self.close()

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof_written = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


class Wire:
    """One HTTPProtocol on a recording transport."""

    def __init__(self, app: App, limits: Limits | None = None, transport: RecordingTransport | None = None) -> None:
        self.limits = limits or Limits()
        self.transport = transport or RecordingTransport()
        self.registry = ConnectionRegistry(self.limits)
        self.protocol = HTTPProtocol(app, self.limits, self.registry, loop=asyncio.get_running_loop())
        self.transport.protocol = self.protocol
        self.protocol.connection_made(self.transport)

    def feed(self, *chunks: bytes) -> None:
        for chunk in chunks:
            self.protocol.data_received(chunk)

    def take(self) -> bytes:
        """What was written since the last call, the varying parts replaced (see ``DATE``)."""
        data = bytes(self.transport.written)
        self.transport.written.clear()
        data = DATE.sub(b"\r\ndate: DATE\r\n", data)
        data = MINTED_ID.sub(b"\r\nx-request-id: ID\r\n", data)
        return PROCESSING_MS.sub(b"\r\nopenai-processing-ms: MS\r\n", data)

    async def settle(self) -> None:
        """Let scheduled callbacks and tasks run."""
        for _ in range(20):
            await asyncio.sleep(0)
