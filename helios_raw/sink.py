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

    ``send`` and ``send_json`` run on the event loop's thread and never block. :attr:`paused` says
    the consumer reads slower than it is written to, and ``await drain()`` waits until it has
    caught up. Once :attr:`closed`, sending is pointless and ``drain`` raises
    :class:`~helios_raw.cancel.ClientGone`.
    """

    @property
    @abc.abstractmethod
    def closed(self) -> bool:
        """The consumer has gone away."""

    @property
    def paused(self) -> bool:
        """The consumer is behind: sending more now only piles it up (safe from any thread)."""
        return False

    @abc.abstractmethod
    def send(self, chunk: dict) -> None:
        """Take one chunk (event-loop thread)."""

    def send_json(self, data: bytes) -> None:
        """Take one chunk already encoded as JSON (event-loop thread), as relayed from upstream."""
        self.send(orjson.loads(data))

    @abc.abstractmethod
    async def drain(self) -> None:
        """Wait until the consumer has caught up."""
