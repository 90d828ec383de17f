"""HTTP/1.1 on ``asyncio.Protocol`` with the ``h11`` parser: one instance per connection.

The methods follow asyncio's callbacks. Parsing is h11's; what h11 leaves to its caller is done
here: the limits of :class:`~helios_raw.http.limits.Limits`, strict framing (no request carrying
both Content-Length and Transfer-Encoding, HTTP/1.0 and 1.1 only), timeouts, flow control both
ways, pipelining (requests answered one at a time, in order) and noticing a client that leaves.

The application is any object with:

- ``handle(request)`` -> a response, or an awaitable of one (may raise ``APIError``);
- ``response_headers(request)`` -> headers added to every response, protocol errors included
  (``request`` is None when no request could be parsed);
- ``log_access(request, status, sent_bytes, seconds)``;
- ``log_error(message, exc)`` for an exception no client may see.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from http import HTTPStatus
from typing import TYPE_CHECKING, Optional

import h11

from ..errors import APIError, server_error
from .limits import Limits
from .request import Request
from .response import ClientGone, Response, ResponseWriter, StreamingResponse, error_response

if TYPE_CHECKING:  # pragma: no cover
    from .server import ConnectionRegistry

_VERSIONS = (b"1.0", b"1.1")
_LINGER_SECONDS = 2.0


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


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
        "request", "body", "body_size", "started", "status", "sent", "task", "streaming",
        "response_started", "keep_alive", "abort_frame", "aborting",
    )

    def __init__(self, request: Request, keep_alive: bool) -> None:
        self.request = request
        self.body: list[bytes] = []
        self.body_size = 0
        self.started = time.perf_counter()
        self.status = 0
        self.sent = 0
        self.task: Optional[asyncio.Task] = None
        self.streaming = False
        self.response_started = False
        self.keep_alive = keep_alive
        self.abort_frame = b""
        self.aborting = False


class HTTPProtocol(asyncio.Protocol, ResponseWriter):
    """Serves HTTP/1.1 on one connection for ``app``; registered in ``registry`` while open."""

    def __init__(self, app, limits: Limits, registry: "ConnectionRegistry") -> None:
        self.app = app
        self.limits = limits
        self.registry = registry
        self.loop = asyncio.get_event_loop()
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_head_bytes)
        self.transport: Optional[asyncio.Transport] = None
        self.flow = FlowControl()
        self.client: Optional[tuple] = None
        self.cycle: Optional[_Cycle] = None
        self.closed = False
        self.requests_served = 0
        self._timer: Optional[asyncio.TimerHandle] = None
        self._waiting_for_head = False  # bytes of a head have arrived, the head is not complete
        self._reading_paused = False
        self._lingering = False
        self._closing_after_cycle = False
        self._in_handle_events = False

    # -- asyncio callbacks -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.client = transport.get_extra_info("peername")
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:  # pragma: no cover - platform dependent
                pass
        self.transport.set_write_buffer_limits(self.limits.write_buffer_high, self.limits.write_buffer_low)
        if not self.registry.admit(self):
            self._send_raw_error(
                None, APIError(503, "The server has too many open connections; try again shortly.",
                               type="server_error", code="too_many_connections",
                               headers=[("retry-after", "1")]))
            return
        if self.registry.shutting_down:
            self._close()
            return
        self._set_timer(self.limits.keepalive_timeout, self._on_idle_timeout)

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self.closed = True
        self.registry.discard(self)
        self._cancel_timer()
        self.flow.resume()  # wake writers so they see the connection is gone
        cycle = self.cycle
        if cycle is not None:
            cycle.request.cancelled.set("client disconnected")
            if cycle.task is not None and not cycle.task.done():
                cycle.task.cancel()

    def eof_received(self) -> bool:
        # The client will send nothing more. An unfinished answer is no longer wanted, but a
        # half-closed client may still read it: keep the transport open until it is written.
        cycle = self.cycle
        if cycle is None or self._lingering:
            self._close()
            return False
        if self.conn.their_state is not h11.DONE:  # the request itself will never be complete
            self._close()
            return False
        cycle.request.cancelled.set("client closed its side of the connection")
        cycle.keep_alive = False
        return True

    def pause_writing(self) -> None:
        self.flow.pause()

    def resume_writing(self) -> None:
        self.flow.resume()

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return
        if self.cycle is None and not self._waiting_for_head:
            self._waiting_for_head = True
            self._set_timer(self.limits.head_timeout, self._on_head_timeout)
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
        while not self.closed and not self._lingering:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as exc:
                self._on_protocol_error(exc)
                return
            if event is h11.NEED_DATA:
                if self.cycle is None and self._waiting_for_head:
                    self._check_partial_head()
                return
            if event is h11.PAUSED:
                # A pipelined request waits behind the one in flight; stop reading if it piles up.
                if len(self.conn.trailing_data[0]) > self.limits.max_head_bytes and not self._reading_paused:
                    self._reading_paused = True
                    self.transport.pause_reading()
                return
            event_type = type(event)
            if event_type is h11.Request:
                if not self._on_request(event):
                    return
            elif event_type is h11.Data:
                self._on_body(event.data)
            elif event_type is h11.EndOfMessage:
                self._cancel_timer()
                self._dispatch()
            elif event_type is h11.ConnectionClosed:
                if self.cycle is None:
                    self._close()
                return

    def _check_partial_head(self) -> None:
        """Refuse an incomplete head early once it is already too long."""
        pending = self.conn.trailing_data[0]
        if len(pending) <= self.limits.max_target_bytes + 32:
            return
        if b"\n" not in pending[: self.limits.max_target_bytes + 32]:
            self._send_raw_error(None, _uri_too_long(self.limits))

    def _on_protocol_error(self, exc: h11.RemoteProtocolError) -> None:
        pending = self.conn.trailing_data[0]
        first_line_end = pending.find(b"\n")
        if "too long" in str(exc) or "Receive buffer" in str(exc):
            if first_line_end < 0 or first_line_end > self.limits.max_target_bytes + 32:
                error = _uri_too_long(self.limits)
            else:
                error = _head_too_large(self.limits)
        else:
            status = exc.error_status_hint if exc.error_status_hint >= 400 else 400
            error = APIError(status, f"Malformed HTTP request: {exc}.", code="bad_request")
        self._send_raw_error(self.cycle.request if self.cycle else None, error)

    def _on_request(self, event: h11.Request) -> bool:
        """Validate a request head; start its cycle. False if the connection is being closed."""
        self._waiting_for_head = False
        headers = event.headers
        head_size = len(event.method) + len(event.target) + 12
        has_length = has_chunked = expects_continue = False
        content_length = 0
        for name, value in headers:
            head_size += len(name) + len(value) + 4
            if name == b"content-length":
                has_length = True
                content_length = int(value)
            elif name == b"transfer-encoding":
                has_chunked = True
        request = Request(
            event.method.decode("ascii", "replace"),
            event.target,
            headers,
            client=self.client,
            http_version=event.http_version.decode("ascii", "replace"),
        )
        error = None
        if event.http_version not in _VERSIONS:
            error = APIError(505, "Only HTTP/1.0 and HTTP/1.1 are supported.", code="http_version_not_supported")
        elif len(event.target) > self.limits.max_target_bytes:
            error = _uri_too_long(self.limits)
        elif len(headers) > self.limits.max_header_count:
            error = APIError(431, f"The request has more than {self.limits.max_header_count} header fields.",
                             code="request_header_fields_too_large")
        elif head_size > self.limits.max_head_bytes:
            error = _head_too_large(self.limits)
        elif has_length and has_chunked:
            error = APIError(400, "A request must not carry both Content-Length and Transfer-Encoding.",
                             code="bad_request")
        if error is not None:
            self._send_raw_error(request, error)
            return False

        # h11 does not keep HTTP/1.0 connections alive, so neither do we.
        keep_alive = event.http_version == b"1.1" and not _header_has(headers, b"connection", b"close")
        self.cycle = _Cycle(request, keep_alive)
        if has_length and content_length > self.limits.max_body_bytes:
            self._refuse_body(request)
            return False
        if has_length or has_chunked:
            if self.conn.they_are_waiting_for_100_continue:
                self.transport.write(self.conn.send(h11.InformationalResponse(status_code=100, headers=[])))
            self._set_timer(self.limits.body_idle_timeout, self._on_body_timeout)
        else:
            self._cancel_timer()
        return True

    def _on_body(self, data: bytes) -> None:
        cycle = self.cycle
        cycle.body_size += len(data)
        if cycle.body_size > self.limits.max_body_bytes:
            self._refuse_body(cycle.request)
            return
        cycle.body.append(data)
        self._set_timer(self.limits.body_idle_timeout, self._on_body_timeout)

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
            else:
                self._respond(response)
        except asyncio.CancelledError:
            self._on_cancelled(cycle)
        except ClientGone:
            self._finish(cycle, keep_alive=False)
        except Exception as exc:
            self.app.log_error(f"handler for {request.method} {request.path} failed", exc)
            if self.closed:
                return
            if cycle.response_started:
                self._end_aborted_stream(cycle)
            else:
                self._respond(error_response(server_error()))

    def _on_cancelled(self, cycle: _Cycle) -> None:
        if self.closed:
            self._log(cycle)
            return
        if not cycle.aborting:
            raise asyncio.CancelledError
        if cycle.response_started:
            self._end_aborted_stream(cycle)
        else:
            self._respond(error_response(APIError(
                503, "The server is shutting down.", type="server_error", code="server_shutting_down")))

    def _end_aborted_stream(self, cycle: _Cycle) -> None:
        """Close a stream cut short with its terminating frame and a proper end of body."""
        if cycle.abort_frame:
            self.write(cycle.abort_frame)
            cycle.abort_frame = b""
        self._finish(cycle, keep_alive=False)

    # -- writing -----------------------------------------------------------------------------

    def _start_response(self, status: int, headers: list, fixed_length: Optional[int]) -> bytes:
        cycle = self.cycle
        cycle.status = status
        cycle.response_started = True
        all_headers = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in headers]
        all_headers.extend(self.app.response_headers(cycle.request))
        if fixed_length is not None:
            all_headers.append((b"content-length", str(fixed_length).encode()))
        if not cycle.keep_alive or self._closing_after_cycle or self.registry.shutting_down or (
            self.requests_served + 1 >= self.limits.max_requests_per_connection
        ):
            cycle.keep_alive = False
            all_headers.append((b"connection", b"close"))
        return self.conn.send(h11.Response(status_code=status, headers=all_headers, reason=_reason(status)))

    def _respond(self, response: Response) -> None:
        """Send a whole response and finish the cycle."""
        if self.closed:
            return
        cycle = self.cycle
        body = response.body
        data = self._start_response(response.status, response.headers, len(body))
        if body and cycle.request.method != "HEAD":
            data += self.conn.send(h11.Data(data=body))
        data += self.conn.send(h11.EndOfMessage())
        self.transport.write(data)
        cycle.sent = len(body)
        self._finish(cycle, keep_alive=cycle.keep_alive, message_ended=True)

    async def _stream(self, cycle: _Cycle, response: StreamingResponse) -> None:
        cycle.streaming = True
        cycle.abort_frame = response.abort_frame
        self.transport.write(self._start_response(response.status, response.headers, None))
        await response.producer(self)
        if not self.closed:
            self._finish(cycle, keep_alive=cycle.keep_alive)

    def write(self, data: bytes) -> None:
        """Write one piece of a streaming body (event-loop thread)."""
        if self.closed or not data or self.cycle is None:
            return
        if self.cycle.request.method == "HEAD":
            return
        self.cycle.sent += len(data)
        self.transport.write(self.conn.send(h11.Data(data=data)))

    async def drain(self) -> None:
        if self.closed:
            raise ClientGone()
        if self.flow.paused:
            try:
                await asyncio.wait_for(self.flow.wait_writable(), self.limits.write_timeout)
            except asyncio.TimeoutError:
                self.app.log_error(f"client {self.client} read nothing for {self.limits.write_timeout}s; closing", None)
                self.transport.abort()
                raise ClientGone() from None
            if self.closed:
                raise ClientGone()

    def write_threadsafe(self, data: bytes) -> None:
        waited = 0.0
        while not self.flow.wait_writable_threadsafe(0.05):
            waited += 0.05
            if self.closed:
                break
            if waited >= self.limits.write_timeout:
                self.loop.call_soon_threadsafe(self.transport.abort)
                raise ClientGone()
        if self.closed:
            raise ClientGone()
        self.loop.call_soon_threadsafe(self.write, data)

    def _finish(self, cycle: _Cycle, keep_alive: bool, message_ended: bool = False) -> None:
        """End the cycle: close the message, log it, then serve the next request or close."""
        if self.cycle is not cycle:
            return
        if not message_ended and not self.closed:
            try:
                self.transport.write(self.conn.send(h11.EndOfMessage()))
            except h11.LocalProtocolError:
                keep_alive = False
        self._log(cycle)
        self.cycle = None
        self.requests_served += 1
        if self.closed:
            return
        if (
            not keep_alive
            or self._closing_after_cycle
            or self.registry.shutting_down
            or self.conn.our_state is not h11.DONE
            or self.conn.their_state is not h11.DONE
        ):
            self._close()
            return
        self.conn.start_next_cycle()
        if self._reading_paused:
            self._reading_paused = False
            self.transport.resume_reading()
        self._set_timer(self.limits.keepalive_timeout, self._on_idle_timeout)
        if self.conn.trailing_data[0]:  # a pipelined request is already here
            self._waiting_for_head = True
            self._set_timer(self.limits.head_timeout, self._on_head_timeout)
            if not self._in_handle_events:
                self._handle_events()

    def _log(self, cycle: _Cycle) -> None:
        self.app.log_access(cycle.request, cycle.status, cycle.sent, time.perf_counter() - cycle.started)

    def _send_raw_error(self, request: Optional[Request], error: APIError) -> None:
        """Answer ``error`` outside h11's state machine, then close (lingering for the client)."""
        if self.closed or self._lingering:
            return
        cycle = self.cycle
        if cycle is not None and cycle.response_started:
            self._close()
            return
        body = error.to_json()
        head = [b"HTTP/1.1 %d %s" % (error.status, _reason(error.status))]
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in error.headers]
        headers += self.app.response_headers(request)
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close")]
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
        self._lingering = True
        self._waiting_for_head = False
        if self.transport.can_write_eof():
            self.transport.write_eof()
        if self._reading_paused:
            self._reading_paused = False
            self.transport.resume_reading()
        self._set_timer(_LINGER_SECONDS, self._close)

    def _close(self) -> None:
        self._cancel_timer()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    # -- timers ------------------------------------------------------------------------------

    def _set_timer(self, seconds: float, callback) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_later(seconds, callback)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_idle_timeout(self) -> None:
        if self.cycle is None and not self._waiting_for_head:
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
        return self.cycle is None and not self._waiting_for_head

    def shutdown(self) -> None:
        """Graceful stop: close now if idle, else close once the current response is done."""
        self._closing_after_cycle = True
        if self.idle or self._lingering:
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


def _header_has(headers, name: bytes, token: bytes) -> bool:
    for key, value in headers:
        if key == name and token in value.lower():
            return True
    return False


def _uri_too_long(limits: Limits) -> APIError:
    return APIError(414, f"The request target is longer than {limits.max_target_bytes} bytes.", code="uri_too_long")


def _head_too_large(limits: Limits) -> APIError:
    return APIError(431, f"The request head is larger than {limits.max_head_bytes} bytes.",
                    code="request_header_fields_too_large")
