"""Responses: fixed bodies, JSON, and streams (Server-Sent Events included).

A handler returns a :class:`Response` (the whole body at once) or a :class:`StreamingResponse`,
whose ``producer`` is given a :class:`ResponseWriter` by the protocol and writes the body in pieces.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Optional, Union

import orjson

from ..errors import APIError

Headers = list[tuple[str, str]]


class Response:
    """A response whose body is known in full."""

    __slots__ = ("status", "headers", "body")

    def __init__(
        self,
        body: bytes = b"",
        status: int = 200,
        headers: Optional[Headers] = None,
        content_type: Optional[str] = None,
    ) -> None:
        self.status = status
        self.body = body
        self.headers = list(headers) if headers else []
        if content_type is not None:
            self.headers.append(("content-type", content_type))


class JSONResponse(Response):
    """``obj`` serialised with orjson, as ``application/json``."""

    __slots__ = ()

    def __init__(self, obj: Any, status: int = 200, headers: Optional[Headers] = None) -> None:
        super().__init__(orjson.dumps(obj), status, headers, "application/json")


def error_response(error: APIError) -> Response:
    """The OpenAI error object of ``error``, with its status and extra headers."""
    return Response(error.to_json(), error.status, error.headers, "application/json")


class ClientGone(Exception):
    """Raised by a writer when the client has gone away; the producer should just stop."""


class ResponseWriter:
    """What a streaming producer writes through. Implemented by the protocol.

    ``write`` never blocks and never drops data; ``await drain()`` waits while the client reads
    slower than we write (raising :class:`ClientGone` if it leaves). ``write_threadsafe`` may be
    called from worker threads: it hands the bytes to the event loop in order and blocks the
    calling thread while the transport is paused.
    """

    closed: bool

    def write(self, data: bytes) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    async def drain(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def write_threadsafe(self, data: bytes) -> None:  # pragma: no cover - interface
        raise NotImplementedError


Producer = Callable[[ResponseWriter], Awaitable[None]]


class StreamingResponse:
    """A response whose body ``producer`` writes in pieces (chunked, or close-delimited on 1.0).

    ``error_frames(error)`` gives the bytes that end the body when it must stop early, because a
    shutdown deadline passed or the producer raised, so that the client sees a proper ending (an
    error event, for Server-Sent Events) rather than a dropped connection. None: the body just ends.
    """

    __slots__ = ("status", "headers", "producer", "error_frames")

    def __init__(
        self,
        producer: Producer,
        status: int = 200,
        headers: Optional[Headers] = None,
        content_type: str = "application/octet-stream",
        error_frames: Optional[Callable[[APIError], bytes]] = None,
    ) -> None:
        self.status = status
        self.producer = producer
        self.headers = list(headers) if headers else []
        self.headers.append(("content-type", content_type))
        self.error_frames = error_frames


AnyResponse = Union[Response, StreamingResponse]

SSE_DONE = b"data: [DONE]\n\n"


def sse_frame(obj: Any) -> bytes:
    """One Server-Sent Event carrying ``obj`` as JSON."""
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def sse_error_frames(error: APIError) -> bytes:
    """An error event followed by ``[DONE]``: how a stream reports failure."""
    return sse_frame(error.to_dict()) + SSE_DONE


class EventStream:
    """Writes Server-Sent Events (``data: <json>``) through a :class:`ResponseWriter`."""

    __slots__ = ("writer",)

    def __init__(self, writer: ResponseWriter) -> None:
        self.writer = writer

    @property
    def closed(self) -> bool:
        return self.writer.closed

    def send(self, obj: Any) -> None:
        """Write one event now (event-loop thread)."""
        self.writer.write(sse_frame(obj))

    def send_threadsafe(self, obj: Any) -> None:
        """Write one event from a worker thread, in order, blocking while the client is slow."""
        self.writer.write_threadsafe(sse_frame(obj))

    async def drain(self) -> None:
        await self.writer.drain()

    def error(self, error: APIError) -> None:
        """Report ``error`` in the stream and end it with ``[DONE]``."""
        self.writer.write(sse_error_frames(error))

    def done(self) -> None:
        self.writer.write(SSE_DONE)


def sse_response(producer: Callable[[EventStream], Awaitable[None]], headers: Optional[Headers] = None) -> StreamingResponse:
    """A ``text/event-stream`` response; cut short, it ends with an error event and ``[DONE]``."""

    async def run(writer: ResponseWriter) -> None:
        await producer(EventStream(writer))

    return StreamingResponse(
        run,
        headers=[("cache-control", "no-cache"), ("x-accel-buffering", "no")] + (headers or []),
        content_type="text/event-stream",
        error_frames=sse_error_frames,
    )
