"""Responses: fixed bodies, JSON, and bodies written in pieces.

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


class ResponseWriter:
    """What a streaming producer writes through. Implemented by the protocol.

    ``write`` never blocks and never drops data; ``await drain()`` waits while the client reads
    slower than we write (raising :class:`ClientGone` if it leaves). ``write_threadsafe`` may be
    called from worker threads: it hands the bytes to the event loop in order and blocks the
    calling thread while the transport is paused.
    """

    closed: bool

    @property
    def paused(self) -> bool:  # pragma: no cover - interface
        """The client reads slower than it is written to (safe to read from any thread)."""
        raise NotImplementedError

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

    ``heartbeat`` is bytes the body may carry between any two of the producer's writes without
    changing its meaning (for Server-Sent Events, a comment); written while the client has
    half-closed, to learn whether it is still there. None: nothing is written.
    """

    __slots__ = ("status", "headers", "producer", "error_frames", "heartbeat")

    def __init__(
        self,
        producer: Producer,
        status: int = 200,
        headers: Optional[Headers] = None,
        content_type: str = "application/octet-stream",
        error_frames: Optional[Callable[[APIError], bytes]] = None,
        heartbeat: Optional[bytes] = None,
    ) -> None:
        self.status = status
        self.producer = producer
        self.headers = list(headers) if headers else []
        self.headers.append(("content-type", content_type))
        self.error_frames = error_frames
        self.heartbeat = heartbeat


AnyResponse = Union[Response, StreamingResponse]
