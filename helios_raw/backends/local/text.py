"""From generated tokens to the text a client sees: UTF-8 assembly, stop strings, tool calls."""

from __future__ import annotations

import codecs
from typing import Callable, Optional

from .chat_formats import could_be_tool_call, parse_tool_calls

#: ``emit(text, logprobs)``: where generated text goes; ``logprobs`` is None unless requested.
Emit = Callable[[str, Optional[list]], None]


class TextAssembler:
    """Turns token bytes into text for ``emit``: a UTF-8 sequence split across tokens is held
    until complete, text that may begin a stop string is held until it can't, and text from a
    stop string on is never emitted. Logprob entries travel with the text they produced."""

    __slots__ = ("_decode", "_emit", "_stops", "_held", "_logprobs")

    def __init__(self, stops: list[str], emit: Emit) -> None:
        self._decode = codecs.getincrementaldecoder("utf-8")("replace").decode
        self._emit = emit
        self._stops = stops
        self._held = ""
        self._logprobs: Optional[list] = None

    def feed(self, piece: bytes, logprob: Optional[dict]) -> bool:
        """Add one token's bytes; True when a stop string has been reached."""
        text = self._decode(piece)
        if logprob is not None:
            if self._logprobs is None:
                self._logprobs = []
            self._logprobs.append(logprob)
        if not self._stops:
            if text:
                self._send(text)
            return False
        buffer = self._held + text
        cut = -1
        for stop in self._stops:
            at = buffer.find(stop)
            if at >= 0 and (cut < 0 or at < cut):
                cut = at
        if cut >= 0:
            self._held = ""
            if cut:
                self._send(buffer[:cut])
            return True
        keep = self._stop_prefix_length(buffer)
        self._held = buffer[len(buffer) - keep:] if keep else ""
        if len(buffer) > keep:
            self._send(buffer[:len(buffer) - keep])
        return False

    def flush(self) -> None:
        """Emit what is held (the generation ended without reaching a stop string)."""
        text = self._held + self._decode(b"", True)
        self._held = ""
        if text:
            self._send(text)

    def _send(self, text: str) -> None:
        logprobs, self._logprobs = self._logprobs, None
        self._emit(text, logprobs)

    def _stop_prefix_length(self, buffer: str) -> int:
        """The length of the longest end of ``buffer`` that begins some stop string."""
        for length in range(min(len(buffer), max(len(s) for s in self._stops) - 1), 0, -1):
            tail = buffer[-length:]
            if any(stop.startswith(tail) for stop in self._stops):
                return length
        return 0


class ToolCallFilter:
    """Sits between the generation and its output when tools may be called.

    In ``auto`` mode text passes through as soon as it can no longer be a tool call; while it
    might be one it is held. With ``hold_all`` (a grammar forces a call) everything is held.
    :meth:`finish` turns the held text into tool calls, or releases it as content.
    """

    def __init__(self, emit: Emit, names: frozenset, hold_all: bool) -> None:
        self._emit = emit
        self._names = set(names)
        self._hold_all = hold_all
        self._passing = False
        self._held = ""
        self._logprobs: list = []

    def emit(self, text: str, logprobs: Optional[list]) -> None:
        if self._passing:
            self._emit(text, logprobs)
            return
        self._held += text
        if logprobs:
            self._logprobs.extend(logprobs)
        if not self._hold_all and not could_be_tool_call(self._held):
            self._passing = True
            self._release()

    def finish(self) -> Optional[list]:
        if self._passing or not self._held:
            return None
        calls = parse_tool_calls(self._held, self._names)
        if calls is None:
            self._release()
        return calls

    def _release(self) -> None:
        text, self._held = self._held, ""
        logprobs, self._logprobs = self._logprobs, []
        self._emit(text, logprobs or None)


class CollectedText:
    """The output of a non-streamed request."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.logprobs: list = []

    def emit(self, text: str, logprobs: Optional[list]) -> None:
        self.parts.append(text)
        if logprobs:
            self.logprobs.extend(logprobs)


