"""Reading one model call's stream inside an agent's streamed answer.

An inner backend streams into a :class:`StepCapture` as it would into a client's connection (it
is a :class:`~helios_raw.sink.ChunkSink`). The capture reads each chunk as it comes (a
:class:`~helios_raw.answers.ChunkReader`), forwards each piece of text to the client at once
(re-labelled as the agent's chunks), collects the tool calls, the finish reason and usage, and
passes the client's backpressure and departure back to the inner backend through :meth:`drain`,
:attr:`paused` and :attr:`closed`. An error the inner stream reports is raised as it arrives.
"""

from __future__ import annotations

import orjson

from ..answers import ChunkReader
from ..errors import APIError
from ..openai.objects import ChunkFactory
from ..sink import ChunkSink
from .loop import Step


class StepCapture(ChunkSink, ChunkReader):
    """Collects one model call's streamed answer, forwarding its text to ``client``."""

    def __init__(self, client: ChunkSink, chunks: ChunkFactory) -> None:
        ChunkReader.__init__(self)
        self.client = client
        self.chunks = chunks

    # -- ChunkSink --------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self.client.closed

    @property
    def paused(self) -> bool:
        return self.client.paused

    def send(self, chunk: dict) -> None:
        self.read(chunk)

    def send_json(self, data: bytes) -> None:
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise APIError(502, "The model's stream sent a chunk that is not JSON.", type="server_error") from None
        self.read(chunk)

    async def drain(self) -> None:
        await self.client.drain()

    def on_text(self, text: str) -> None:
        self.client.send(self.chunks.content(text))

    # -- result -----------------------------------------------------------------------------

    def step(self) -> Step:
        """What the call answered."""
        self.settle()
        answer = self.answer
        calls = [{"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
                 for c in answer.tool_calls]
        usage = {"prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.completion_tokens,
                 "total_tokens": answer.prompt_tokens + answer.completion_tokens}
        return Step(answer.text, calls, answer.finish_reason, usage)
