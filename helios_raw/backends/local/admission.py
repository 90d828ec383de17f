"""A fair FIFO line for the engine's slots, kept on the event loop.

A request first :meth:`Admission.reserve` s a place in line (429 with ``Retry-After`` when
``max_queue`` requests already wait, before any costly work such as tokenising is done), then
``await`` s :meth:`Admission.acquire` for one of ``slots`` places, in the order places were
reserved. A place is given back with :meth:`Admission.release` when the engine has really ended
the request's sequence (not merely when its client went away), so no more than ``slots``
sequences ever hold the engine. Nothing here waits for the model: ``/health`` and
``/v1/models`` are answered whatever the line holds.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Optional

from ...cancel import Cancellation, ClientGone
from ...errors import APIError, shutting_down


class Ticket:
    """A request's place in line."""

    __slots__ = ("cancel", "granted", "released", "waiter", "reserved")

    def __init__(self, cancel: Cancellation) -> None:
        self.cancel = cancel
        self.granted = False
        self.released = False
        self.waiter: Optional[asyncio.Future] = None
        self.reserved = time.monotonic()


class Admission:
    """Up to ``slots`` requests hold the engine; up to ``max_queue`` more wait, first come first
    served; more are refused with 429."""

    def __init__(self, slots: int, max_queue: int) -> None:
        self.slots = slots
        self.max_queue = max_queue
        self.holding = 0
        self._line: deque[Ticket] = deque()
        self._closed = False
        self._average_seconds = 1.0

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def waiting(self) -> int:
        """Requests waiting for a slot."""
        return sum(1 for t in self._line if not t.cancel.is_set())

    def reserve(self, cancel: Cancellation) -> Ticket:
        """A place at the end of the line; a 429 when ``max_queue`` requests already wait (a
        request that can start at once never waits), a 503 once closed."""
        if self._closed:
            raise shutting_down()
        self._drop_cancelled()
        if self.holding + len(self._line) >= self.slots and len(self._line) >= self.max_queue:
            retry = max(1, min(60, round(self._average_seconds * (len(self._line) + 1) / self.slots)))
            raise APIError(
                429, f"The model is busy and {len(self._line)} requests are already waiting; retry in "
                f"{retry} s.", type="requests", code="rate_limit_exceeded", headers=[("retry-after", str(retry))])
        ticket = Ticket(cancel)
        self._line.append(ticket)
        return ticket

    async def acquire(self, ticket: Ticket) -> None:
        """Wait for ``ticket``'s turn. A 503 if its request is cancelled (or the line closes)
        meanwhile; the place is then given up."""
        self._advance()
        if not ticket.granted:
            ticket.waiter = asyncio.get_running_loop().create_future()
            try:
                await ticket.cancel.guard(asyncio.shield(ticket.waiter))
            except ClientGone:
                pass
            except BaseException:
                self.release(ticket)
                raise
        if not ticket.granted or self._closed:
            self.release(ticket)
            if self._closed:
                raise shutting_down()
            raise APIError(503, "The request was cancelled while it waited for the model.",
                           type="server_error", code="request_cancelled")

    def release(self, ticket: Ticket) -> None:
        """Give the place back (once); the next in line gets it."""
        if ticket.released:
            return
        ticket.released = True
        if ticket in self._line:
            self._line.remove(ticket)
        elif ticket.granted:
            self.holding -= 1
            self._average_seconds = 0.8 * self._average_seconds + 0.2 * (time.monotonic() - ticket.reserved)
        self._advance()

    def close(self) -> None:
        """Refuse new requests and turn away those waiting (with a 503)."""
        self._closed = True
        while self._line:
            ticket = self._line.popleft()
            ticket.released = True
            if ticket.waiter is not None and not ticket.waiter.done():
                ticket.waiter.set_result(None)

    def _advance(self) -> None:
        """Give free places to the first live tickets in line."""
        self._drop_cancelled()
        while self._line and self.holding < self.slots and not self._closed:
            ticket = self._line.popleft()
            ticket.granted = True
            self.holding += 1
            if ticket.waiter is not None and not ticket.waiter.done():
                ticket.waiter.set_result(None)

    def _drop_cancelled(self) -> None:
        if any(t.cancel.is_set() for t in self._line):
            for ticket in [t for t in self._line if t.cancel.is_set()]:
                self._line.remove(ticket)
                ticket.released = True
                if ticket.waiter is not None and not ticket.waiter.done():
                    ticket.waiter.set_result(None)
