"""The in-memory store of responses, for ``GET`` / ``DELETE /v1/responses/{id}`` and for continuing
a conversation by ``previous_response_id``.

Bounded two ways: at most ``max_entries`` responses (the oldest goes first) and each for ``ttl``
seconds after it was stored. Everything is lost when the server stops. It lives on the event
loop's thread only, so it takes no lock.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass
from typing import Callable, Optional


@dataclass
class Stored:
    """A response object and the chat messages of its whole conversation (input and output)."""

    response: dict
    history: list
    expires: float


class ResponseStore:
    def __init__(self, max_entries: int = 1000, ttl: float = 3600.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_entries = max_entries
        self.ttl = ttl
        self._clock = clock
        self._entries: collections.OrderedDict[str, Stored] = collections.OrderedDict()

    def __len__(self) -> int:
        self._expire()
        return len(self._entries)

    def put(self, response: dict, history: list) -> None:
        if self.max_entries <= 0:
            return
        self._expire()
        self._entries[response["id"]] = Stored(response, history, self._clock() + self.ttl)
        self._entries.move_to_end(response["id"])
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def get(self, response_id: str) -> Optional[Stored]:
        self._expire()
        return self._entries.get(response_id)

    def delete(self, response_id: str) -> bool:
        self._expire()
        return self._entries.pop(response_id, None) is not None

    def _expire(self) -> None:
        """Drop expired entries: they are stored in expiry order, so only from the front."""
        now = self._clock()
        while self._entries:
            first = next(iter(self._entries.values()))
            if first.expires > now:
                break
            self._entries.popitem(last=False)
