"""What routes answering in another API's shape (OpenAI's Responses, Anthropic's Messages) share.

Those routes translate their request into a chat completions body and call any backend like the
chat route does (``Backend.check_request`` first). What comes back is read here, in one place:

- :func:`answer_of` reads a ``chat.completion`` into an :class:`Answer`;
- :class:`ChunkTranslator` is a :class:`~helios_raw.sink.ChunkSink` that reads
  ``chat.completion.chunk`` objects as they come and hands each piece of text and of a tool call
  to its subclass, which writes the other API's events; :func:`translated_response` runs a
  backend's stream into one as a ``text/event-stream`` response.
"""

from __future__ import annotations

import abc
import asyncio
import logging
from dataclasses import dataclass, field
from typing import Callable, Optional

from .backends.base import ChunkStream
from .cancel import ClientGone
from .errors import APIError, server_error
from .http.response import ResponseWriter, StreamingResponse
from .http.sse import named_sse_frame, named_sse_response
from .sink import ChunkSink

log = logging.getLogger("helios_raw.translation")


@dataclass
class Answer:
    """What one chat answer said. ``tool_calls`` are ``{"id", "name", "arguments"}``;
    ``stop_reason`` is the stop string that ended it when the backend names it (vLLM does)."""

    text: str = ""
    tool_calls: list = field(default_factory=list)
    finish_reason: str = "stop"
    stop_reason: Optional[str] = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0

    def matched_stop(self, stops: list) -> Optional[str]:
        """The stop sequence that ended the answer, if one did: the one the backend named, else
        one the text ends with (backends that keep it), else None."""
        if self.finish_reason != "stop" or not stops:
            return None
        if self.stop_reason in stops:
            return self.stop_reason
        return next((s for s in stops if self.text.endswith(s)), None)

    def read_usage(self, usage: Optional[dict]) -> None:
        if not isinstance(usage, dict):
            return
        self.prompt_tokens = _count(usage.get("prompt_tokens"))
        self.completion_tokens = _count(usage.get("completion_tokens"))
        details = usage.get("prompt_tokens_details")
        self.cached_tokens = _count(details.get("cached_tokens")) if isinstance(details, dict) else 0


def answer_of(completion: dict) -> Answer:
    """The :class:`Answer` of a ``chat.completion`` object (its first choice)."""
    answer = Answer()
    choices = completion.get("choices") if isinstance(completion, dict) else None
    choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
    message = choice.get("message") or {}
    answer.text = message.get("content") if isinstance(message.get("content"), str) else ""
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        answer.tool_calls.append({"id": str(call.get("id") or ""), "name": str(function.get("name") or ""),
                                  "arguments": str(function.get("arguments") or "")})
    answer.finish_reason = choice.get("finish_reason") or "stop"
    if isinstance(choice.get("stop_reason"), str):
        answer.stop_reason = choice["stop_reason"]
    answer.read_usage(completion.get("usage"))
    return answer


class ChunkTranslator(ChunkSink, abc.ABC):
    """A sink reading chat chunks into :attr:`answer` and calling :meth:`on_text` and
    :meth:`on_tool_call` for each piece as it arrives; the subclass writes its API's events with
    :meth:`emit`. Chunks come on the event loop, one at a time and in order.

    The producer of :func:`translated_response` calls :meth:`on_start` first, then runs the
    stream, then :meth:`on_finish`, or :meth:`on_fail` if the stream failed.
    """

    def __init__(self) -> None:
        self.answer = Answer()
        self.writer: Optional[ResponseWriter] = None
        self._write: Callable[[bytes], None] = lambda data: None
        self._parts: list[str] = []

    # -- what subclasses write -----------------------------------------------------------------

    @abc.abstractmethod
    def on_start(self) -> None:
        """The stream is accepted: write the opening events."""

    @abc.abstractmethod
    def on_text(self, text: str) -> None:
        """A piece of the answer's text."""

    @abc.abstractmethod
    def on_tool_call(self, index: int, call_id: Optional[str], name: Optional[str], arguments: str) -> None:
        """A piece of tool call ``index``: its id and name when first seen, then argument text."""

    @abc.abstractmethod
    def on_finish(self) -> None:
        """The stream has ended well; :attr:`answer` is complete: write the closing events."""

    @abc.abstractmethod
    def error_frames(self, error: APIError) -> bytes:
        """The events that end a stream cut short by ``error``."""

    def on_fail(self, error: APIError) -> None:
        self._write(self.error_frames(error))

    def settle(self) -> None:
        """Join the text read so far into :attr:`answer` (once the stream has ended)."""
        self.answer.text = "".join(self._parts)

    def emit(self, event: str, obj: dict) -> None:
        """Write one named event."""
        self._write(named_sse_frame(event, obj))

    # -- ChunkSink -----------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self.writer is None or self.writer.closed

    def send(self, chunk: dict) -> None:
        self._read(chunk)

    @property
    def paused(self) -> bool:
        return self.writer is not None and self.writer.paused

    async def drain(self) -> None:
        await self.writer.drain()

    def attach(self, writer: ResponseWriter) -> None:
        self.writer = writer
        self._write = writer.write

    # -- reading -------------------------------------------------------------------------------

    def _read(self, chunk: dict) -> None:
        if not isinstance(chunk, dict):
            return
        if "error" in chunk:
            error = chunk["error"] if isinstance(chunk["error"], dict) else {"message": str(chunk["error"])}
            raise APIError(502, str(error.get("message") or "The model's stream reported an error."),
                           type=str(error.get("type") or "server_error"), code=error.get("code"))
        if isinstance(chunk.get("usage"), dict):
            self.answer.read_usage(chunk["usage"])
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if isinstance(text, str) and text:
                self._parts.append(text)
                self.on_text(text)
            for piece in delta.get("tool_calls") or []:
                self._read_call(piece)
            if choice.get("finish_reason"):
                self.answer.finish_reason = choice["finish_reason"]
                if isinstance(choice.get("stop_reason"), str):
                    self.answer.stop_reason = choice["stop_reason"]

    def _read_call(self, piece: dict) -> None:
        if not isinstance(piece, dict):
            return
        calls = self.answer.tool_calls
        index = piece.get("index")
        if not isinstance(index, int) or index < 0:
            index = len(calls)
        while len(calls) <= index:
            calls.append({"id": "", "name": "", "arguments": ""})
        call = calls[index]
        function = piece.get("function") or {}
        call_id = piece.get("id") if isinstance(piece.get("id"), str) and piece.get("id") else None
        name = function.get("name") if isinstance(function.get("name"), str) and function.get("name") else None
        arguments = function.get("arguments") if isinstance(function.get("arguments"), str) else ""
        if call_id:
            call["id"] = call_id
        if name:
            call["name"] += name
        call["arguments"] += arguments
        self.on_tool_call(index, call_id, name, arguments)


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


def _count(value) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0
