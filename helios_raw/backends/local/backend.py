"""The local backend: a GGUF model run in-process by llama.cpp, many requests at once.

A request takes a place in the :class:`~.admission.Admission` line first (429 when it is full,
before anything costly), then its prompt is rendered and tokenised and its sampler built off the
event loop (:mod:`.job`), then it waits for a slot and runs as a :class:`~.sequence.Sequence`
in the :class:`~.engine.Engine`, which decodes every running sequence's next token in one batch.
A streamed answer's chunks reach the client as the engine makes them; a client that reads slowly
pauses only its own sequence; a client that leaves frees its slot within one step.

Usage counts come from the model's tokenizer: ``prompt_tokens`` is the rendered prompt's length
(special tokens included), ``cached_tokens`` the part of it found in the slot's cache,
``completion_tokens`` the number of tokens sampled, not counting an end-of-turn token.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import logging
import time
from pathlib import Path
from typing import Optional

from ...cancel import Cancellation, ClientGone
from ...config import LocalConfig
from ...errors import APIError, bad_request, shutting_down
from ...metrics import RequestMetrics
from ...openai.completions import CompletionRequest, text_choice, text_completion
from ...openai.embeddings import EmbeddingRequest, embedding_list
from ...openai.objects import ChunkFactory, assistant_message, completion, usage
from ...openai.schema import ChatRequest
from ...sink import ChunkSink
from ..base import Backend, BackendError, ChunkStream
from .admission import Admission, Ticket
from .chat_formats import ChatFormat
from .completions import TextStream, logprobs_of, prompt_text, text_job
from .embeddings import check_dimensions
from .engine import Engine
from .job import Job, make_job, sampler_chain
from .model import LLAMA_CPP_MISSING, LoadedModel
from .model_files import expected_model_stem, resolve_model_path
from .sequence import ChatRender, Outcome, Sequence

log = logging.getLogger("helios_raw.local")


class LocalBackend(Backend):
    """Serves one GGUF model (see :class:`~helios_raw.config.LocalConfig`) with llama.cpp."""

    def __init__(self, config: LocalConfig) -> None:
        super().__init__()
        self.config = config
        self.model_id = config.model_name or expected_model_stem(config)
        self.model_path: Optional[Path] = None
        self.fingerprint: Optional[str] = None
        self._model: Optional[LoadedModel] = None
        self._state = "loading"
        self._error: Optional[BackendError] = None
        self._ready: Optional[asyncio.Future] = None
        self._admission = Admission(config.parallel, config.max_queue)
        self._engine = Engine(self._load, config.parallel, config.prefill_chunk, config.stall_timeout,
                              lambda: self._admission.waiting, self._ended)

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def state(self) -> str:
        return self._state

    @property
    def generated_tokens(self) -> int:
        """Tokens generated since start-up, all requests together, counted as they come."""
        return self._engine.generated_tokens

    @property
    def chat_format(self) -> Optional[ChatFormat]:
        return self._model.format if self._model else None

    def health(self) -> dict:
        facts = {"model": self.model_id, "backend_state": self.state, "slots": self.config.parallel,
                 "slots_busy": self._engine.busy, "queue_waiting": self._admission.waiting,
                 "busy": self._engine.busy > 0, "generated_tokens": self.generated_tokens}
        if self.chat_format is not None:
            facts["chat_format"] = self.chat_format.name
        return facts

    async def start(self) -> None:
        """Check the model file (``BackendError`` at once if it is unusable), then load it on the
        engine's thread; :attr:`state` is ``"loading"`` until it is ``"ready"`` or ``"failed"``."""
        if self._ready is not None:
            return
        if importlib.util.find_spec("llama_cpp") is None:
            raise BackendError(LLAMA_CPP_MISSING)
        self.model_path = resolve_model_path(self.config)
        if not self.config.model_name:
            self.model_id = self.model_path.stem
        self._ready = self._engine.start()
        self._ready.add_done_callback(self._loaded)
        engine, admission, metrics = self._engine, self._admission, self.metrics
        metrics.gauge("num_requests_running", lambda: engine.busy)
        metrics.gauge("num_requests_waiting", lambda: admission.waiting)
        metrics.gauge("num_slots", lambda: engine.slots)
        metrics.gauge("num_slots_in_use", lambda: engine.busy)
        metrics.gauge("kv_cache_usage_perc", engine.cache_usage)

    async def wait_ready(self) -> None:
        if self._ready is None:
            raise BackendError("The local backend was never started.")
        try:
            await asyncio.shield(self._ready)
        except Exception:
            pass
        if self._error is not None:
            raise self._error

    async def close(self) -> None:
        """Turn away waiting requests, end running ones (as shut down), free the model."""
        self._admission.close()
        await self._engine.close()
        self._model = None
        if self._state != "failed":
            self._state, self._error = "failed", BackendError("The backend was closed.")

    def _load(self) -> LoadedModel:
        """Engine thread: load the model and make its context."""
        started = time.perf_counter()
        config = self.config
        model = LoadedModel(str(self.model_path), config, config.parallel, config.prefill_chunk)
        log.info("model %s loaded from %s in %.2f s (%d slots of %d tokens, %d threads, flash attention %s); "
                 "chat format: %s", self.model_id, self.model_path, time.perf_counter() - started, config.parallel,
                 model.n_ctx, model.threads, "on" if config.flash_attention else "off", model.format.describe())
        return model

    def _loaded(self, ready: asyncio.Future) -> None:
        exc = ready.exception() if not ready.cancelled() else BackendError("Loading the model was cancelled.")
        if exc is None:
            self._model = ready.result()
            size = self.model_path.stat().st_size if self.model_path else 0
            digest = hashlib.sha1(f"{self.model_id}:{size}:{self._model.format.name}".encode()).hexdigest()
            self.fingerprint = "fp_" + digest[:10]
            self._state = "ready"
            return
        self._state = "failed"
        if isinstance(exc, BackendError):
            self._error = exc
        elif type(exc).__module__.startswith("jinja2"):
            self._error = BackendError(f"The chat template inside {self.model_path} is not valid Jinja ({exc}).")
        else:
            self._error = BackendError(f"Loading the model failed: {type(exc).__name__}: {exc}.")

    def _ended(self, sequence: Sequence) -> None:
        self._admission.release(sequence.ticket)

    # -- chat completions --------------------------------------------------------------------

    async def complete(self, request: ChatRequest, cancel: Cancellation) -> dict:
        ticket, job, chain, metrics = await self._prepare(request.model, cancel, self._job, request)
        sequence = Sequence(job, chain, cancel, time.monotonic() + self.config.request_timeout, metrics)
        outcome = await self.run(ticket, sequence)
        content = None if outcome.tool_calls else "".join(sequence.parts)
        logprobs = {"content": sequence.logprobs, "refusal": None} if job.top_logprobs is not None else None
        result = completion(
            self.model_id, assistant_message(content, outcome.tool_calls), outcome.finish_reason,
            usage(len(job.prompt), outcome.completion_tokens, outcome.cached_tokens), logprobs=logprobs,
            fingerprint=self.fingerprint)
        if outcome.stop is not None:
            result["choices"][0]["stop_reason"] = outcome.stop
        return result

    async def open_stream(self, request: ChatRequest, cancel: Cancellation) -> ChunkStream:
        ticket, job, chain, metrics = await self._prepare(request.model, cancel, self._job, request)
        return LocalStream(self, ticket, job, chain, metrics, cancel, request.include_usage)

    # -- text completions, embeddings, counting ----------------------------------------------

    @property
    def context_length(self) -> Optional[int]:
        return self._model.n_ctx if self._model is not None else self.config.context_size

    async def complete_text(self, request: CompletionRequest, cancel: Cancellation) -> dict:
        choices, counts = [], [0, 0, 0]
        for index, prompt in enumerate(request.prompts):
            ticket, job, chain, metrics = await self.prepare_text(request, prompt, cancel)
            echoed = request.echo and request.logprobs is not None
            sequence = Sequence(job, chain, cancel, time.monotonic() + self.config.request_timeout, metrics,
                                prompt_logprobs=request.logprobs if echoed else None)
            outcome = await self.run(ticket, sequence)
            text = "".join(sequence.parts)
            logprobs = None
            if request.logprobs is not None:
                logprobs = logprobs_of(self._model, job.prompt if echoed else None, sequence.prompt_entries,
                                       sequence.logprobs)
            if request.echo:
                text = prompt_text(self._model, prompt) + text
            choices.append(text_choice(index, text, outcome.finish_reason, logprobs))
            for i, count in enumerate((len(job.prompt), outcome.completion_tokens, outcome.cached_tokens)):
                counts[i] += count
        return text_completion(self.model_id, choices, usage(*counts), fingerprint=self.fingerprint)

    async def open_text_stream(self, request: CompletionRequest, cancel: Cancellation) -> ChunkStream:
        return TextStream(self, request, await self.prepare_text(request, request.prompts[0], cancel), cancel)

    async def embed(self, request: EmbeddingRequest, cancel: Cancellation) -> dict:
        model = self._serving(request.model)
        check_dimensions(request.dimensions, model.n_embd)
        inputs = [model.raw_tokens(i) if isinstance(i, str) else list(i) for i in request.inputs]
        bad = [t for tokens in inputs for t in tokens if not 0 <= t < model.n_vocab]
        if bad:
            raise bad_request(f"'input' holds token {bad[0]}, but the model's vocabulary has tokens 0 to "
                              f"{model.n_vocab - 1}.", "input")
        vectors = await cancel.guard(asyncio.shield(self._engine.call(lambda m: m.embedder().embed(inputs))))
        return embedding_list(self.model_id, vectors, sum(map(len, inputs)), request.encoding_format)

    async def count_tokens(self, request: ChatRequest, cancel: Cancellation) -> Optional[int]:
        model = self._serving(request.model)
        tools = request.tools if request.tools and request.tool_choice != "none" else None
        return len(await cancel.guard(asyncio.to_thread(model.prompt_tokens, request.messages, tools)))

    # -- running a request -------------------------------------------------------------------

    def _serving(self, model_name: str) -> LoadedModel:
        """The loaded model; the 503 a request gets when there is none."""
        model = self._model
        if model is None:
            if self._admission.closed:
                raise shutting_down()
            self.check_request(model_name, False)
            raise shutting_down()
        return model

    async def _prepare(self, model_name: str, cancel: Cancellation, make, *args) -> tuple:
        """A place in line, then ``make(model, *args)``'s job and sampler chain (made off the
        loop), and the request's metrics."""
        model = self._serving(model_name)
        ticket = self._admission.reserve(cancel)
        metrics = self.metrics.request()

        def build() -> tuple:  # tokenising and parsing a grammar may take a while
            job = make(model, *args)
            return job, sampler_chain(model.lc, model, job)

        built = asyncio.ensure_future(asyncio.to_thread(build))  # to_thread: its log lines name the request
        try:
            job, chain = await cancel.guard(asyncio.shield(built))
        except BaseException:
            self._admission.release(ticket)
            built.add_done_callback(lambda done: self._discard(done, model))
            raise
        return ticket, job, chain, metrics

    @staticmethod
    def _discard(built: asyncio.Future, model: LoadedModel) -> None:
        """Free the sampler chain of a job whose client left while it was being made."""
        if not built.cancelled() and built.exception() is None:
            model.lc.llama_sampler_free(built.result()[1])

    async def prepare_text(self, request: CompletionRequest, prompt, cancel: Cancellation) -> tuple:
        """``_prepare`` for one prompt of a text completion."""
        return await self._prepare(request.model, cancel, self._text_job, request, prompt)

    def discard(self, ticket: Ticket, job: Job, chain) -> None:
        """Give back a prepared request that will not run: its place in line and its sampler."""
        self._admission.release(ticket)
        if chain is not None and self._model is not None:
            self._model.lc.llama_sampler_free(chain)

    @property
    def model(self) -> Optional[LoadedModel]:
        return self._model

    def _job(self, model: LoadedModel, request: ChatRequest) -> Job:
        return make_job(self.config, model, request)

    def _text_job(self, model: LoadedModel, request: CompletionRequest, prompt) -> Job:
        return text_job(self.config, model, request, prompt)

    async def run(self, ticket: Ticket, sequence: Sequence) -> Outcome:
        """Wait for a slot, run ``sequence`` in the engine, and return how it ended (raising
        what its end means for the client)."""
        sequence.ticket = ticket
        try:
            await self._admission.acquire(ticket)
        except BaseException:
            self._free(sequence)
            raise
        self._engine.submit(sequence)
        outcome = await asyncio.shield(sequence.done)
        reason = "error" if outcome.error else "abort" if outcome.cancelled else outcome.finish_reason
        sequence.metrics.finished(len(sequence.job.prompt), outcome.completion_tokens, outcome.cached_tokens, reason)
        if log.isEnabledFor(logging.DEBUG):
            first = sequence.first_token_at - sequence.created if sequence.first_token_at else float("nan")
            log.debug("slot %d: %d prompt tokens (%d cached), first token after %d steps and %.1f ms, %d tokens "
                      "generated, ended %s", sequence.slot, len(sequence.job.prompt), outcome.cached_tokens,
                      sequence.first_token_step - sequence.admitted_step, first * 1000, outcome.completion_tokens,
                      outcome.cancelled or outcome.finish_reason)
        if outcome.error is not None:
            raise outcome.error
        if outcome.cancelled == "client":
            raise ClientGone()
        if outcome.cancelled == "stalled":
            raise APIError(503, "The client read nothing for too long while others waited for the model; the "
                           "answer was stopped.", type="server_error", code="client_too_slow")
        if outcome.cancelled:
            raise shutting_down()
        return outcome

    def _free(self, sequence: Sequence) -> None:
        """A sequence that never reached the engine: free its sampler chain."""
        if sequence.chain is not None and self._model is not None:
            self._model.lc.llama_sampler_free(sequence.chain)
            sequence.chain = None


class LocalStream(ChunkStream):
    """A streamed answer: the role chunk at once, then chunks as the engine makes them."""

    def __init__(self, backend: LocalBackend, ticket: Ticket, job: Job, chain, metrics: RequestMetrics,
                 cancel: Cancellation, include_usage: bool) -> None:
        self.backend = backend
        self.ticket = ticket
        self.job = job
        self.chain = chain
        self.metrics = metrics
        self.cancel = cancel
        self.include_usage = include_usage
        self._started = False

    async def run(self, sink: ChunkSink) -> None:
        self._started = True
        backend = self.backend
        chunks = ChunkFactory(backend.model_id, backend.fingerprint, include_usage=self.include_usage)
        sink.send(chunks.role())
        sequence = Sequence(self.job, self.chain, self.cancel, time.monotonic() + backend.config.request_timeout,
                            self.metrics, sink, ChatRender(chunks, self.job.top_logprobs is not None))
        outcome = await backend.run(self.ticket, sequence)
        finish = chunks.finish(outcome.finish_reason)
        if outcome.stop is not None:
            finish["choices"][0]["stop_reason"] = outcome.stop
        sink.send(finish)
        if self.include_usage:
            sink.send(chunks.usage(usage(len(self.job.prompt), outcome.completion_tokens, outcome.cached_tokens)))

    def __del__(self) -> None:
        # Never run (its response was never sent): give back the place in line and the sampler.
        if not self._started:
            self.backend.discard(self.ticket, self.job, self.chain)
