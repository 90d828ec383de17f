"""Reading one model call's stream inside an agent's streamed answer.

An inner backend streams into a :class:`StepCapture` as it would into a client's connection (it
is a :class:`~helios_raw.sink.ChunkSink`). The capture reads each chunk as it comes, forwards each
piece of text to the client at once (re-labelled as the agent's chunks), collects tool-call
deltas, the finish reason and usage, and passes the client's backpressure and departure back to
the inner backend through :meth:`drain` and :attr:`closed`.
"""

from __future__ import annotations

from typing import Optional

import orjson

from ..errors import APIError
from ..openai.objects import ChunkFactory
from ..sink import ChunkSink
from .loop import Step


class StepCapture(ChunkSink):
    """Collects one model call's streamed answer, forwarding its text to ``client``."""

    def __init__(self, client: ChunkSink, chunks: ChunkFactory) -> None:
        self.client = client
        self.chunks = chunks
        self._text: list[str] = []
        self._calls: dict[int, dict] = {}
        self._finish_reason: Optional[str] = None
        self._usage: Optional[dict] = None
        self._error: Optional[dict] = None

    # -- ChunkSink --------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self.client.closed

    def send(self, chunk: dict) -> None:
        self._read(chunk)

    def send_json(self, data: bytes) -> None:
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            self._error = {"message": "The model's stream sent a chunk that is not JSON."}
            return
        self._read(chunk)

    @property
    def paused(self) -> bool:
        return self.client.paused

    async def drain(self) -> None:
        await self.client.drain()

    # -- result -----------------------------------------------------------------------------

    def step(self) -> Step:
        """What the call answered; raises the APIError the inner stream reported, if any."""
        if self._error is not None:
            error = self._error
            raise APIError(502, str(error.get("message") or "The model's stream reported an error."),
                           type=str(error.get("type") or "server_error"), param=error.get("param"),
                           code=error.get("code"))
        calls = [self._calls[i] for i in sorted(self._calls)]
        return Step("".join(self._text), calls, self._finish_reason or "stop", self._usage)

    # -- reading ----------------------------------------------------------------------------

    def _read(self, chunk: dict) -> None:
        if not isinstance(chunk, dict):
            return
        if "error" in chunk:
            error = chunk["error"]
            self._error = error if isinstance(error, dict) else {"message": str(error)}
            return
        if isinstance(chunk.get("usage"), dict):
            self._usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if isinstance(text, str) and text:
                self._text.append(text)
                self.client.send(self.chunks.content(text))
            for piece in delta.get("tool_calls") or []:
                self._add_call_delta(piece)
            if choice.get("finish_reason"):
                self._finish_reason = choice["finish_reason"]

    def _add_call_delta(self, piece: dict) -> None:
        if not isinstance(piece, dict):
            return
        index = piece.get("index")
        if not isinstance(index, int):
            index = len(self._calls)
        call = self._calls.setdefault(index, {"id": "", "type": "function",
                                              "function": {"name": "", "arguments": ""}})
        if piece.get("id"):
            call["id"] = piece["id"]
        function = piece.get("function") or {}
        if isinstance(function.get("name"), str):
            call["function"]["name"] += function["name"]
        if isinstance(function.get("arguments"), str):
            call["function"]["arguments"] += function["arguments"]
