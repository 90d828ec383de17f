"""Server-Sent Events: the ``text/event-stream`` body a streamed answer is written as.

Each chunk is one event, ``data: <json>\\n\\n``; a stream ends with ``data: [DONE]``, and one cut
short by an error ends with an error event before it. APIs whose events are named (OpenAI's
Responses, Anthropic's Messages) write ``event: <name>\\ndata: <json>\\n\\n`` frames instead.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Optional

import orjson

from ..errors import APIError
from ..sink import ChunkSink
from .response import Headers, Producer, ResponseWriter, StreamingResponse

SSE_DONE = b"data: [DONE]\n\n"
#: An event stream's comment line: every client skips it.
SSE_HEARTBEAT = b":\n\n"


def sse_frame(obj: Any) -> bytes:
    """One Server-Sent Event carrying ``obj`` as JSON."""
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def sse_error_frames(error: APIError) -> bytes:
    """An error event followed by ``[DONE]``: how a stream reports failure."""
    return sse_frame(error.to_dict()) + SSE_DONE


class SSESink(ChunkSink):
    """A :class:`~helios_raw.sink.ChunkSink` writing each chunk as one event through a
    :class:`~helios_raw.http.response.ResponseWriter`."""

    __slots__ = ("writer",)

    def __init__(self, writer: ResponseWriter) -> None:
        self.writer = writer

    @property
    def closed(self) -> bool:
        return self.writer.closed

    def send(self, chunk: Any) -> None:
        self.writer.write(sse_frame(chunk))

    def send_json(self, data: bytes) -> None:
        self.writer.write(b"data: " + data + b"\n\n")

    @property
    def paused(self) -> bool:
        return self.writer.paused

    async def drain(self) -> None:
        await self.writer.drain()

    def error(self, error: APIError) -> None:
        """Report ``error`` in the stream and end it with ``[DONE]``."""
        self.writer.write(sse_error_frames(error))

    def done(self) -> None:
        self.writer.write(SSE_DONE)


def sse_response(producer: Callable[[SSESink], Awaitable[None]], headers: Optional[Headers] = None) -> StreamingResponse:
    """A ``text/event-stream`` response; cut short, it ends with an error event and ``[DONE]``."""

    async def run(writer: ResponseWriter) -> None:
        await producer(SSESink(writer))

    return StreamingResponse(
        run,
        headers=[("cache-control", "no-cache"), ("x-accel-buffering", "no")] + (headers or []),
        content_type="text/event-stream",
        error_frames=sse_error_frames,
        heartbeat=SSE_HEARTBEAT,
    )


def named_sse_frame(event: str, obj: Any) -> bytes:
    """One Server-Sent Event named ``event`` carrying ``obj`` as JSON (``event: ...`` then ``data: ...``)."""
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(obj) + b"\n\n"


def named_sse_response(producer: Producer, error_frames: Callable[[APIError], bytes],
                       headers: Optional[Headers] = None) -> StreamingResponse:
    """A ``text/event-stream`` response of named events written by ``producer``; cut short (a
    shutdown deadline, a producer that raised), it ends with ``error_frames(error)``."""
    return StreamingResponse(
        producer,
        headers=[("cache-control", "no-cache"), ("x-accel-buffering", "no")] + (headers or []),
        content_type="text/event-stream",
        error_frames=error_frames,
    )
