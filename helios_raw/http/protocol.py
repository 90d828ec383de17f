"""HTTP/1.1 on ``asyncio.Protocol`` with the ``h11`` parser: one instance per connection.

The methods follow asyncio's callbacks. Parsing is h11's; what h11 leaves to its caller is done
here: the limits of :class:`~helios_raw.http.limits.Limits`, strict framing (no request carrying
both Content-Length and Transfer-Encoding, HTTP/1.0 and 1.1 only, no control bytes in header
values), timeouts, flow control both ways, pipelining (requests answered one at a time, in order)
and noticing a client that leaves.

Reading goes on while a request is handled, so that a client's departure (EOF or reset) is seen at
once; what a client pipelines meanwhile waits in h11's buffer, and reading pauses once that holds
more than one request head's worth. A client's EOF while its request is handled sets
``request.cancelled``; whatever answer is still produced is written (a half-closed client reads
it), requests already received behind it are answered, then the connection closes.

The application is any object with:

- ``handle(request)`` -> a response, or an awaitable of one (may raise ``APIError``);
- ``response_headers(request)`` -> headers added to every response, protocol errors included
  (``request`` is None when no request could be parsed);
- ``log_access(request, status, sent_bytes, seconds)``;
- ``log_error(message, exc)`` for an exception no client may see.
"""

from __future__ import annotations

import asyncio
import collections
import re
import threading
import time
from email.utils import formatdate
from http import HTTPStatus
from typing import TYPE_CHECKING, Optional

import h11

from ..cancel import ClientGone
from ..errors import APIError, server_error, shutting_down
from .limits import Limits
from .request import Request
from .response import Response, ResponseWriter, StreamingResponse, error_response
from .tcp import disable_nagle

if TYPE_CHECKING:  # pragma: no cover
    from .server import ConnectionRegistry

_VERSIONS = (b"1.0", b"1.1")
_LINGER_SECONDS = 2.0
_SERVER_HEADER = (b"server", b"helios_raw")
#: Bytes h11 lets through in a header value that RFC 9110 forbids: C0 controls but HTAB, and DEL.
_CONTROL_BYTE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]").search
_REASONS = {status.value: status.phrase.encode() for status in HTTPStatus}
#: Common methods and versions as text, without decoding them for every request.
_TEXT = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "1.1", "1.0")}
_h11_Request = h11.Request
_h11_Data = h11.Data
_h11_EndOfMessage = h11.EndOfMessage
_h11_NEED_DATA = h11.NEED_DATA
_h11_PAUSED = h11.PAUSED
_h11_DONE = h11.DONE
_h11_MUST_CLOSE = h11.MUST_CLOSE


class _DateHeader:
    """The ``Date`` header, formatted at most once a second."""

    __slots__ = ("second", "header")

    def __init__(self) -> None:
        self.second = -1
        self.header = (b"date", b"")

    def get(self) -> tuple:
        now = time.time()
        if int(now) != self.second:
            self.second = int(now)
            self.header = (b"date", formatdate(now, usegmt=True).encode())
        return self.header


_date = _DateHeader()


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


class _Cycle:
    """One request from its head to the end of its response."""

    __slots__ = (
        "request", "body", "body_size", "started", "status", "sent", "task", "response_started",
        "keep_alive", "error_frames", "aborting", "writer",
    )

    def __init__(self, request: Request, keep_alive: bool) -> None:
        self.request = request
        self.body: list[bytes] = []
        self.body_size = 0
        self.started = time.perf_counter()
        self.status = 0
        self.sent = 0
        self.task: Optional[asyncio.Task] = None
        self.response_started = False
        self.keep_alive = keep_alive
        self.error_frames = None  # the streamed body's way to end early, see StreamingResponse
        self.aborting = False
        self.writer: Optional[_StreamWriter] = None


#: Seconds between the loop's collections of pieces a worker thread keeps streaming.
THREAD_FLUSH_INTERVAL = 0.001


class _StreamWriter(ResponseWriter):
    """The writer a streaming producer is given: bound to one cycle, so that a producer that
    outlives its response (a worker thread still finishing) can never write into the next one.

    Pieces from a worker thread wait in ``_pending`` until the loop writes them: the loop is woken
    at once when nothing is scheduled, and while pieces keep coming it collects them every
    ``THREAD_FLUSH_INTERVAL`` seconds instead of being woken for each (waking the loop costs the
    worker a GIL round trip, which at thousands of tokens per second halves throughput). Loop-side
    writes, and the end of the response, first write what is pending, so nothing is lost or
    reordered. A worker blocks while the transport is paused or ``limits.write_buffer_high`` bytes
    already wait in ``_pending``, so a slow reader bounds what the server holds."""

    __slots__ = ("protocol", "cycle", "_pending", "_pending_bytes", "_lock", "_flush_scheduled")

    def __init__(self, protocol: "HTTPProtocol", cycle: _Cycle) -> None:
        self.protocol = protocol
        self.cycle = cycle
        self._pending: collections.deque = collections.deque()
        self._pending_bytes = 0
        self._lock = threading.Lock()
        self._flush_scheduled = False

    @property
    def closed(self) -> bool:  # type: ignore[override]
        return self.protocol.closed or self.protocol.cycle is not self.cycle

    @property
    def paused(self) -> bool:
        return self.protocol.flow.paused

    def write(self, data: bytes) -> None:
        """Write one piece of the body now (event-loop thread); never blocks, never drops."""
        if self._pending:
            self.write_pending()
        if data and not self.closed:
            self.protocol.write_body(self.cycle, data)

    async def drain(self) -> None:
        """Wait while the client reads slower than we write; ClientGone if it has left."""
        if self.closed:
            raise ClientGone()
        await self.protocol.drain()
        if self.closed:
            raise ClientGone()

    def write_threadsafe(self, data: bytes) -> None:
        """Hand ``data`` to the event loop from a worker thread, blocking while the client is
        slow; ClientGone once it has left or read nothing for ``limits.write_timeout``."""
        protocol = self.protocol
        flow = protocol.flow
        limit = protocol.limits.write_buffer_high
        deadline = 0.0
        while True:
            if self.closed:
                raise ClientGone()
            if not flow.paused and self._pending_bytes < limit:
                break
            if not deadline:
                deadline = time.monotonic() + protocol.limits.write_timeout
            elif time.monotonic() >= deadline:
                protocol.loop.call_soon_threadsafe(protocol.give_up_on_slow_reader)
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
            protocol.loop.call_soon_threadsafe(self._flush)

    def _flush(self) -> None:
        """Loop thread: write what worker threads handed over; look again shortly while they
        keep handing over, else wait to be woken."""
        if self._pending:
            self.write_pending()
            self.protocol.loop.call_later(THREAD_FLUSH_INTERVAL, self._flush)
            return
        with self._lock:
            if not self._pending:
                self._flush_scheduled = False
                return
        self.protocol.loop.call_soon(self._flush)  # appended meanwhile

    def write_pending(self) -> None:
        """Loop thread: write, in order, what worker threads have handed over so far."""
        with self._lock:
            pending, self._pending = self._pending, collections.deque()
            self._pending_bytes = 0
        if pending and not self.closed:
            self.protocol.write_body(self.cycle, pending[0] if len(pending) == 1 else b"".join(pending))


class HTTPProtocol(asyncio.Protocol):
    """Serves HTTP/1.1 on one connection for ``app``; registered in ``registry`` while open."""

    def __init__(self, app, limits: Limits, registry: "ConnectionRegistry") -> None:
        self.app = app
        self.limits = limits
        self.registry = registry
        self.loop = asyncio.get_running_loop()
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_head_bytes)
        self.transport: Optional[asyncio.Transport] = None
        self.flow = FlowControl()
        self.client: Optional[tuple] = None
        self.cycle: Optional[_Cycle] = None
        self.closed = False
        self.requests_served = 0
        self._timer: Optional[asyncio.TimerHandle] = None
        self._deadline = 0.0
        self._on_deadline = None  # what to do at ``_deadline``; None: nothing is timed
        self._waiting_for_head = False  # bytes of a head have arrived, the head is not complete
        self._reading_paused = False
        self._head_timed = False  # the head deadline runs for the head now arriving
        self._discard_input = False  # nothing more is read: closing, lingering, or the client is done
        self._lingering = False
        self._closing = False
        self._closing_after_cycle = False
        self._in_handle_events = False

    # -- asyncio callbacks -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.client = transport.get_extra_info("peername")
        disable_nagle(transport)
        self.transport.set_write_buffer_limits(self.limits.write_buffer_high, self.limits.write_buffer_low)
        if self.registry.shutting_down:
            self._close()
            return
        if not self.registry.admit(self):
            self._send_raw_error(
                None, APIError(503, "The server has too many open connections; try again shortly.",
                               type="server_error", code="too_many_connections",
                               headers=[("retry-after", "1")]))
            return
        self._set_deadline(self.limits.keepalive_timeout, self._on_idle_timeout)

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self.closed = True
        self.registry.discard(self)
        self._clear_deadline()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.flow.resume()  # wake writers so they see the connection is gone
        cycle = self.cycle
        if cycle is not None:
            cycle.request.cancelled.set("client disconnected")
            if cycle.task is not None and not cycle.task.done():
                cycle.task.cancel()

    def eof_received(self) -> bool:
        # The client will send nothing more. A request it sent in full is still answered (a
        # half-closed client can read), but flagged: its answer may no longer be wanted.
        cycle = self.cycle
        if self._lingering or cycle is None or self.conn.their_state not in (_h11_DONE, _h11_MUST_CLOSE):
            self._close()  # nothing owed, or a request that can never be complete
            return False
        cycle.request.cancelled.set("client closed its side of the connection")
        self.conn.receive_data(b"")
        return True

    def pause_writing(self) -> None:
        self.flow.pause()

    def resume_writing(self) -> None:
        self.flow.resume()

    def data_received(self, data: bytes) -> None:
        if self._discard_input:
            return
        if self.cycle is None and not self._waiting_for_head:
            self._waiting_for_head = True  # its deadline is armed if this read leaves it incomplete
            self._head_timed = False
        self.conn.receive_data(data)
        self._handle_events()

    # -- reading -----------------------------------------------------------------------------

    def _handle_events(self) -> None:
        self._in_handle_events = True
        try:
            self._next_events()
        finally:
            self._in_handle_events = False

    def _next_events(self) -> None:
        conn = self.conn
        while not self._discard_input:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                self._on_protocol_error(exc)
                return
            if event is _h11_NEED_DATA:
                if self.cycle is None and self._waiting_for_head:
                    if not self._head_timed:  # from the head's first byte, which came just now
                        self._head_timed = True
                        self._set_deadline(self.limits.head_timeout, self._on_head_timeout)
                    self._check_partial_head()
                return
            if event is _h11_PAUSED:
                # A pipelined request waits behind the one in flight; stop reading if it piles up.
                if len(conn.trailing_data[0]) > self.limits.max_head_bytes and not self._reading_paused:
                    self._reading_paused = True
                    self.transport.pause_reading()
                return
            event_type = type(event)
            if event_type is _h11_Request:
                if not self._on_request(event):
                    return
            elif event_type is _h11_Data:
                self._on_body(event.data)
            elif event_type is _h11_EndOfMessage:
                self._clear_deadline()
                keep_alive = self.cycle.keep_alive
                self._dispatch()
                if not keep_alive:
                    # The client said this was its last request: anything after it is ignored,
                    # and the answer owed is still sent.
                    self._discard_input = True
            else:  # ConnectionClosed: the client finished sending and everything is answered
                if self.cycle is None:
                    self._close()
                return

    def _check_partial_head(self) -> None:
        """Refuse an incomplete head early once its first line is already too long."""
        pending = self.conn.trailing_data[0]
        limit = self.limits.max_target_bytes + 32
        if len(pending) > limit and b"\n" not in pending[:limit]:
            self._send_raw_error(None, _request_line_too_long(self.limits))

    def _on_protocol_error(self, exc: h11.RemoteProtocolError) -> None:
        message = _describe(exc)
        if message.startswith("Receive buffer too long"):
            first_line_end = self.conn.trailing_data[0].find(b"\n")
            if first_line_end < 0 or first_line_end > self.limits.max_target_bytes + 32:
                error = _request_line_too_long(self.limits)
            else:
                error = _head_too_large(self.limits)
        elif exc.error_status_hint == 501:
            error = APIError(501, "Only the chunked transfer coding is supported in requests.",
                             code="unsupported_transfer_encoding")
        else:
            status = exc.error_status_hint if 400 <= exc.error_status_hint < 500 else 400
            error = APIError(status, f"Malformed HTTP request: {message}.", code="bad_request")
        self._send_raw_error(self.cycle.request if self.cycle else None, error)

    def _on_request(self, event: h11.Request) -> bool:
        """Validate a request head; start its cycle. False if the connection is being closed."""
        self._waiting_for_head = False
        limits = self.limits
        method, target, headers, version = event.method, event.target, event.headers, event.http_version
        head_size = len(method) + len(target) + 12
        has_length = has_chunked = control_byte = close = False
        content_length = 0
        for name, value in headers:
            head_size += len(name) + len(value) + 4
            if _CONTROL_BYTE(value) is not None:
                control_byte = True
            if name == b"content-length":
                has_length = True
                content_length = int(value)
            elif name == b"transfer-encoding":
                has_chunked = True
            elif name == b"connection" and b"close" in value.lower():
                close = True
        request = Request(
            _TEXT.get(method) or method.decode("ascii", "replace"),
            target,
            headers,
            client=self.client,
            http_version=_TEXT.get(version) or version.decode("ascii", "replace"),
        )
        error = None
        if version not in _VERSIONS:
            error = APIError(505, "Only HTTP/1.0 and HTTP/1.1 are supported.", code="http_version_not_supported")
        elif len(target) > limits.max_target_bytes:
            error = _uri_too_long(limits)
        elif len(method) + len(target) > limits.max_target_bytes + 32:
            error = _request_line_too_long(limits)
        elif len(headers) > limits.max_header_count:
            error = APIError(431, f"The request has more than {limits.max_header_count} header fields.",
                             code="request_header_fields_too_large")
        elif head_size > limits.max_head_bytes:
            error = _head_too_large(limits)
        elif has_length and has_chunked:
            error = APIError(400, "A request must not carry both Content-Length and Transfer-Encoding.",
                             code="bad_request")
        elif control_byte:
            error = APIError(400, "Malformed HTTP request: a header value contains a control character.",
                             code="bad_request")
        if error is not None:
            self._send_raw_error(request, error)
            return False

        # h11 does not keep HTTP/1.0 connections alive, so neither do we.
        self.cycle = _Cycle(request, version == b"1.1" and not close)
        if has_length and content_length > limits.max_body_bytes:
            self._refuse_body(request)
            return False
        if has_length or has_chunked:
            if self.conn.they_are_waiting_for_100_continue:
                self.transport.write(self.conn.send(h11.InformationalResponse(
                    status_code=100, headers=[], reason=b"Continue")))
            self._set_deadline(limits.body_idle_timeout, self._on_body_timeout)
        else:
            self._clear_deadline()
        return True

    def _on_body(self, data: bytes) -> None:
        cycle = self.cycle
        cycle.body_size += len(data)
        if cycle.body_size > self.limits.max_body_bytes:
            self._refuse_body(cycle.request)
            return
        cycle.body.append(data)
        self._set_deadline(self.limits.body_idle_timeout, self._on_body_timeout)

    def _refuse_body(self, request: Request) -> None:
        self._send_raw_error(request, APIError(
            413, f"The request body is larger than {self.limits.max_body_bytes} bytes.",
            code="request_too_large"))

    # -- handling ----------------------------------------------------------------------------

    def _dispatch(self) -> None:
        cycle = self.cycle
        request = cycle.request
        if cycle.body:
            request.body = cycle.body[0] if len(cycle.body) == 1 else b"".join(cycle.body)
            cycle.body = []
        try:
            result = self.app.handle(request)
        except APIError as exc:
            self._respond(error_response(exc))
            return
        except Exception as exc:  # a handler's bug: log it, tell the client nothing of it
            self.app.log_error(f"handler for {request.method} {request.path} failed", exc)
            self._respond(error_response(server_error()))
            return
        if isinstance(result, Response):
            self._respond(result)
            return
        if isinstance(result, StreamingResponse):
            result = _ready(result)
        cycle.task = self.loop.create_task(self._run(cycle, result))

    async def _run(self, cycle: _Cycle, awaitable) -> None:
        request = cycle.request
        try:
            try:
                response = await awaitable
            except APIError as exc:
                response = error_response(exc)
            if isinstance(response, StreamingResponse):
                await self._stream(cycle, response)
            elif isinstance(response, Response):
                self._respond(response)
            else:
                raise TypeError(f"the handler returned {type(response).__name__}, not a response")
        except asyncio.CancelledError:
            self._on_cancelled(cycle)
        except ClientGone:
            self._finish(cycle, keep_alive=False)
        except Exception as exc:
            self.app.log_error(f"handler for {request.method} {request.path} failed", exc)
            if self.closed or self.cycle is not cycle:
                return
            if cycle.response_started:
                self._end_aborted_stream(cycle, server_error())
            else:
                self._respond(error_response(server_error()))

    def _on_cancelled(self, cycle: _Cycle) -> None:
        if self.closed:
            self._finish(cycle, keep_alive=False)
            return
        if not cycle.aborting:
            raise asyncio.CancelledError
        if cycle.response_started:
            self._end_aborted_stream(cycle, shutting_down())
        else:
            self._respond(error_response(shutting_down()))

    def _end_aborted_stream(self, cycle: _Cycle, error: APIError) -> None:
        """End a stream cut short with its error frames and a proper end of body, then close."""
        if cycle.error_frames is not None:
            self.write_body(cycle, cycle.error_frames(error))
        self._finish(cycle, keep_alive=False)

    # -- writing -----------------------------------------------------------------------------

    def _response_head(self, status: int, headers: list, fixed_length: Optional[int]) -> h11.Response:
        """The h11 event of a response head, with the headers every response carries. Raises
        ValueError/TypeError/LocalProtocolError if a handler gave an unusable status or header."""
        cycle = self.cycle
        all_headers = headers + self.app.response_headers(cycle.request)
        all_headers.append(_SERVER_HEADER)
        all_headers.append(_date.get())
        if fixed_length is not None:
            all_headers.append((b"content-length", b"%d" % fixed_length))
        if not cycle.keep_alive or self._closing_after_cycle or self.registry.shutting_down or (
            self.requests_served + 1 >= self.limits.max_requests_per_connection
        ):
            cycle.keep_alive = False
            all_headers.append((b"connection", b"close"))
        return h11.Response(status_code=status, headers=all_headers, reason=_REASONS.get(status, b""))

    def _respond(self, response: Response) -> None:
        """Send a whole response and finish the cycle."""
        if self.closed or self._closing:
            return
        cycle = self.cycle
        body = response.body
        try:
            head = self._response_head(response.status, response.headers, len(body))
        except (h11.LocalProtocolError, ValueError, TypeError) as exc:
            self.app.log_error(f"handler for {cycle.request.method} {cycle.request.path} "
                               "returned an invalid response", exc)
            response = error_response(server_error())
            body = response.body
            head = self._response_head(response.status, response.headers, len(body))
        cycle.status = response.status
        cycle.response_started = True
        conn = self.conn
        data = conn.send(head)
        if body and cycle.request.method != "HEAD":
            data += conn.send(_h11_Data(data=body))
            cycle.sent = len(body)
        data += conn.send(_h11_EndOfMessage())
        self.transport.write(data)
        self._finish(cycle, keep_alive=cycle.keep_alive, message_ended=True)

    async def _stream(self, cycle: _Cycle, response: StreamingResponse) -> None:
        try:
            head = self._response_head(response.status, response.headers, None)
        except (h11.LocalProtocolError, ValueError, TypeError) as exc:
            self.app.log_error(f"handler for {cycle.request.method} {cycle.request.path} "
                               "returned an invalid response", exc)
            self._respond(error_response(server_error()))
            return
        cycle.status = response.status
        cycle.response_started = True
        cycle.error_frames = response.error_frames
        self.transport.write(self.conn.send(head))
        if cycle.request.method != "HEAD":
            cycle.writer = _StreamWriter(self, cycle)
            await response.producer(cycle.writer)
        if not self.closed:
            self._finish(cycle, keep_alive=cycle.keep_alive)

    def write_body(self, cycle: _Cycle, data: bytes) -> None:
        """Write a piece of ``cycle``'s streamed body; past ``limits.max_unsent_bytes`` of unsent
        output (a producer ignoring backpressure) the connection is dropped."""
        if self.closed or self.cycle is not cycle or cycle.request.method == "HEAD":
            return
        cycle.sent += len(data)
        transport = self.transport
        transport.write(self.conn.send(_h11_Data(data=data)))
        if transport.get_write_buffer_size() > self.limits.max_unsent_bytes:
            self.app.log_error(
                f"client {self.client} left more than {self.limits.max_unsent_bytes} bytes unread; closing", None)
            transport.abort()

    async def drain(self) -> None:
        """Wait until the transport accepts output again (or ``limits.write_timeout`` passes, then
        drop the connection)."""
        if self.flow.paused and not self.closed:
            try:
                await asyncio.wait_for(self.flow.wait_writable(), self.limits.write_timeout)
            except asyncio.TimeoutError:
                self.give_up_on_slow_reader()

    def give_up_on_slow_reader(self) -> None:
        if not self.closed:
            self.app.log_error(f"client {self.client} read nothing for {self.limits.write_timeout:g}s; closing", None)
            self.transport.abort()

    def _finish(self, cycle: _Cycle, keep_alive: bool, message_ended: bool = False) -> None:
        """End the cycle: close the message, log it, then serve the next request or close."""
        if self.cycle is not cycle:
            return
        if cycle.writer is not None:
            cycle.writer.write_pending()  # what a worker thread handed over before the end
        if not message_ended and not self.closed:
            try:
                self.transport.write(self.conn.send(_h11_EndOfMessage()))
            except h11.LocalProtocolError:
                keep_alive = False
        self._log(cycle)
        self.cycle = None
        self.requests_served += 1
        if self.closed:
            return
        conn = self.conn
        if (
            not keep_alive
            or self._closing_after_cycle
            or self.registry.shutting_down
            or conn.our_state is not _h11_DONE
            or conn.their_state is not _h11_DONE
        ):
            self._close()
            return
        conn.start_next_cycle()
        if self._reading_paused:
            self._reading_paused = False
            self.transport.resume_reading()
        pending, eof = conn.trailing_data
        if pending:  # a pipelined request is already here
            self._waiting_for_head = self._head_timed = True
            self._set_deadline(self.limits.head_timeout, self._on_head_timeout)
        else:
            self._set_deadline(self.limits.keepalive_timeout, self._on_idle_timeout)
        if (pending or eof) and not self._in_handle_events:
            self._handle_events()

    def _log(self, cycle: _Cycle) -> None:
        # 499 (nginx's "client closed request"): the client left before a response was started.
        status = cycle.status or (499 if self.closed else 0)
        self.app.log_access(cycle.request, status, cycle.sent, time.perf_counter() - cycle.started)

    def _send_raw_error(self, request: Optional[Request], error: APIError) -> None:
        """Answer ``error`` outside h11's state machine, then close (lingering for the client)."""
        if self.closed or self._lingering or self._closing:
            return
        cycle = self.cycle
        if cycle is not None and cycle.response_started:
            self._close()
            return
        body = error.to_json()
        head = [b"HTTP/1.1 %d %s" % (error.status, _REASONS.get(error.status, b""))]
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in error.headers]
        headers.append((b"content-type", b"application/json"))
        headers += self.app.response_headers(request)
        headers += [_SERVER_HEADER, _date.get(), (b"content-length", b"%d" % len(body)), (b"connection", b"close")]
        head += [name + b": " + value for name, value in headers]
        self.transport.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        if request is not None:
            self.app.log_access(request, error.status, len(body),
                                time.perf_counter() - cycle.started if cycle else 0.0)
        self.cycle = None
        self._linger()

    def _linger(self) -> None:
        """Stop answering, but read and discard for a moment so the client receives our answer
        instead of a reset."""
        self._lingering = self._discard_input = True
        self._waiting_for_head = False
        if self.transport.can_write_eof():
            self.transport.write_eof()
        if self._reading_paused:
            self._reading_paused = False
            self.transport.resume_reading()
        self._set_deadline(_LINGER_SECONDS, self._close)

    def _close(self) -> None:
        self._closing = self._discard_input = True
        self._clear_deadline()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    # -- timers ------------------------------------------------------------------------------
    # One deadline per connection. Moving it later costs two stores: the armed timer, on firing
    # early, re-arms itself for the new deadline. Only an earlier deadline re-arms at once.

    def _set_deadline(self, seconds: float, action) -> None:
        deadline = self.loop.time() + seconds
        self._deadline = deadline
        self._on_deadline = action
        timer = self._timer
        if timer is None or timer.when() > deadline:
            if timer is not None:
                timer.cancel()
            self._timer = self.loop.call_at(deadline, self._deadline_reached)

    def _clear_deadline(self) -> None:
        self._on_deadline = None

    def _deadline_reached(self) -> None:
        self._timer = None
        action = self._on_deadline
        if action is None or self.closed:
            return
        if self.loop.time() < self._deadline:
            self._timer = self.loop.call_at(self._deadline, self._deadline_reached)
            return
        self._on_deadline = None
        action()

    def _on_idle_timeout(self) -> None:
        if self.idle:
            self._close()

    def _on_head_timeout(self) -> None:
        if self.cycle is None:
            self._send_raw_error(None, APIError(
                408, f"The request head was not received within {self.limits.head_timeout:g} seconds.",
                code="request_timeout"))

    def _on_body_timeout(self) -> None:
        cycle = self.cycle
        if cycle is not None and not cycle.response_started and cycle.task is None:
            self._send_raw_error(cycle.request, APIError(
                408, f"No request body data was received for {self.limits.body_idle_timeout:g} seconds.",
                code="request_timeout"))

    # -- server control ----------------------------------------------------------------------

    @property
    def idle(self) -> bool:
        """No request is being received or answered."""
        return self.cycle is None and not self._waiting_for_head

    def shutdown(self) -> None:
        """Graceful stop: close now unless a request is in hand (a head still arriving is dropped:
        nothing of it was processed, so the client may safely retry), else close once the current
        response is done."""
        self._closing_after_cycle = True
        if self.cycle is None:
            self._close()

    def abort_for_shutdown(self) -> None:
        """The shutdown deadline passed: end the response in flight properly, then close."""
        cycle = self.cycle
        if cycle is None or self.closed:
            self._close()
            return
        cycle.aborting = True
        cycle.request.cancelled.set("server shutting down")
        if cycle.task is not None and not cycle.task.done():
            cycle.task.cancel()
        else:
            self._close()


async def _ready(response: StreamingResponse) -> StreamingResponse:
    return response


def _describe(exc: h11.RemoteProtocolError) -> str:
    """h11's complaint without the offending bytes it quotes (never echo a client's garbage)."""
    text = str(exc)
    for marker in (": bytearray(", ": b'", ': b"'):
        text = text.split(marker, 1)[0]
    return text.rstrip(".") or "unparsable request"


def _uri_too_long(limits: Limits) -> APIError:
    return APIError(414, f"The request target is longer than {limits.max_target_bytes} bytes.", code="uri_too_long")


def _request_line_too_long(limits: Limits) -> APIError:
    return APIError(414, f"The request line is longer than {limits.max_target_bytes + 32} bytes.",
                    code="uri_too_long")


def _head_too_large(limits: Limits) -> APIError:
    return APIError(431, f"The request head is larger than {limits.max_head_bytes} bytes.",
                    code="request_header_fields_too_large")
