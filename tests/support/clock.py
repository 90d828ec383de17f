"""An event loop on a virtual clock, for timeout tests that must neither sleep nor race.

:class:`VirtualClockLoop` is asyncio's own selector loop whose ``time()`` starts at 0 and moves
only when the loop has nothing to do but wait for a timer: then it jumps straight to that timer.
Everything else (callbacks, tasks, the order timers fire in) is asyncio's. ``await
asyncio.sleep(0.5)`` therefore returns at once with the clock exactly 0.5 later, and a server
timer due at 10 s fires at 10 s, not a hair before. Only for tests without real sockets: the loop
would jump past a timer instead of waiting for a peer's bytes.
"""

from __future__ import annotations

import asyncio
import functools
import selectors


class _JumpingSelector(selectors.DefaultSelector):
    """A selector that, instead of blocking until a timer is due, moves the loop's clock to it."""

    def __init__(self, loop: "VirtualClockLoop") -> None:
        super().__init__()
        self._loop = loop

    def select(self, timeout=None):
        events = super().select(0)
        if events or timeout is None or timeout <= 0:
            return events or (super().select(None) if timeout is None else [])
        self._loop.now += timeout
        return []


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock only moves to the next due timer; see the module docstring."""

    def __init__(self) -> None:
        self.now = 0.0
        super().__init__(selector=_JumpingSelector(self))

    def time(self) -> float:
        return self.now


def on_virtual_clock(test):
    """Run the coroutine function ``test`` to completion on a fresh :class:`VirtualClockLoop`."""

    @functools.wraps(test)
    def run(*args, **kwargs):
        loop = VirtualClockLoop()
        try:
            return loop.run_until_complete(test(*args, **kwargs))
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    return run
