"""An upstream's event stream: decoded from bytes as they arrive, and relayed.

:class:`RemoteStream` relays a chat or text completion stream, each chunk normalised to OpenAI's
shape (:class:`~.normalise.ChunkNormaliser`); :class:`EventRelay` hands the events of another
API through untouched. Events are cut at line ends in the byte stream, so an event or a UTF-8
character split between network reads comes through whole, and nothing is buffered beyond the
event being read. The upstream's ``[DONE]`` ends a completion relay (the handler writes ours); an
upstream error event ends it with that error.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Awaitable, Callable

from ...cancel import Cancellation
from ...errors import APIError
from ...http.client import ClientResponse, HTTPClientError
from ...sink import ChunkSink
from ..base import ChunkStream
from .chunks import ChunkNormaliser
from .normalise import MalformedStream, error_fields, parse_event

if TYPE_CHECKING:  # pragma: no cover
    from .backend import RemoteBackend

#: Bytes one upstream event may grow to before the stream is given up as malformed.
MAX_EVENT_BYTES = 8 * 1024 * 1024
#: Bytes read after ``[DONE]`` (normally just the end of the body) before the connection is dropped.
_TAIL_BYTES = 64 * 1024
#: Seconds the upstream gets to end its body after ``[DONE]`` before its connection is closed.
_TAIL_TIMEOUT = 1.0


class RemoteStream(ChunkStream):
    """An upstream completion stream whose head has arrived; :meth:`run` relays its chunks."""

    def __init__(self, response: ClientResponse, cancel: Cancellation, backend: "RemoteBackend",
                 normaliser: ChunkNormaliser) -> None:
        self.response = response
        self.cancel = cancel
        self.backend = backend
        self.normaliser = normaliser

    async def run(self, sink: ChunkSink) -> None:
        try:
            await self.cancel.guard(self._relay(sink))
        finally:
            self.response.close()

    async def _relay(self, sink: ChunkSink) -> None:
        decoder = SSEDecoder(MAX_EVENT_BYTES)
        normaliser = self.normaliser
        try:
            async for piece in self.response.iter_bytes():
                for name, data in decoder.feed(piece):
                    if data == b"[DONE]":
                        await self._finish_body()
                        self._send(sink, normaliser.finish())
                        return
                    obj, lossy = parse_event(name, data)
                    if name == "error" or obj.get("error"):
                        self.backend.metrics.upstream_error("error_event")
                        raise_error_event(obj)
                    self._send(sink, normaliser.chunk(obj, lossy))
                await sink.drain()
        except HTTPClientError as exc:
            raise self.backend.transport_error(exc) from None
        except MalformedStream as exc:
            self.backend.metrics.upstream_error("protocol")
            raise self.backend.bad_gateway(str(exc)) from None
        if not self.response.framed:  # the connection closed: maybe the stream was cut short
            self.backend.metrics.upstream_error("protocol")
            raise self.backend.bad_gateway("The upstream's stream ended without [DONE] and without a marked end "
                                           "of body, so it may have been cut short.")
        # A whole body that ends without [DONE] is an ended stream.
        self._send(sink, normaliser.finish())

    @staticmethod
    def _send(sink: ChunkSink, chunks: list) -> None:
        for chunk in chunks:
            sink.send(chunk)

    async def _finish_body(self) -> None:
        """Read what follows ``[DONE]`` so the connection can be reused; an upstream that keeps
        the body open is cut off."""
        self.response.read_timeout = min(self.response.read_timeout, _TAIL_TIMEOUT)
        try:
            await self.response.read(_TAIL_BYTES)
        except HTTPClientError:
            pass


class EventRelay:
    """An upstream event stream of another API whose head has arrived; :meth:`run` hands each
    event, name and data untouched, to ``forward(name, data)`` until the upstream's body ends."""

    def __init__(self, response: ClientResponse, cancel: Cancellation, backend: "RemoteBackend") -> None:
        self.response = response
        self.cancel = cancel
        self.backend = backend

    async def run(self, forward: Callable[[str, bytes], None], drain: Callable[[], Awaitable[None]]) -> None:
        try:
            await self.cancel.guard(self._relay(forward, drain))
        finally:
            self.response.close()

    async def _relay(self, forward: Callable[[str, bytes], None], drain: Callable[[], Awaitable[None]]) -> None:
        decoder = SSEDecoder(MAX_EVENT_BYTES)
        try:
            async for piece in self.response.iter_bytes():
                for name, data in decoder.feed(piece):
                    forward(name, data)
                await drain()
        except HTTPClientError as exc:
            raise self.backend.transport_error(exc) from None
        except MalformedStream as exc:
            self.backend.metrics.upstream_error("protocol")
            raise self.backend.bad_gateway(str(exc)) from None


class SSEDecoder:
    """Server-Sent Events from bytes that arrive in arbitrary pieces.

    :meth:`feed` returns the ``(event name, data)`` of every event completed by the piece: ``data``
    is the event's ``data:`` lines joined with ``\\n`` (bytes, undecoded, so a UTF-8 character
    split between pieces is never cut); the name is ``"message"`` unless an ``event:`` line set it.
    Comment lines (``:...``) and other fields are skipped; lines end in LF or CRLF. A line still
    arriving is kept in pieces and joined once, when it ends, so a long line costs time in
    proportion to its length, however finely it is cut.
    """

    __slots__ = ("_partial", "_partial_bytes", "_data", "_name", "_limit")

    def __init__(self, limit: int = MAX_EVENT_BYTES) -> None:
        self._partial: list[bytes] = []
        self._partial_bytes = 0
        self._data: list[bytes] = []
        self._name = "message"
        self._limit = limit

    def feed(self, piece: bytes) -> list[tuple[str, bytes]]:
        if b"\n" not in piece:
            self._partial.append(piece)
            self._partial_bytes += len(piece)
            if self._partial_bytes > self._limit:
                raise MalformedStream(f"The upstream sent an event line longer than {self._limit} bytes.")
            return []
        if self._partial:
            piece = b"".join(self._partial) + piece
            self._partial.clear()
        lines = piece.split(b"\n")
        rest = lines.pop()
        self._partial_bytes = len(rest)
        if rest:
            self._partial.append(rest)
        if self._partial_bytes > self._limit:
            raise MalformedStream(f"The upstream sent an event line longer than {self._limit} bytes.")
        events = []
        for line in lines:
            if line[-1:] == b"\r":
                line = line[:-1]
            if not line:
                if self._data:
                    events.append((self._name, b"\n".join(self._data)))
                self._data = []
                self._name = "message"
                continue
            if line[:1] == b":":
                continue
            field, _, value = line.partition(b":")
            if value[:1] == b" ":
                value = value[1:]
            if field == b"data":
                self._data.append(value)
            elif field == b"event":
                self._name = value.decode("utf-8", "replace")
        return events


def raise_error_event(obj: dict) -> None:
    """Raise the APIError an upstream error event carries (OpenAI's ``{"error": {...}}``, or
    llama-server's, whose ``code`` is the HTTP status)."""
    message, type_, param, code = error_fields(obj)
    raise APIError(502, message or "The upstream reported an error mid-stream.",
                   type=type_ or "server_error", param=param, code=code or "upstream_error")
