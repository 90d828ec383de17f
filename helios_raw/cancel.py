"""Cancellation: the signal that an answer is no longer wanted, and racing work against it.

A :class:`Cancellation` is set once: when the client goes away (EOF or a broken connection), when
a graceful shutdown passes its deadline, or when whoever owns it decides the work is over. Worker
threads poll :meth:`Cancellation.is_set`; coroutines race their work against it with
:meth:`Cancellation.guard`, the one place such a race is written. Producers that find their
consumer gone raise :class:`ClientGone`.
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Optional, TypeVar

T = TypeVar("T")


class ClientGone(Exception):
    """The answer's consumer has gone away (or the work was cancelled); the producer should just stop."""


class Cancellation:
    """Set once, when the answer to a request is no longer wanted.

    :meth:`is_set` is a plain flag, safe to read from any thread; :meth:`set` must be called on
    the event loop's thread.
    """

    __slots__ = ("_set", "_future", "reason")

    def __init__(self) -> None:
        self._set = False
        self._future: Optional[asyncio.Future] = None
        self.reason = ""

    def is_set(self) -> bool:
        return self._set

    def set(self, reason: str = "client disconnected") -> None:
        if self._set:
            return
        self.reason = reason
        self._set = True
        if self._future is not None and not self._future.done():
            self._future.set_result(None)

    async def wait(self) -> None:
        if self._set:
            return
        if self._future is None:
            self._future = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._future)

    async def guard(self, work: Awaitable[T]) -> T:
        """The result of ``work``; if this is set first, ``work`` is cancelled (releasing what it
        holds, such as an upstream connection) and :class:`ClientGone` is raised. Wrap ``work`` in
        :func:`asyncio.shield` to leave it running."""
        if self._set:
            if asyncio.iscoroutine(work):
                work.close()
            raise ClientGone()
        task = asyncio.ensure_future(work)
        watcher = asyncio.ensure_future(self.wait())
        try:
            await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            raise
        finally:
            watcher.cancel()
        if task.done():
            return task.result()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise ClientGone()
