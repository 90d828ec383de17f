"""One request/response exchange on a connection: running the handler and writing its response.

A :class:`Cycle` begins when a request head is parsed and ends when its response has been
written (or given up on); then the connection (:class:`~helios_raw.http.protocol.HTTPProtocol`)
decides whether another request follows. A handler's result is written at once when it is a
response, else awaited in a task; a streamed body is written through a
:class:`~helios_raw.http.writer.StreamWriter` bound to this cycle.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Optional

import h11

from ..cancel import ClientGone
from ..errors import APIError, server_error, shutting_down
from ..logs import current_request_id
from .heads import REASONS, SERVER_HEADER, date
from .request import Request
from .response import Response, StreamingResponse, error_response
from .writer import StreamWriter

if TYPE_CHECKING:  # pragma: no cover
    from .protocol import HTTPProtocol

_h11_Data = h11.Data
_h11_EndOfMessage = h11.EndOfMessage
_h11_Response = h11.Response
_INVALID_RESPONSE = (h11.LocalProtocolError, ValueError, TypeError)
_PROCESSING = h11.InformationalResponse(status_code=102, headers=[], reason=b"Processing")


class Cycle:
    """One request from its head to the end of its response, on ``connection``."""

    __slots__ = (
        "connection", "request", "body", "body_size", "status", "sent", "task",
        "response_started", "keep_alive", "error_frames", "heartbeat", "aborting", "writer",
    )

    def __init__(self, connection: "HTTPProtocol", request: Request, keep_alive: bool) -> None:
        self.connection = connection
        self.request = request
        self.body: list[bytes] = []
        self.body_size = 0
        self.status = 0
        self.sent = 0
        self.task: Optional[asyncio.Task] = None
        self.response_started = False
        self.keep_alive = keep_alive  # the client allows another request after this one
        self.error_frames = None  # the streamed body's way to end early, see StreamingResponse
        self.heartbeat: Optional[bytes] = None  # what a streamed body may carry anywhere, ditto
        self.aborting = False  # a shutdown deadline passed: end the response early
        self.writer: Optional[StreamWriter] = None

    # -- running the handler -----------------------------------------------------------------

    def dispatch(self) -> None:
        """The request is complete: hand it to the application, with ``current_request_id`` set
        for what the handler logs (its task, and the threads that task starts, copy it)."""
        request = self.request
        if self.body:
            request.body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
            self.body = []
        connection = self.connection
        token = current_request_id.set(request.id)
        try:
            try:
                result = connection.app.handle(request)
            except APIError as exc:
                self.respond(error_response(exc))
                return
            except Exception as exc:  # a handler's bug: log it, tell the client nothing of it
                connection.app.log_error(f"handler for {request.method} {request.path} failed", exc)
                self.respond(error_response(server_error()))
                return
            if isinstance(result, Response):
                self.respond(result)
                return
            if isinstance(result, StreamingResponse):
                result = _ready(result)
            self.task = connection.loop.create_task(self._run(result))
        finally:
            current_request_id.reset(token)

    async def _run(self, awaitable) -> None:
        connection = self.connection
        request = self.request
        try:
            try:
                response = await awaitable
            except APIError as exc:
                response = error_response(exc)
            if isinstance(response, StreamingResponse):
                await self._stream(response)
            elif isinstance(response, Response):
                self.respond(response)
            else:
                raise TypeError(f"the handler returned {type(response).__name__}, not a response")
        except asyncio.CancelledError:
            self._on_cancelled()
        except ClientGone:  # the producer found the client gone, perhaps before the protocol did
            request.cancelled.set("client disconnected")
            self.finish(keep_alive=False)
        except Exception as exc:
            connection.app.log_error(f"handler for {request.method} {request.path} failed", exc)
            if connection.closed or connection.cycle is not self:
                return
            if self.response_started:
                self._end_aborted_stream(server_error())
            else:
                self.respond(error_response(server_error()))

    def _on_cancelled(self) -> None:
        if self.connection.closed:
            self.finish(keep_alive=False)
            return
        if not self.aborting:
            raise asyncio.CancelledError
        if self.response_started:
            self._end_aborted_stream(shutting_down())
        else:
            self.respond(error_response(shutting_down()))

    def _end_aborted_stream(self, error: APIError) -> None:
        """End a stream cut short with its error frames and a proper end of body, then close."""
        if self.error_frames is not None:
            self.write_body(self.error_frames(error))
        self.finish(keep_alive=False)

    # -- writing -----------------------------------------------------------------------------

    def _head(self, status: int, headers: list, fixed_length: Optional[int]) -> h11.Response:
        """The h11 event of a response head, with the headers every response carries. Raises
        ValueError/TypeError/LocalProtocolError if a handler gave an unusable status or header."""
        connection = self.connection
        all_headers = headers + connection.app.response_headers(self.request)
        all_headers.append(SERVER_HEADER)
        all_headers.append(date.get())
        if fixed_length is not None:
            all_headers.append((b"content-length", b"%d" % fixed_length))
        if not connection.keeps_alive(self):
            self.keep_alive = False
            all_headers.append((b"connection", b"close"))
        return _h11_Response(status_code=status, headers=all_headers, reason=REASONS.get(status, b""))

    def _invalid_response(self, exc: Exception) -> None:
        self.connection.app.log_error(
            f"handler for {self.request.method} {self.request.path} returned an invalid response", exc)

    def respond(self, response: Response) -> None:
        """Send a whole response and finish the cycle."""
        connection = self.connection
        if connection.closed:
            return
        body = response.body
        try:
            head = self._head(response.status, response.headers, len(body))
        except _INVALID_RESPONSE as exc:
            self._invalid_response(exc)
            response = error_response(server_error())
            body = response.body
            head = self._head(response.status, response.headers, len(body))
        self.status = response.status
        self.response_started = True
        conn = connection.conn
        data = conn.send(head)
        if body and self.request.method != "HEAD":
            data += conn.send(_h11_Data(data=body))
            self.sent = len(body)
        data += conn.send(_h11_EndOfMessage())
        connection.transport.write(data)
        self.finish(keep_alive=self.keep_alive, message_ended=True)

    async def _stream(self, response: StreamingResponse) -> None:
        connection = self.connection
        try:
            head = self._head(response.status, response.headers, None)
        except _INVALID_RESPONSE as exc:
            self._invalid_response(exc)
            self.respond(error_response(server_error()))
            return
        self.status = response.status
        self.response_started = True
        self.error_frames = response.error_frames
        self.heartbeat = response.heartbeat
        connection.transport.write(connection.conn.send(head))
        if self.request.method != "HEAD":
            self.writer = StreamWriter(self)
            await response.producer(self.writer)
        if not connection.closed:
            self.finish(keep_alive=self.keep_alive)

    def write_body(self, data: bytes) -> None:
        """Write a piece of the streamed body; past ``limits.max_unsent_bytes`` of unsent output
        (a producer ignoring backpressure) the connection is dropped."""
        connection = self.connection
        if connection.closed or connection.cycle is not self or self.request.method == "HEAD":
            return
        self.sent += len(data)
        transport = connection.transport
        transport.write(connection.conn.send(_h11_Data(data=data)))
        limit = connection.limits.max_unsent_bytes
        if transport.get_write_buffer_size() > limit:
            connection.app.log_error(f"client {connection.client} left more than {limit} bytes unread; closing", None)
            transport.abort()

    def write_probe(self) -> bool:
        """Write what the client must take without its answer changing, to learn whether it is
        still there (see HTTPProtocol on half-closes): before the response, an interim ``102
        Processing`` (HTTP/1.1 only); during a stream that has one, its heartbeat. False when
        there is nothing we may write."""
        if not self.response_started:
            if self.request.http_version != "1.1":
                return False
            self.connection.transport.write(self.connection.conn.send(_PROCESSING))
            return True
        if self.heartbeat is None or self.writer is None:
            return False
        self.writer.write(self.heartbeat)
        return True

    def finish(self, keep_alive: bool, message_ended: bool = False) -> None:
        """End the cycle: close the message, log it, then let the connection go on or close."""
        connection = self.connection
        if connection.cycle is not self:
            return
        if self.writer is not None:
            self.writer.write_pending()  # what a worker thread handed over before the end
        if not message_ended and not connection.closed:
            try:
                connection.transport.write(connection.conn.send(_h11_EndOfMessage()))
            except h11.LocalProtocolError:
                keep_alive = False
        self.keep_alive = keep_alive
        # 499 (nginx's "client closed request"): the client left before a response was started.
        status = self.status or (499 if connection.closed else 0)
        connection.app.log_access(self.request, status, self.sent, time.perf_counter() - self.request.started)
        connection.cycle_ended(self)


async def _ready(response: StreamingResponse) -> StreamingResponse:
    return response
