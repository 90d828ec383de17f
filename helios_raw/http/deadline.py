"""A connection's one timer.

A connection waits for at most one thing with a time limit at once (the next request, the rest of
a head or body, a lingering close ...), so it needs one deadline and one action. Moving the
deadline later, as every request does, costs two stores: the armed timer, on firing early,
re-arms itself for the new deadline. Only an earlier deadline re-arms at once.
"""

from __future__ import annotations

import asyncio
from typing import Callable, Optional


class Deadline:
    """Calls ``action`` once ``loop.time()`` reaches ``when``, unless moved or cleared first."""

    __slots__ = ("loop", "when", "action", "_timer")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.when = 0.0
        self.action: Optional[Callable[[], None]] = None  # None: nothing is timed
        self._timer: Optional[asyncio.TimerHandle] = None

    def set(self, seconds: float, action: Callable[[], None]) -> None:
        """Call ``action`` in ``seconds``, instead of what was due before."""
        self.set_at(self.loop.time() + seconds, action)

    def set_at(self, when: float, action: Callable[[], None]) -> None:
        """Call ``action`` once the loop's clock reads ``when``, instead of what was due before."""
        self.when = when
        self.action = action
        timer = self._timer
        if timer is None or timer.when() > when:
            if timer is not None:
                timer.cancel()
            self._timer = self.loop.call_at(when, self._reached)

    def clear(self) -> None:
        self.action = None

    def cancel(self) -> None:
        """Clear, and release the timer: the connection is gone."""
        self.action = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _reached(self) -> None:
        self._timer = None
        action = self.action
        if action is None:
            return
        if self.loop.time() < self.when:
            self._timer = self.loop.call_at(self.when, self._reached)
            return
        self.action = None
        action()
