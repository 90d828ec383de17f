"""Text completions on the local model: a raw prompt continued, no chat template.

Each prompt of a request becomes one :class:`~.sequence.Sequence` (one choice), run in order. A
string prompt is tokenised as the model tokenises text (its control tokens recognised, a BOS
added where the model wants one); a prompt of token ids is checked against the vocabulary.
``echo`` puts the prompt before the answer, and with ``logprobs`` the prompt's tokens get their
log-probabilities too (the prompt is then evaluated whole, not taken from a slot's cache).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Optional, Union

from ...cancel import Cancellation
from ...config import LocalConfig
from ...errors import bad_request
from ...openai.completions import (
    DEFAULT_MAX_TOKENS,
    CompletionRequest,
    TextChunkFactory,
    text_logprobs,
)
from ...openai.objects import usage
from ...sink import ChunkSink
from ..base import ChunkStream
from .job import Job, sampled_job
from .model import LoadedModel, token_text
from .sequence import Sequence

if TYPE_CHECKING:  # pragma: no cover
    from .backend import LocalBackend


def text_job(config: LocalConfig, model: LoadedModel, request: CompletionRequest,
             prompt: Union[str, list]) -> Job:
    """The job continuing ``prompt``; a 400 naming ``prompt`` or ``max_tokens`` if it can't be."""
    job = sampled_job(config, model, request)
    if isinstance(prompt, str):
        tokens = model.raw_tokens(prompt)
    else:
        bad = [t for t in prompt if not 0 <= t < model.n_vocab]
        if bad:
            raise bad_request(f"'prompt' holds token {bad[0]}, but the model's vocabulary has tokens 0 to "
                              f"{model.n_vocab - 1}.", "prompt")
        tokens = list(prompt)
    if not tokens:
        raise bad_request("'prompt' must hold at least one token.", "prompt")
    length = DEFAULT_MAX_TOKENS if request.max_tokens is None else request.max_tokens
    if len(tokens) + length > model.n_ctx:
        raise bad_request(
            f"This model's context holds {model.n_ctx} tokens; the prompt takes {len(tokens)} and "
            f"{length} more were asked for. Shorten the prompt or lower max_tokens.", "prompt",
            "context_length_exceeded")
    job.prompt, job.max_new_tokens = tokens, length
    job.top_logprobs = request.logprobs
    return job


def prompt_text(model: LoadedModel, prompt: Union[str, list]) -> str:
    """The text ``echo`` repeats: a string prompt as given, token ids as their text."""
    if isinstance(prompt, str):
        return prompt
    return b"".join(model.piece(t)[0] for t in prompt).decode("utf-8", "replace")


def logprobs_of(model: LoadedModel, prompt: Optional[list], prompt_entries: list, entries: list,
                offset: int = 0) -> dict:
    """A text choice's ``logprobs`` from chat-style entries: those of the prompt's tokens (when
    echoed; the first has none) and then of the generated ones."""
    tokens, values, tops = [], [], []
    for token, entry in zip(prompt or (), prompt_entries):
        tokens.append(token_text(model.piece(token)[0]))
        values.append(None if entry is None else entry["logprob"])
        tops.append(None if entry is None else {t["token"]: t["logprob"] for t in entry["top_logprobs"]})
    for entry in entries:
        tokens.append(entry["token"])
        values.append(entry["logprob"])
        tops.append({t["token"]: t["logprob"] for t in entry["top_logprobs"]})
    return text_logprobs(tokens, values, tops, offset)


class TextRender:
    """The chunks of one prompt's streamed text completion (choice ``index``)."""

    __slots__ = ("model", "chunks", "index", "logprobs", "offset")

    def __init__(self, model: LoadedModel, chunks: TextChunkFactory, index: int, logprobs: bool) -> None:
        self.model = model
        self.chunks = chunks
        self.index = index
        self.logprobs = logprobs
        self.offset = 0

    def content(self, text: str, entries: Optional[list]) -> dict:
        return self._chunk(text, None, [], entries or [])

    def echo(self, text: str, prompt: list, prompt_entries: list) -> dict:
        """The prompt, repeated before the answer (with its tokens' logprobs when asked)."""
        return self._chunk(text, prompt, prompt_entries, [])

    def _chunk(self, text: str, prompt: Optional[list], prompt_entries: list, entries: list) -> dict:
        logprobs = logprobs_of(self.model, prompt, prompt_entries, entries, self.offset) if self.logprobs else None
        self.offset += len(text)
        return self.chunks.chunk(self.index, text, None, logprobs)


class TextStream(ChunkStream):
    """A streamed text completion: each prompt's pieces in turn (choice by choice), each ended by
    a chunk with its finish reason, then the usage of them all if asked. ``first`` is the first
    prompt's prepared place in line, job, sampler chain and metrics."""

    def __init__(self, backend: "LocalBackend", request: CompletionRequest, first: tuple,
                 cancel: Cancellation) -> None:
        self.backend = backend
        self.request = request
        self.first: Optional[tuple] = first
        self.cancel = cancel

    async def run(self, sink: ChunkSink) -> None:
        backend, request = self.backend, self.request
        chunks = TextChunkFactory(backend.model_id, backend.fingerprint)
        counts = [0, 0, 0]
        for index, prompt in enumerate(request.prompts):
            prepared, self.first = self.first, None
            if prepared is None:
                prepared = await backend.prepare_text(request, prompt, self.cancel)
            ticket, job, chain, metrics = prepared
            echoed = request.echo and request.logprobs is not None
            sequence = Sequence(job, chain, self.cancel, time.monotonic() + backend.config.request_timeout,
                                metrics, sink, TextRender(backend.model, chunks, index, request.logprobs is not None),
                                prompt_logprobs=request.logprobs if echoed else None)
            if request.echo:
                sequence.echo = prompt_text(backend.model, prompt)
            outcome = await backend.run(ticket, sequence)
            sink.send(chunks.chunk(index, "", outcome.finish_reason))
            for i, count in enumerate((len(job.prompt), outcome.completion_tokens, outcome.cached_tokens)):
                counts[i] += count
        if request.include_usage:
            sink.send(chunks.usage(usage(*counts)))

    def __del__(self) -> None:
        # Never run (its response was never sent): give back the first prompt's place and sampler.
        if self.first is not None:
            self.backend.discard(*self.first[:3])
