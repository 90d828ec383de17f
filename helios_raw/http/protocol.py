"""HTTP/1.1 on ``asyncio.Protocol`` with the ``h11`` parser: one instance per connection.

The methods follow asyncio's callbacks. Parsing is h11's; what h11 leaves to its caller is done
here and in :mod:`~helios_raw.http.framing`: the limits of :class:`~helios_raw.http.limits.Limits`,
strict framing, timeouts, flow control both ways, pipelining (requests answered one at a time, in
order) and noticing a client that leaves. Each request is a :class:`~helios_raw.http.cycle.Cycle`.

A connection is in one :class:`Phase` at a time, and each phase has at most one timer:

- ``IDLE``: waiting for a request; closed after ``keepalive_timeout``.
- ``HEAD``: a head is arriving; it must be complete ``head_timeout`` after its first byte (408).
- ``BODY``: its body is arriving; no byte for ``body_idle_timeout``, or not all of it within
  ``body_timeout``, is a 408.
- ``RESPONDING``: the request is complete; its handler runs and its response is written.
- ``LINGERING``: an error was sent; input is read and dropped for a moment, then the close.
- ``CLOSED``: the transport is closing (sending what it holds) or gone.

Whether the connection outlives a request is decided in one place, :meth:`HTTPProtocol.keeps_alive`.

Reading goes on while a request is handled, so that a client's departure is seen at once; what a
client pipelines meanwhile waits in h11's buffer, and reading pauses once that holds more than one
request head's worth. A reset, or a write that fails, sets ``request.cancelled``.

A client's EOF (FIN) while its request is handled does not: it may be a half-close, after which
HTTP lets the client read its answer, or a full close; the two look alike until something is
written, which a fully closed client answers with a reset. So from ``PROBE_DELAY`` seconds after
the EOF, each second, the client is written something it must take without its answer changing
(:meth:`Cycle.write_probe`: an interim ``102 Processing`` before the response, any number of
which HTTP/1.1 clients accept; a stream's heartbeat, such as an SSE comment, during one), and the
socket is checked for the reset in between. A half-closed client gets its answer and those to
requests it pipelined before its EOF, then the connection closes. Where nothing may be written
(HTTP/1.0, a stream without a heartbeat), a full close is seen at the next write of the answer.

The application is any object with:

- ``handle(request)`` -> a response, or an awaitable of one (may raise ``APIError``);
- ``response_headers(request)`` -> headers added to every response, protocol errors included
  (``request`` is None when no request could be parsed);
- ``log_access(request, status, sent_bytes, seconds)``;
- ``log_error(message, exc)`` for an exception no client may see.
"""

from __future__ import annotations

import asyncio
import enum
import socket
import time
from typing import TYPE_CHECKING, Optional

import h11

from ..errors import APIError
from . import framing
from .cycle import Cycle
from .deadline import Deadline
from .framing import CHUNKED, read_head
from .heads import raw_error
from .limits import Limits
from .request import Request
from .tcp import disable_nagle
from .writer import FlowControl

if TYPE_CHECKING:  # pragma: no cover
    from .server import ConnectionRegistry

_LINGER_SECONDS = 2.0
#: Seconds after a client's EOF before the first probe is written to tell a half-close from a full
#: close, so that a prompt answer is never preceded by one; then one a second.
PROBE_DELAY = 1.0
#: Seconds between looks at the socket for the reset a fully closed client answers a write with.
_PROBE_TICK = 0.25
_h11_Request = h11.Request
_h11_Data = h11.Data
_h11_EndOfMessage = h11.EndOfMessage
_h11_NEED_DATA = h11.NEED_DATA
_h11_PAUSED = h11.PAUSED
_h11_DONE = h11.DONE


class Phase(enum.Enum):
    """Where a connection is in its life; see the module's docstring."""

    IDLE = "idle"
    HEAD = "head"
    BODY = "body"
    RESPONDING = "responding"
    LINGERING = "lingering"
    CLOSED = "closed"


# Module names for the phases: reading an enum member off its class costs ~0.2 us on Python 3.11,
# and the hot path compares phases several times per request.
IDLE, HEAD, BODY, RESPONDING, LINGERING, CLOSED = Phase
_QUIET = (IDLE, LINGERING, CLOSED)


class HTTPProtocol(asyncio.Protocol):
    """Serves HTTP/1.1 on one connection for ``app``; registered in ``registry`` while open.
    ``loop`` (the running loop by default) gives the clock every timeout is measured on."""

    def __init__(self, app, limits: Limits, registry: "ConnectionRegistry",
                 loop: Optional[asyncio.AbstractEventLoop] = None) -> None:
        self.app = app
        self.limits = limits
        self.registry = registry
        self.loop = loop or asyncio.get_running_loop()
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_head_bytes)
        self.transport: Optional[asyncio.Transport] = None
        self.flow = FlowControl()
        self.client: Optional[tuple] = None
        self.phase = IDLE
        self.scanner = framing.HeadScanner()
        self.cycle: Optional[Cycle] = None
        self.requests_served = 0
        self.draining = False  # a graceful shutdown asked to close after the request in hand
        self.half_closed = False  # the client sent its EOF; it may still read
        self._next_probe = 0.0
        self._body_due = 0.0  # when the body now arriving must be complete
        self._receiving_since = 0.0  # when the request now arriving sent its first byte
        self._received = 0  # bytes of it received so far
        self._reading_paused = False
        self._parsing = False  # inside _handle_events: a cycle ending there must not re-enter it
        self.deadline = Deadline(self.loop)

    @property
    def closed(self) -> bool:
        return self.phase is CLOSED

    @property
    def idle(self) -> bool:
        """No request is being received or answered."""
        return self.phase in _QUIET

    # -- asyncio callbacks -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.client = transport.get_extra_info("peername")
        disable_nagle(transport)
        self.transport.set_write_buffer_limits(self.limits.write_buffer_high, self.limits.write_buffer_low)
        if self.registry.shutting_down:
            self.close()
            return
        if not self.registry.admit(self):
            self.send_raw_error(None, framing.too_many_connections())
            return
        self.deadline.set(self.limits.keepalive_timeout, self._on_idle_timeout)

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self.phase = CLOSED
        self.registry.discard(self)
        self.deadline.cancel()
        self.flow.resume()  # wake writers so they see the connection is gone
        cycle = self.cycle
        if cycle is not None:
            cycle.request.cancelled.set("client disconnected")
            if cycle.task is not None and not cycle.task.done():
                cycle.task.cancel()

    def eof_received(self) -> bool:
        # The client will send nothing more. A request it sent in full is answered (see the
        # module's docstring on telling a half-close from a full close).
        if self.phase is not RESPONDING:
            self.close()  # nothing owed, or a request that can never be complete
            return False
        self.half_closed = True
        self.conn.receive_data(b"")
        self._start_probing()
        return True

    def pause_writing(self) -> None:
        self.flow.pause()

    def resume_writing(self) -> None:
        self.flow.resume()

    def data_received(self, data: bytes) -> None:
        phase = self.phase
        if phase is IDLE:  # a head's first bytes; its deadline is set if they do not complete it
            self.phase = HEAD
            self._receiving_since = self.loop.time()
            self._received = 0
            fault = self.scanner.start(data)
        elif phase is HEAD:
            fault = self.scanner.feed(data)
        elif phase is LINGERING or phase is CLOSED:
            return
        elif phase is RESPONDING and not self.cycle.keep_alive:
            # The client said this was its last request: anything after it is ignored, and the
            # answer owed is still sent.
            return
        else:
            fault = None
        if fault is not None:
            self.send_raw_error(None, framing.malformed(fault))
            return
        self._received += len(data)
        self.conn.receive_data(data)
        self._handle_events()

    # -- reading -----------------------------------------------------------------------------

    def _handle_events(self) -> None:
        self._parsing = True
        try:
            self._next_events()
        finally:
            self._parsing = False

    def _next_events(self) -> None:
        conn = self.conn
        while True:
            phase = self.phase
            if phase is LINGERING or phase is CLOSED:
                return
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                self.send_raw_error(self.cycle.request if self.cycle else None,
                                    framing.protocol_error(exc, conn.trailing_data[0], self.limits))
                return
            if event is _h11_NEED_DATA:
                if phase is HEAD:  # an incomplete head: due head_timeout after its first byte
                    self.deadline.set_at(self._receiving_since + self.limits.head_timeout, self._on_head_timeout)
                    if framing.request_line_overlong(conn.trailing_data[0], self.limits):
                        self.send_raw_error(None, framing.request_line_too_long(self.limits))
                return
            if event is _h11_PAUSED:
                # A pipelined request waits behind the one in flight; stop reading if it piles up.
                if len(conn.trailing_data[0]) > self.limits.max_head_bytes and not self._reading_paused:
                    self._reading_paused = True
                    self.transport.pause_reading()
                return
            event_type = type(event)
            if event_type is _h11_Request:
                self._on_request(event)
            elif event_type is _h11_Data:
                self._on_body(event.data)
            elif event_type is _h11_EndOfMessage:
                cycle = self.cycle
                self.phase = RESPONDING
                if self.half_closed:  # a request pipelined before the client's EOF
                    self._start_probing()
                else:
                    self.deadline.clear()
                cycle.dispatch()
                if not cycle.keep_alive:
                    return  # the client's last request: nothing after it is parsed
            else:  # ConnectionClosed: the client finished sending and everything is answered
                if self.cycle is None:
                    self.close()
                return

    def _on_request(self, event: h11.Request) -> None:
        """Check a request head; start its cycle, or refuse it."""
        limits = self.limits
        request, error, keep_alive, length = read_head(event, limits, self.client)
        if error is not None:
            self.send_raw_error(request, error)
            return
        self.phase = BODY
        self.cycle = Cycle(self, request, keep_alive)
        if length is None:
            self.deadline.clear()
            return
        if length > limits.max_body_bytes:
            self.send_raw_error(request, framing.body_too_large(limits))
            return
        if length == CHUNKED:
            framing.strict_chunks(self.conn, limits.max_head_bytes)
        if self.conn.they_are_waiting_for_100_continue:
            self.transport.write(self.conn.send(h11.InformationalResponse(
                status_code=100, headers=[], reason=b"Continue")))
        self._body_due = self.loop.time() + limits.body_timeout
        self.deadline.set(min(limits.body_idle_timeout, limits.body_timeout), self._on_body_timeout)

    def _on_body(self, data: bytes) -> None:
        cycle = self.cycle
        cycle.body_size += len(data)
        limits = self.limits
        if cycle.body_size > limits.max_body_bytes:
            self.send_raw_error(cycle.request, framing.body_too_large(limits))
            return
        cycle.body.append(data)
        self.deadline.set(min(limits.body_idle_timeout, self._body_due - self.loop.time()),
                           self._on_body_timeout)

    def receive_rate(self, now: float) -> Optional[float]:
        """Bytes a second at which the request now arriving has come in; None unless a head or
        a body is arriving."""
        if self.phase is not HEAD and self.phase is not BODY:
            return None
        return self._received / max(now - self._receiving_since, 1e-3)

    # -- between requests ----------------------------------------------------------------------

    def keeps_alive(self, cycle: Cycle, ended: bool = False) -> bool:
        """Whether the connection serves another request after ``cycle``: the one place this is
        decided. Asked when the response head is written (a no is sent as ``connection: close``)
        and again once the response has ``ended``, as a shutdown may have begun meanwhile, or the
        response been cut short (h11 then no longer agrees)."""
        if not (cycle.keep_alive and not self.draining and not self.registry.shutting_down
                and self.requests_served + 1 < self.limits.max_requests_per_connection):
            return False
        return not ended or (self.conn.our_state is _h11_DONE and self.conn.their_state is _h11_DONE)

    def cycle_ended(self, cycle: Cycle) -> None:
        """``cycle`` has ended (see :meth:`Cycle.finish`): serve the next request or close."""
        keep_alive = self.keeps_alive(cycle, ended=True)
        self.cycle = None
        self.requests_served += 1
        if self.phase is CLOSED:
            return
        if not keep_alive:
            self.close()
            return
        conn = self.conn
        conn.start_next_cycle()
        if self._reading_paused:
            self._reading_paused = False
            self.transport.resume_reading()
        pending, eof = conn.trailing_data
        if pending:  # a pipelined request is already here
            self.phase = HEAD
            self._receiving_since = self.loop.time()
            self._received = len(pending)
            fault = self.scanner.start(pending)
            if fault is not None:
                self.send_raw_error(None, framing.malformed(fault))
                return
        else:
            self.phase = IDLE
            self.deadline.set(self.limits.keepalive_timeout, self._on_idle_timeout)
        if (pending or eof) and not self._parsing:
            self._handle_events()

    def give_up_on_slow_reader(self) -> None:
        if not self.transport.is_closing() or self.transport.get_write_buffer_size():
            self.app.log_error(f"client {self.client} read nothing for {self.limits.write_timeout:g}s; closing", None)
            self.transport.abort()

    # -- ending ------------------------------------------------------------------------------

    def send_raw_error(self, request: Optional[Request], error: APIError) -> None:
        """Answer ``error`` outside h11's state machine, then close (lingering for the client)."""
        if self.phase is LINGERING or self.phase is CLOSED:
            return
        cycle = self.cycle
        if cycle is not None and cycle.response_started:
            self.close()
            return
        head_only = request is not None and request.method == "HEAD"
        self.transport.write(raw_error(error, self.app.response_headers(request), head_only))
        if request is not None:
            self.app.log_access(request, error.status, 0 if head_only else len(error.to_json()),
                                time.perf_counter() - request.started)
        self.cycle = None
        self._linger()

    def _linger(self) -> None:
        """Stop answering, but read and discard for a moment so the client receives our answer
        instead of a reset."""
        self.phase = LINGERING
        if self.transport.can_write_eof():
            try:
                self.transport.write_eof()
            except OSError:  # the client reset the connection meanwhile: nothing to linger for
                self.close()
                return
        if self._reading_paused:
            self._reading_paused = False
            self.transport.resume_reading()
        self.deadline.set(_LINGER_SECONDS, self.close)

    def close(self) -> None:
        self.phase = CLOSED
        self.deadline.clear()
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.close()
            self._check_flush(None)

    def _check_flush(self, before: Optional[int]) -> None:
        """A closing transport sends what it holds first: drop it if the client reads none of it
        for ``write_timeout`` (say, large answers pipelined and never read)."""
        unsent = self.transport.get_write_buffer_size()
        if before is not None and unsent >= before:
            self.give_up_on_slow_reader()
        elif unsent:
            self.deadline.set(self.limits.write_timeout, lambda: self._check_flush(unsent))

    # -- timed actions -----------------------------------------------------------------------

    def _start_probing(self) -> None:
        self._next_probe = self.loop.time() + PROBE_DELAY
        self.deadline.set(_PROBE_TICK, self._probe)

    def _probe(self) -> None:
        """Half-closed with a request in hand: has the client closed altogether? (see the
        module's docstring)"""
        cycle = self.cycle
        if self.phase is not RESPONDING or cycle is None:
            return
        sock = self.transport.get_extra_info("socket")
        if sock is not None and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            self.transport.abort()  # a reset: the client is gone, connection_lost follows
            return
        if self.loop.time() >= self._next_probe:
            self._next_probe += 1.0
            if not cycle.write_probe():
                return
        self.deadline.set(_PROBE_TICK, self._probe)

    def _on_idle_timeout(self) -> None:
        if self.phase is IDLE:
            self.close()

    def _on_head_timeout(self) -> None:
        if self.phase is HEAD:
            self.send_raw_error(None, framing.head_timeout(self.limits))

    def _on_body_timeout(self) -> None:
        if self.phase is BODY:
            timeout = framing.body_timeout(self.limits, in_full=self.loop.time() >= self._body_due)
            self.send_raw_error(self.cycle.request, timeout)

    # -- server control ----------------------------------------------------------------------

    def evict(self) -> None:
        """Close to make room for a new connection (see ``ConnectionRegistry``): a request still
        arriving is answered 408 first."""
        if self.phase is HEAD or self.phase is BODY:
            self.send_raw_error(self.cycle.request if self.cycle else None, framing.too_slow_at_the_cap())
        self.close()

    def shutdown(self) -> None:
        """Graceful stop: close now unless a request is in hand (a head still arriving is dropped:
        nothing of it was processed, so the client may safely retry), else close once the current
        response is done."""
        self.draining = True
        if self.cycle is None:
            self.close()

    def abort_for_shutdown(self) -> None:
        """The shutdown deadline passed: end the response in flight properly, then close."""
        cycle = self.cycle
        if cycle is None or self.closed:
            self.close()
            return
        cycle.aborting = True
        cycle.request.cancelled.set("server shutting down")
        if cycle.task is not None and not cycle.task.done():
            cycle.task.cancel()
        else:
            self.close()
