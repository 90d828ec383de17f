"""One request inside the engine: its sampler, its text, its place in a slot, how it ended.

A :class:`Sequence` is made on the event loop, then lives on the engine's thread from admission
to its end: the engine decodes its prompt, samples each token with the sequence's own sampler
chain and hands the token to :meth:`Sequence.accept`, which turns it into chunks (streamed) or
text (collected). Chunks wait in the engine's :class:`~.engine.Outbox` until the loop writes them.

The token last sampled is never decoded: its cache then holds exactly the tokens evaluated, and
the next request of a conversation finds them there.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from ...cancel import Cancellation
from ...metrics import RequestMetrics
from ...openai.objects import ChunkFactory
from ...sink import ChunkSink
from .calls import CallReader
from .job import Job
from .text import TextAssembler

if TYPE_CHECKING:  # pragma: no cover
    from .engine import Outbox
    from .model import LoadedModel


@dataclass
class Outcome:
    """How a generation ended."""

    finish_reason: str = "stop"
    completion_tokens: int = 0
    #: Prompt tokens found in the slot's cache (not evaluated again).
    cached_tokens: int = 0
    tool_calls: Optional[list] = None
    #: The client's stop string that ended the answer, if one did.
    stop: Optional[str] = None
    #: "client" (it left), "shutdown", "stalled" (it read nothing for too long) or None.
    cancelled: Optional[str] = None
    #: An error raised while generating (an APIError for the client).
    error: Optional[BaseException] = None


class Sequence:
    """See the module docstring. ``sink`` and ``chunks`` are set for a streamed answer."""

    def __init__(self, job: Job, chain, cancel: Cancellation, deadline: float, metrics: RequestMetrics,
                 sink: Optional[ChunkSink] = None, render: Optional["ChatRender"] = None,
                 prompt_logprobs: Optional[int] = None) -> None:
        self.job = job
        self.chain = chain
        #: Its life as metrics report it: ``started`` on admission, ``token`` per token.
        self.metrics = metrics
        self.cancel = cancel
        self.deadline = deadline
        self.sink = sink
        #: Makes the chunks of a streamed answer (None: the answer is collected).
        self.render = render
        #: None, or how many alternatives each prompt token's logprob entry lists (the prompt is
        #: then evaluated whole, every position's logits read into ``prompt_entries``).
        self.prompt_logprobs = prompt_logprobs
        self.prompt_entries: list = []
        #: The prompt's text, streamed first once the prompt is evaluated (a text completion's echo).
        self.echo: Optional[str] = None
        self.done: asyncio.Future = asyncio.get_running_loop().create_future()
        self.outcome = Outcome()
        self.slot = -1
        #: Prompt tokens in the slot's cache so far (cached or evaluated).
        self.evaluated = 0
        #: The token sampled last, not yet decoded (-1 before the first).
        self.token = -1
        #: Logits kept for its whole prompt (found whole in a slot): its first token is sampled
        #: from them, with nothing to evaluate.
        self.kept = None
        #: True while its client reads slower than it is written to: the engine skips it.
        self.paused = False
        self.paused_since = 0.0
        self.created = time.monotonic()
        self.first_token_at = 0.0
        #: The engine's step count when the sequence took its slot, and when it was first sampled.
        self.admitted_step = -1
        self.first_token_step = -1
        self.parts: list[str] = []  # the text of a collected answer
        self.logprobs: list = []
        self.outbox: Optional["Outbox"] = None
        self.ticket = None  # its place in the admission line, given back when it ends
        self._text = TextAssembler(job.stop, self._content)
        self._calls: Optional[CallReader] = None
        if job.tool_mode is not None:
            self._calls = CallReader(self._content, self._call_start, self._call_arguments, job.tool_names,
                                     forced=job.tool_mode == "forced")
            self._text = TextAssembler(job.stop, self._calls.emit)

    @property
    def held(self) -> bool:
        """Left out of batches: its client is behind (seen from the engine's thread too, before
        the loop has marked it :attr:`paused`)."""
        return self.paused or (self.sink is not None and self.sink.paused)

    @property
    def prefilling(self) -> bool:
        return self.evaluated < len(self.job.prompt)

    # -- engine thread -----------------------------------------------------------------------

    def accept(self, model: "LoadedModel", token: int, row) -> bool:
        """Take the token sampled from batch row ``row`` (or from kept logits); False once the
        answer has ended."""
        piece, is_end = model.piece(token)
        if not self.first_token_at:
            self.first_token_at = time.monotonic()
            if self.echo is not None:
                self.outbox.put(self, self.render.echo(self.echo, self.job.prompt, self.prompt_entries))
        if self.job.max_new_tokens <= 0:
            return self._end("length")
        if is_end:
            return self._end("stop")
        outcome = self.outcome
        outcome.completion_tokens += 1
        self.metrics.token()
        logprob = None if self.job.top_logprobs is None else model.logprob(row, token, piece, self.job.top_logprobs)
        if self._text.feed(piece, logprob):
            stop = self._text.stop
            outcome.stop = stop if stop in self.job.client_stops else None
            return self._end("stop")
        if outcome.completion_tokens >= self.job.max_new_tokens or time.monotonic() > self.deadline:
            return self._end("length")
        self.token = token
        return True

    def end(self, finish_reason: str) -> None:
        """End the answer now (the context is full), keeping what was generated."""
        self._end(finish_reason)

    def _end(self, finish_reason: str) -> bool:
        self._text.flush()
        if self._calls is not None:
            calls = self._calls.finish()
            if calls:
                self.outcome.tool_calls = calls
                finish_reason = "tool_calls" if finish_reason == "stop" else finish_reason
        self.outcome.finish_reason = finish_reason
        return False

    def _content(self, text: str, logprobs: Optional[list]) -> None:
        if self.render is None:
            self.parts.append(text)
            if logprobs:
                self.logprobs.extend(logprobs)
            return
        self.outbox.put(self, self.render.content(text, logprobs))

    def _call_start(self, index: int, call_id: str, name: str) -> None:
        if self.render is not None:
            self.outbox.put(self, self.render.call(index, call_id, name))

    def _call_arguments(self, index: int, text: str) -> None:
        if self.render is not None:
            self.outbox.put(self, self.render.arguments(index, text))


class ChatRender:
    """The ``chat.completion.chunk`` objects of a streamed chat answer's pieces."""

    __slots__ = ("chunks", "logprobs")

    def __init__(self, chunks: ChunkFactory, logprobs: bool) -> None:
        self.chunks = chunks
        self.logprobs = logprobs

    def content(self, text: str, logprobs: Optional[list]) -> dict:
        return self.chunks.content(text, {"content": logprobs or [], "refusal": None} if self.logprobs else None)

    def call(self, index: int, call_id: str, name: str) -> dict:
        return self.chunks.chunk({"tool_calls": [{
            "index": index, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}]})

    def arguments(self, index: int, text: str) -> dict:
        return self.chunks.chunk({"tool_calls": [{"index": index, "function": {"arguments": text}}]})
