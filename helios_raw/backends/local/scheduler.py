"""One model context, one generation at a time: a fair FIFO line in front of one worker thread.

A request first :meth:`Scheduler.reserve` s a place in line (429 with ``Retry-After`` when
``max_queue`` requests already wait), then :meth:`Scheduler.run` waits for its turn and runs its
job on the worker thread. The line is kept on the event loop; only the job runs on the thread, so
nothing else (``/health``, ``/v1/models``) ever waits for the model.

A turn ends when the job has really returned on the worker thread, not when the request that
waited for it goes away: a client that disconnects sets its ``Cancellation``, its job notices
within one token, and only then does the next request start. :meth:`Scheduler.close` runs a
final job (releasing the model) after the running one and waits for the thread to end.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections import deque
from typing import Any, Callable, Optional

from ...cancel import Cancellation, ClientGone
from ...errors import APIError, shutting_down


class Ticket:
    """A request's place in line."""

    __slots__ = ("cancel", "granted", "_waiter")

    def __init__(self, cancel: Cancellation) -> None:
        self.cancel = cancel
        self.granted = False
        self._waiter: Optional[asyncio.Future] = None


class Scheduler:
    """Runs jobs one at a time on a single worker thread, in the order they were reserved.

    ``stopping`` is set by :meth:`close`; running jobs poll it (as they poll their request's
    ``Cancellation``) and end early.
    """

    def __init__(self, max_queue: int, thread_name: str = "helios-model") -> None:
        self.max_queue = max_queue
        self.stopping = threading.Event()
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=thread_name)
        self._line: deque[Ticket] = deque()
        self._running: Optional[Ticket] = None
        self._closed = False
        self._average_seconds = 1.0

    # -- what /health reports --------------------------------------------------------------------

    @property
    def waiting(self) -> int:
        """Requests waiting for their turn."""
        return sum(1 for t in self._line if not t.cancel.is_set())

    @property
    def busy(self) -> bool:
        return self._running is not None

    # -- the line ----------------------------------------------------------------------------

    def reserve(self, cancel: Cancellation) -> Ticket:
        """A place at the end of the line. Raises a 429 when ``max_queue`` requests already wait
        (a request that can start at once never waits), a 503 once the scheduler is closed."""
        if self._closed:
            raise shutting_down()
        self._drop_cancelled()
        if (self._running is not None or self._line) and len(self._line) >= self.max_queue:
            retry = max(1, min(60, round(self._average_seconds * (len(self._line) + 1))))
            raise APIError(
                429, f"The model is busy and {len(self._line)} requests are already waiting; retry in "
                f"{retry} s.", type="requests", code="rate_limit_exceeded", headers=[("retry-after", str(retry))])
        ticket = Ticket(cancel)
        self._line.append(ticket)
        return ticket

    def discard(self, ticket: Ticket) -> None:
        """Give up a place that will not be used (its request failed before running)."""
        if ticket in self._line:
            self._line.remove(ticket)
            self._advance()

    async def run(self, ticket: Ticket, job: Callable[..., Any], *args: Any) -> Any:
        """Wait for ``ticket``'s turn, run ``job(*args)`` on the worker thread, return its result.

        Raises a 503 APIError if the request is cancelled (or the scheduler closes) while it
        waits. Cancelling the awaiting task does not end the turn early: the turn ends when the
        job returns, which it does promptly once its ``Cancellation`` is set.
        """
        try:
            await self._turn(ticket)
        except BaseException:
            self.discard(ticket)
            if ticket.granted and self._running is ticket:
                self._finish(ticket)
            raise
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        future = self._executor.submit(job, *args)

        def finished(_: concurrent.futures.Future) -> None:
            self._average_seconds = 0.8 * self._average_seconds + 0.2 * (time.perf_counter() - started)
            try:
                loop.call_soon_threadsafe(self._finish, ticket)
            except RuntimeError:  # the loop is closed: nobody is left to serve
                pass

        future.add_done_callback(finished)
        return await asyncio.wrap_future(future)

    async def call(self, job: Callable[..., Any], *args: Any) -> Any:
        """Run ``job`` on the worker thread outside the line (loading the model at start-up)."""
        return await asyncio.wrap_future(self._executor.submit(job, *args))

    async def close(self, release: Optional[Callable[[], None]] = None) -> None:
        """Refuse new work, turn away waiting requests, stop the running job at its next token,
        then run ``release`` on the worker thread and wait until that thread has ended."""
        if self._closed:
            return
        self._closed = True
        self.stopping.set()
        while self._line:
            ticket = self._line.popleft()
            if ticket._waiter is not None and not ticket._waiter.done():
                ticket._waiter.set_exception(shutting_down())
        if release is not None:
            await asyncio.wrap_future(self._executor.submit(release))
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown, True)

    # -- internals ---------------------------------------------------------------------------

    async def _turn(self, ticket: Ticket) -> None:
        self._advance()
        if ticket.granted:
            return
        ticket._waiter = asyncio.get_running_loop().create_future()
        try:
            await ticket.cancel.guard(asyncio.shield(ticket._waiter))
        except ClientGone:
            pass
        if not ticket.granted:
            raise APIError(503, "The request was cancelled while it waited for the model.",
                           type="server_error", code="request_cancelled")

    def _advance(self) -> None:
        """Hand the model to the first live ticket in line if nobody holds it."""
        if self._running is not None:
            return
        self._drop_cancelled()
        if not self._line:
            return
        ticket = self._line.popleft()
        ticket.granted = True
        self._running = ticket
        if ticket._waiter is not None and not ticket._waiter.done():
            ticket._waiter.set_result(None)

    def _finish(self, ticket: Ticket) -> None:
        if self._running is ticket:
            self._running = None
            self._advance()

    def _drop_cancelled(self) -> None:
        if any(t.cancel.is_set() for t in self._line):
            for t in [t for t in self._line if t.cancel.is_set()]:
                self._line.remove(t)
                if t._waiter is not None and not t._waiter.done():
                    t._waiter.set_result(None)
