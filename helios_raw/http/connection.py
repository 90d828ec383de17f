"""The client's side of one connection: bytes read with a timeout (:class:`Wire`), an h11
state machine over them (:class:`ClientConnection`), and the pool of an origin (:class:`Origin`),
for :mod:`.client`; its errors, one sentence each."""

from __future__ import annotations

import asyncio
import collections
from typing import Optional

import h11

from .tcp import disable_nagle

#: Bytes buffered from a connection before reading from it is paused until the reader catches up.
READ_HIGH_WATER = 256 * 1024
READ_SIZE_HINT = 64 * 1024


class HTTPClientError(Exception):
    """The request could not be completed; the message is one sentence. ``reason`` says why
    without naming the server (for messages shown to someone who should not learn its address)."""

    def __init__(self, message: str, reason: Optional[str] = None) -> None:
        super().__init__(message)
        self.reason = reason or message


class ConnectError(HTTPClientError):
    """No connection could be made (refused, unknown host, TLS failure)."""


class ConnectTimeout(HTTPClientError):
    """No connection was made within the connect timeout."""


class ReadTimeout(HTTPClientError):
    """The server sent nothing for longer than the read timeout."""


class RemoteProtocolError(HTTPClientError):
    """The server broke HTTP or closed the connection before the response was complete."""


class StaleConnection(RemoteProtocolError):
    """A pooled connection was found closed before any byte of the response arrived."""


class Wire(asyncio.Protocol):
    """The bytes of one TCP or TLS connection: buffered as they arrive, read with a timeout.

    Reading pauses the transport once more than ``READ_HIGH_WATER`` bytes wait unread, so a slow
    consumer slows the server down instead of growing the buffer.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: Optional[asyncio.Transport] = None
        self._chunks: collections.deque = collections.deque()
        self._buffered = 0
        self._eof = False
        self._reading_paused = False
        self._writing_paused = False
        self._reader: Optional[asyncio.Future] = None
        self._drainer: Optional[asyncio.Future] = None
        self.lost = loop.create_future()

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        disable_nagle(transport)

    def data_received(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > READ_HIGH_WATER and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()
        self._wake(self._reader)

    def eof_received(self) -> bool:
        self._eof = True
        self._wake(self._reader)
        return False

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self._eof = True
        self._writing_paused = False
        self._wake(self._reader)
        self._wake(self._drainer)
        self._wake(self.lost)

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._wake(self._drainer)

    # used by the connection

    @property
    def usable(self) -> bool:
        """Open, with nothing unexpected waiting to be read (an idle server sends nothing)."""
        return not self._eof and not self._chunks and not self.transport.is_closing()

    async def read(self, timeout: float) -> bytes:
        """Everything buffered, waiting up to ``timeout`` seconds for something; ``b""`` at EOF."""
        if not self._chunks and not self._eof:
            self._reader = self.loop.create_future()
            await self._wait(self._reader, timeout, lambda: ReadTimeout(f"The server sent nothing for {timeout:g} seconds."))
            self._reader = None
        if not self._chunks:
            return b""
        data = self._chunks.popleft() if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        if self._reading_paused:
            self._reading_paused = False
            self.transport.resume_reading()
        return data

    async def write(self, data: bytes, timeout: float) -> None:
        """Write ``data`` and wait (up to ``timeout``) while the server reads slower than we write."""
        if self.transport.is_closing():
            raise StaleConnection("The connection was closed before the request could be sent.")
        self.transport.write(data)
        if self._writing_paused:
            self._drainer = self.loop.create_future()
            await self._wait(self._drainer, timeout,
                             lambda: ReadTimeout(f"The server accepted no request bytes for {timeout:g} seconds."))
            self._drainer = None

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    async def close_gracefully(self, timeout: float) -> None:
        """Close, waiting up to ``timeout`` seconds for the close to finish (a TLS connection
        says goodbye first); then abort."""
        self.transport.close()
        try:
            await asyncio.wait_for(asyncio.shield(self.lost), timeout)
        except asyncio.TimeoutError:
            self.transport.abort()

    # helpers

    async def _wait(self, future: asyncio.Future, timeout: float, error) -> None:
        """Await ``future``; after ``timeout`` seconds fail it with ``error()``."""
        timer = self.loop.call_later(timeout, _fail, future, error)
        try:
            await future
        finally:
            timer.cancel()

    @staticmethod
    def _wake(future: Optional[asyncio.Future]) -> None:
        if future is not None and not future.done():
            future.set_result(None)


def _fail(future: asyncio.Future, error) -> None:
    if not future.done():
        future.set_exception(error())


class ClientConnection:
    """One pooled connection: a :class:`Wire` and the h11 state machine that frames it."""

    __slots__ = ("origin", "wire", "h11", "requests", "received")

    def __init__(self, origin: "Origin", wire: Wire) -> None:
        self.origin = origin
        self.wire = wire
        self.h11 = h11.Connection(h11.CLIENT)
        #: Requests sent on this connection, the current one included.
        self.requests = 0
        #: Bytes received since the current request was sent.
        self.received = 0

    @property
    def reusable(self) -> bool:
        return self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE and self.wire.usable

    async def next_event(self, timeout: float):
        """The next h11 event of the response, reading from the wire as needed."""
        while True:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as exc:
                raise RemoteProtocolError(broken_message(self, exc)) from None
            if event is not h11.NEED_DATA:
                return event
            data = await self.wire.read(timeout)
            self.received += len(data)
            self.h11.receive_data(data)


def broken_message(connection: ClientConnection, exc: h11.RemoteProtocolError) -> str:
    if connection.wire._eof:
        return "The server closed the connection before the response was complete."
    return f"The server sent a malformed HTTP response: {exc}."


class Origin:
    """The pool of one ``(scheme, host, port)``: idle connections and the bound on open ones."""

    def __init__(self, scheme: str, host: str, port: int, limit: int) -> None:
        self.scheme = scheme
        self.host = host
        self.port = port
        self.idle: list[ClientConnection] = []
        self.slots = asyncio.Semaphore(limit)

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"

    def take_idle(self) -> Optional[ClientConnection]:
        while self.idle:
            connection = self.idle.pop()
            if connection.wire.usable:
                return connection
            connection.wire.close()
        return None

    def drop_idle(self) -> None:
        for connection in self.idle:
            connection.wire.close()
        self.idle.clear()
