"""What routes answering in another API's shape (OpenAI's Responses, Anthropic's Messages) share.

Those routes translate their request into a chat completions body and call any backend like the
chat route does (``Backend.check_request`` first). What comes back is read here, in one place:

- :func:`~helios_raw.answers.answer_of` reads a ``chat.completion`` into an
  :class:`~helios_raw.answers.Answer`;
- :class:`ChunkTranslator` is a :class:`~helios_raw.sink.ChunkSink` that reads
  ``chat.completion.chunk`` objects as they come and hands each piece of text and of a tool call
  to its subclass, which writes the other API's events; :func:`translated_response` runs a
  backend's stream into one as a ``text/event-stream`` response.
"""

from __future__ import annotations

import abc
import asyncio
import logging
from typing import Callable, Optional

from .answers import ChunkReader
from .backends.base import ChunkStream
from .cancel import ClientGone
from .errors import APIError, server_error
from .http.response import ResponseWriter, StreamingResponse
from .http.sse import named_sse_frame, named_sse_response
from .sink import ChunkSink

log = logging.getLogger("helios_raw.translation")


class ChunkTranslator(ChunkSink, ChunkReader, abc.ABC):
    """A sink reading chat chunks into :attr:`answer` (see :class:`~helios_raw.answers.ChunkReader`);
    the subclass writes its API's events with :meth:`emit` from :meth:`on_text` and
    :meth:`on_tool_call`. Chunks come on the event loop, one at a time and in order.

    The producer of :func:`translated_response` calls :meth:`on_start` first, then runs the
    stream, then :meth:`on_finish`, or :meth:`on_fail` if the stream failed.
    """

    def __init__(self) -> None:
        ChunkReader.__init__(self)
        self.writer: Optional[ResponseWriter] = None
        self._write: Callable[[bytes], None] = lambda data: None

    # -- what subclasses write -----------------------------------------------------------------

    @abc.abstractmethod
    def on_start(self) -> None:
        """The stream is accepted: write the opening events."""

    @abc.abstractmethod
    def on_finish(self) -> None:
        """The stream has ended well; :attr:`answer` is complete: write the closing events."""

    @abc.abstractmethod
    def error_frames(self, error: APIError) -> bytes:
        """The events that end a stream cut short by ``error``."""

    def on_fail(self, error: APIError) -> None:
        self._write(self.error_frames(error))

    def emit(self, event: str, obj: dict) -> None:
        """Write one named event."""
        self._write(named_sse_frame(event, obj))

    # -- ChunkSink -----------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self.writer is None or self.writer.closed

    def send(self, chunk: dict) -> None:
        self.read(chunk)

    @property
    def paused(self) -> bool:
        return self.writer is not None and self.writer.paused

    async def drain(self) -> None:
        await self.writer.drain()

    def attach(self, writer: ResponseWriter) -> None:
        self.writer = writer
        self._write = writer.write

def translated_response(stream: ChunkStream, translator: ChunkTranslator, what: str) -> StreamingResponse:
    """The ``text/event-stream`` response that runs ``stream`` into ``translator``. An error once
    the stream runs ends it with the translator's error events; ``what`` names it in the log."""

    async def produce(writer: ResponseWriter) -> None:
        translator.attach(writer)
        translator.on_start()
        try:
            await stream.run(translator)
        except (ClientGone, asyncio.CancelledError):
            raise
        except APIError as exc:
            translator.settle()
            translator.on_fail(exc)
            return
        except Exception:
            log.exception("%s stream failed", what)
            translator.settle()
            translator.on_fail(server_error())
            return
        translator.settle()
        translator.on_finish()

    return named_sse_response(produce, translator.error_frames)
