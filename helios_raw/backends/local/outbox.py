"""What the engine's thread hands to the event loop: each sequence's chunks, then its end.

The loop is woken at most once per ``FLUSH_INTERVAL`` while output keeps coming: waking it costs
the engine a GIL round trip, which at thousands of tokens a second would halve its speed.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Callable

from .sequence import Sequence

#: Seconds between the loop's collections of output while the engine keeps producing it.
FLUSH_INTERVAL = 0.001
_END = object()


class Outbox:
    """What the engine's thread hands to the event loop: each sequence's chunks, then its end.

    On the loop, chunks go to the sequence's sink in order; a sink that falls behind pauses its
    sequence until it drains. An end resolves ``sequence.done`` and calls ``on_end(sequence)``.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, on_end: Callable[[Sequence], None],
                 on_resume: Callable[[], None]) -> None:
        self.loop = loop
        self._on_end = on_end
        self._on_resume = on_resume
        self._lock = threading.Lock()
        self._items: list = []
        self._scheduled = False

    # -- engine thread -----------------------------------------------------------------------

    def put(self, sequence: Sequence, chunk: dict) -> None:
        self._add(sequence, chunk)

    def end(self, sequence: Sequence) -> None:
        self._add(sequence, _END)

    def _add(self, sequence: Sequence, item) -> None:
        with self._lock:
            self._items.append((sequence, item))
            schedule, self._scheduled = not self._scheduled, True
        if schedule:
            try:
                self.loop.call_soon_threadsafe(self._flush)
            except RuntimeError:  # the loop has closed: nobody is left to read
                pass

    # -- event loop --------------------------------------------------------------------------

    def _flush(self) -> None:
        with self._lock:
            items, self._items = self._items, []
            if not items:
                self._scheduled = False
                return
        touched = set()
        for sequence, item in items:
            if item is _END:
                if not sequence.done.done():
                    sequence.done.set_result(sequence.outcome)
                self._on_end(sequence)
                continue
            sink = sequence.sink
            if sink is not None and not sink.closed:
                sink.send(item)
                touched.add(sequence)
        for sequence in touched:
            if sequence.sink.paused and not sequence.paused and not sequence.done.done():
                sequence.paused_since = time.monotonic()
                sequence.paused = True
                asyncio.ensure_future(self._resume_when_drained(sequence))
        self.loop.call_later(FLUSH_INTERVAL, self._flush)

    async def _resume_when_drained(self, sequence: Sequence) -> None:
        try:
            await sequence.sink.drain()
        except Exception:  # the client left: its cancellation ends the sequence
            pass
        sequence.paused = False
        self._on_resume()
