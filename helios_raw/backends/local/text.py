"""From generated tokens to the text a client sees: UTF-8 assembly and stop strings.

:class:`TextAssembler` turns token bytes into text for ``emit``:

- a UTF-8 character split across tokens is held until complete; one still incomplete when the
  answer ends is left out (a partial character never reaches ``content``);
- text that may begin a stop string is held until it can't; text from a stop string on is never
  emitted, and :attr:`TextAssembler.stop` says which stop string ended the answer;
- logprob entries travel with the text their tokens produced, and their ``bytes`` put together
  are exactly the UTF-8 of the text emitted: an entry is passed on once all its bytes have been,
  and the entry a stop string (or a dropped partial character) cuts is cut with it.
"""

from __future__ import annotations

import codecs
from typing import Callable, Optional

from .model import token_text

#: ``emit(text, logprobs)``: where generated text goes; ``logprobs`` is None unless requested.
Emit = Callable[[str, Optional[list]], None]


class TextAssembler:
    """See the module docstring. Feed tokens with :meth:`feed`, end with :meth:`flush`."""

    __slots__ = ("_decoder", "_emit", "_stops", "_held", "_entries", "_emitted", "_covered", "stop")

    def __init__(self, stops: list[str], emit: Emit) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._emit = emit
        self._stops = stops
        self._held = ""
        self._entries: list = []  # logprob entries not yet passed on
        self._emitted = 0  # bytes of text emitted
        self._covered = 0  # bytes of logprob entries passed on
        #: The stop string that ended the answer, if one did.
        self.stop: Optional[str] = None

    def feed(self, piece: bytes, logprob: Optional[dict]) -> bool:
        """Add one token's bytes; True when a stop string has been reached."""
        text = self._decoder.decode(piece)
        if logprob is not None:
            self._entries.append(logprob)
        if not self._stops:
            if text or logprob is not None:
                self._send(text)
            return False
        buffer = self._held + text
        cut = -1
        for stop in self._stops:
            at = buffer.find(stop)
            if at >= 0 and (cut < 0 or at < cut):
                cut, self.stop = at, stop
        if cut >= 0:
            self._held = ""
            self._send(buffer[:cut], final=True)
            return True
        keep = self._stop_prefix_length(buffer)
        self._held = buffer[len(buffer) - keep:] if keep else ""
        self._send(buffer[:len(buffer) - keep])
        return False

    def flush(self) -> None:
        """Emit what is held (the answer ended without a stop string), leaving out the bytes of
        a character that never completed."""
        text, self._held = self._held, ""
        self._send(text, final=True)

    def _send(self, text: str, final: bool = False) -> None:
        self._emitted += len(text.encode("utf-8"))
        entries = self._entries
        passed = []
        while entries and self._covered + len(entries[0]["bytes"]) <= self._emitted:
            entry = entries.pop(0)
            self._covered += len(entry["bytes"])
            passed.append(entry)
        if final and entries and self._covered < self._emitted:  # the entry the end cuts
            entry = entries.pop(0)
            part = bytes(entry["bytes"][:self._emitted - self._covered])
            passed.append({**entry, "token": token_text(part), "bytes": list(part)})
            self._covered = self._emitted
        if final:
            entries.clear()
        if text or passed:
            self._emit(text, passed or None)

    def _stop_prefix_length(self, buffer: str) -> int:
        """The length of the longest end of ``buffer`` that begins some stop string."""
        for length in range(min(len(buffer), max(len(s) for s in self._stops) - 1), 0, -1):
            tail = buffer[-length:]
            if any(stop.startswith(tail) for stop in self._stops):
                return length
        return 0
