"""How a streamed body reaches the socket: flow control, and the bridge from worker threads.

:class:`FlowControl` says whether the transport accepts more output, to coroutines and to worker
threads alike. :class:`StreamWriter` is the :class:`~helios_raw.http.response.ResponseWriter` a
streaming producer is given; it writes through the :class:`~helios_raw.http.cycle.Cycle` of its
response, and from worker threads hands pieces over to the event loop in order.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from typing import TYPE_CHECKING

from ..cancel import ClientGone
from .response import ResponseWriter

if TYPE_CHECKING:  # pragma: no cover
    from .cycle import Cycle

#: Seconds between the loop's collections of pieces a worker thread keeps streaming.
THREAD_FLUSH_INTERVAL = 0.001


class FlowControl:
    """Whether the transport accepts more output, visible to coroutines and to worker threads."""

    __slots__ = ("_event", "_thread_event")

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self._event.set()
        self._thread_event = threading.Event()
        self._thread_event.set()

    @property
    def paused(self) -> bool:
        return not self._event.is_set()

    def pause(self) -> None:
        self._event.clear()
        self._thread_event.clear()

    def resume(self) -> None:
        self._event.set()
        self._thread_event.set()

    async def wait_writable(self) -> None:
        await self._event.wait()

    def wait_writable_threadsafe(self, timeout: float) -> bool:
        return self._thread_event.wait(timeout)


class StreamWriter(ResponseWriter):
    """The writer a streaming producer is given: bound to one cycle, so that a producer that
    outlives its response (a worker thread still finishing) can never write into the next one.

    Pieces from a worker thread wait in ``_pending`` until the loop writes them: the loop is woken
    at once when nothing is scheduled, and while pieces keep coming it collects them every
    ``THREAD_FLUSH_INTERVAL`` seconds instead of being woken for each (waking the loop costs the
    worker a GIL round trip, which at thousands of tokens per second halves throughput). Loop-side
    writes, and the end of the response, first write what is pending, so nothing is lost or
    reordered. A worker blocks while the transport is paused or ``limits.write_buffer_high`` bytes
    already wait in ``_pending``, so a slow reader bounds what the server holds."""

    __slots__ = ("cycle", "connection", "_pending", "_pending_bytes", "_lock", "_flush_scheduled")

    def __init__(self, cycle: "Cycle") -> None:
        self.cycle = cycle
        self.connection = cycle.connection
        self._pending: collections.deque = collections.deque()
        self._pending_bytes = 0
        self._lock = threading.Lock()
        self._flush_scheduled = False

    @property
    def closed(self) -> bool:  # type: ignore[override]
        """The response is over, or the client gone: a failed write closes the transport at once
        but tells the protocol only on a later turn of the loop, which a producer that never
        has to wait would not give it."""
        connection = self.connection
        return connection.closed or connection.cycle is not self.cycle or connection.transport.is_closing()

    @property
    def paused(self) -> bool:
        return self.connection.flow.paused

    def write(self, data: bytes) -> None:
        """Write one piece of the body now (event-loop thread); never blocks, never drops."""
        if self._pending:
            self.write_pending()
        if data and not self.closed:
            self.cycle.write_body(data)

    async def drain(self) -> None:
        """Wait while the client reads slower than we write; ClientGone if it has left, or read
        nothing for ``limits.write_timeout`` (the connection is then dropped)."""
        if self.closed:
            raise ClientGone()
        connection = self.connection
        if connection.flow.paused:
            try:
                await asyncio.wait_for(connection.flow.wait_writable(), connection.limits.write_timeout)
            except asyncio.TimeoutError:
                connection.give_up_on_slow_reader()
        if self.closed:
            raise ClientGone()

    def write_threadsafe(self, data: bytes) -> None:
        """Hand ``data`` to the event loop from a worker thread, blocking while the client is
        slow; ClientGone once it has left or read nothing for ``limits.write_timeout``."""
        connection = self.connection
        flow = connection.flow
        limit = connection.limits.write_buffer_high
        deadline = 0.0
        while True:
            if self.closed:
                raise ClientGone()
            if not flow.paused and self._pending_bytes < limit:
                break
            if not deadline:
                deadline = time.monotonic() + connection.limits.write_timeout
            elif time.monotonic() >= deadline:
                connection.loop.call_soon_threadsafe(connection.give_up_on_slow_reader)
                raise ClientGone()
            if flow.paused:
                flow.wait_writable_threadsafe(0.05)
            else:  # the loop has not yet collected what is pending
                time.sleep(THREAD_FLUSH_INTERVAL)
        with self._lock:
            self._pending.append(data)
            self._pending_bytes += len(data)
            schedule = not self._flush_scheduled
            self._flush_scheduled = True
        if schedule:
            connection.loop.call_soon_threadsafe(self._flush)

    def _flush(self) -> None:
        """Loop thread: write what worker threads handed over; look again shortly while they
        keep handing over, else wait to be woken."""
        if self._pending:
            self.write_pending()
            self.connection.loop.call_later(THREAD_FLUSH_INTERVAL, self._flush)
            return
        with self._lock:
            if not self._pending:
                self._flush_scheduled = False
                return
        self.connection.loop.call_soon(self._flush)  # appended meanwhile

    def write_pending(self) -> None:
        """Loop thread: write, in order, what worker threads have handed over so far."""
        with self._lock:
            pending, self._pending = self._pending, collections.deque()
            self._pending_bytes = 0
        if pending and not self.closed:
            self.cycle.write_body(pending[0] if len(pending) == 1 else b"".join(pending))
