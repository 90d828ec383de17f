"""Where a backend sends the chunks of a streamed answer.

A :class:`ChunkSink` takes ``chat.completion.chunk`` objects one at a time, in order, and never
drops one. Backends write to it without knowing what is behind: the SSE stream of a client's
connection (:class:`~helios_raw.http.sse.SSESink`), an agent collecting one model call
(:class:`~helios_raw.agent.capture.StepCapture`), or a translator to another API's events.
"""

from __future__ import annotations

import abc

import orjson


class ChunkSink(abc.ABC):
    """The receiving end of a streamed answer.

    ``send`` and ``send_json`` run on the event loop's thread and never block; ``send_threadsafe``
    runs on a worker thread and blocks while the consumer is slow. ``await drain()`` waits while
    the consumer reads slower than it is written to. Once :attr:`closed`, sending is pointless and
    ``drain`` / ``send_threadsafe`` raise :class:`~helios_raw.cancel.ClientGone`.
    """

    @property
    @abc.abstractmethod
    def closed(self) -> bool:
        """The consumer has gone away."""

    @abc.abstractmethod
    def send(self, chunk: dict) -> None:
        """Take one chunk (event-loop thread)."""

    def send_json(self, data: bytes) -> None:
        """Take one chunk already encoded as JSON (event-loop thread), as relayed from upstream."""
        self.send(orjson.loads(data))

    @abc.abstractmethod
    def send_threadsafe(self, chunk: dict) -> None:
        """Take one chunk from a worker thread, in order, blocking while the consumer is slow."""

    @abc.abstractmethod
    async def drain(self) -> None:
        """Wait until the consumer has caught up."""
