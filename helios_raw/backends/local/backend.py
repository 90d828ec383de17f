"""The local backend: a GGUF model run in-process by llama-cpp-python.

One model, one context, one generation at a time (see :mod:`.scheduler`). Loading, tokenising
and generating run off the event loop: the model loads and generates on the scheduler's worker
thread; prompts are rendered and tokenised on the loop's default executor (tokenising only reads
the vocabulary). A streamed answer is written token by token from the worker thread through
``ChunkSink.send_threadsafe``, which blocks while the client reads slowly, so no token is ever
dropped; the worker checks the request's ``Cancellation`` before every token (see
:mod:`.model` for how the context and sampling work).

Usage counts come from the model's tokenizer: ``prompt_tokens`` is the rendered prompt's length
(special tokens included), ``completion_tokens`` the number of tokens sampled, not counting an
end-of-turn token.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import logging
import os
import random
import time
from pathlib import Path
from typing import Optional

from ...cancel import Cancellation, ClientGone
from ...config import LocalConfig
from ...errors import bad_request, model_unavailable, shutting_down
from ...openai.objects import ChunkFactory, assistant_message, completion, usage
from ...openai.schema import ChatRequest
from ...sink import ChunkSink
from ..base import Backend, BackendError, ChunkStream
from .chat_formats import ChatFormat
from .grammars import json_object_grammar, json_schema_grammar, tool_call_grammar
from .model import (
    DEFAULT_MIN_P,
    DEFAULT_REPEAT_PENALTY,
    DEFAULT_TOP_K,
    DEFAULT_TOP_P,
    LLAMA_CPP_MISSING,
    Job,
    LoadedModel,
    Outcome,
)
from .model_files import expected_model_stem, resolve_model_path
from .platform import cpu_advertises_amx, model_params
from .scheduler import Scheduler
from .text import CollectedText, Emit, ToolCallFilter

log = logging.getLogger("helios_raw.local")


class LocalBackend(Backend):
    """Serves one GGUF model (see :class:`~helios_raw.config.LocalConfig`) with llama-cpp-python."""

    def __init__(self, config: LocalConfig) -> None:
        super().__init__()
        self.config = config
        self.model_id = config.model_name or expected_model_stem(config)
        self.model_path: Optional[Path] = None
        self.fingerprint: Optional[str] = None
        self._model: Optional[LoadedModel] = None
        self._state = "loading"
        self._error: Optional[BackendError] = None
        self._loading: Optional[asyncio.Future] = None
        self._scheduler = Scheduler(config.max_queue)

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def state(self) -> str:
        return self._state

    @property
    def generated_tokens(self) -> int:
        """Tokens generated since start-up, all requests together, counted as they come."""
        return self._model.generated_tokens if self._model else 0

    @property
    def chat_format(self) -> Optional[ChatFormat]:
        return self._model.format if self._model else None

    def health(self) -> dict:
        facts = {"model": self.model_id, "backend_state": self.state, "queue_waiting": self._scheduler.waiting,
                 "busy": self._scheduler.busy, "generated_tokens": self.generated_tokens}
        if self.chat_format is not None:
            facts["chat_format"] = self.chat_format.name
        return facts

    async def start(self) -> None:
        """Check the model file (``BackendError`` at once if it is unusable), then load it on
        the worker thread; :attr:`state` is ``"loading"`` until it is ``"ready"`` or ``"failed"``."""
        if self._loading is not None:
            return
        if importlib.util.find_spec("llama_cpp") is None:
            raise BackendError(LLAMA_CPP_MISSING)
        path = resolve_model_path(self.config)
        self.model_path = path
        if not self.config.model_name:
            self.model_id = path.stem
        self._loading = asyncio.ensure_future(self._scheduler.call(self._load, path))
        self._loading.add_done_callback(self._loaded)

    async def wait_ready(self) -> None:
        if self._loading is None:
            raise BackendError("The local backend was never started.")
        try:
            await asyncio.shield(self._loading)
        except Exception:
            pass
        if self._error is not None:
            raise self._error

    async def close(self) -> None:
        """Stop the running generation at its next token, then free the model on the worker
        thread once that generation has returned."""
        await self._scheduler.close(self._release)

    def _load(self, path: Path) -> "LoadedModel":
        started = time.perf_counter()
        try:
            import llama_cpp
        except ImportError:
            raise BackendError(LLAMA_CPP_MISSING) from None
        config = self.config
        # The prompt is evaluated with as many threads as generation uses (llama-cpp-python would
        # take every core): on a busy machine, OpenMP threads spinning at barriers for a core
        # made a 30-token prompt take seconds instead of a third of one.
        threads = config.n_threads or max(1, (os.cpu_count() or 2) // 2)
        try:
            with model_params(use_extra_bufts=not cpu_advertises_amx()):
                llama = llama_cpp.Llama(
                    model_path=str(path), n_ctx=config.context_size, n_threads=threads, n_threads_batch=threads,
                    n_gpu_layers=config.n_gpu_layers, verbose=False,
                    seed=llama_cpp.LLAMA_DEFAULT_SEED if config.seed is None else config.seed & 0xFFFFFFFF)
        except Exception as exc:
            if type(exc).__module__.startswith("jinja2"):
                raise BackendError(f"The chat template inside {path} is not valid Jinja ({exc}).") from None
            raise BackendError(
                f"llama.cpp could not load {path}: the file may be truncated or corrupt, or made for a "
                "model architecture this llama.cpp build does not know.") from None
        try:
            model = LoadedModel(llama_cpp, llama, config.chat_format)
            model.warm_up()
        except BaseException:
            llama.close()
            raise
        log.info("model %s loaded from %s in %.2f s (context %d tokens, %d threads); chat format: %s", self.model_id,
                 path, time.perf_counter() - started, model.n_ctx, threads, model.format.describe())
        return model

    def _loaded(self, future: asyncio.Future) -> None:
        if future.cancelled():
            self._state, self._error = "failed", BackendError("Loading the model was cancelled.")
            return
        exc = future.exception()
        if exc is None:
            self._model = future.result()
            size = self.model_path.stat().st_size if self.model_path else 0
            digest = hashlib.sha1(f"{self.model_id}:{size}:{self._model.format.name}".encode()).hexdigest()
            self.fingerprint = "fp_" + digest[:10]
            self._state = "ready"
            return
        self._state = "failed"
        self._error = exc if isinstance(exc, BackendError) else BackendError(
            f"Loading the model failed: {type(exc).__name__}: {exc}.")
        log.error("%s", self._error)

    def _release(self) -> None:
        model, self._model = self._model, None
        if model is not None:
            model.llama.close()
        if self._state == "ready":
            self._state = "failed"
            self._error = BackendError("The backend was closed.")

    # -- chat completions --------------------------------------------------------------------

    async def complete(self, request: ChatRequest, cancel: Cancellation) -> dict:
        job = await self._prepare(request)
        ticket = self._scheduler.reserve(cancel)
        sink = CollectedText()
        outcome = await self._scheduler.run(ticket, self._generate, job, sink.emit, cancel)
        if outcome.cancelled:
            raise ClientGone() if cancel.is_set() else shutting_down()
        content = None if outcome.tool_calls else "".join(sink.parts)
        logprobs = {"content": sink.logprobs, "refusal": None} if job.top_logprobs is not None else None
        return completion(
            self.model_id, assistant_message(content, outcome.tool_calls), outcome.finish_reason,
            usage(len(job.prompt), outcome.completion_tokens), logprobs=logprobs, fingerprint=self.fingerprint)

    async def open_stream(self, request: ChatRequest, cancel: Cancellation) -> ChunkStream:
        job = await self._prepare(request)
        ticket = self._scheduler.reserve(cancel)
        return LocalStream(self, job, ticket, cancel, request.include_usage)

    async def _prepare(self, request: ChatRequest) -> Job:
        if self._model is None:
            if self._scheduler.stopping.is_set():
                raise shutting_down()
            self.check_request(request.model, False)
            raise model_unavailable()
        return await asyncio.get_running_loop().run_in_executor(None, self._job, self._model, request)

    def _job(self, model: "LoadedModel", chat: ChatRequest) -> Job:
        """Validate what only the model can judge, render and tokenise the prompt (off the loop)."""
        config = self.config
        tools = chat.tools if chat.tools and chat.tool_choice != "none" else None
        job = Job(
            prompt=[], max_new_tokens=0, stop=list(chat.stop),
            temperature=config.temperature if chat.temperature is None else chat.temperature,
            top_p=DEFAULT_TOP_P if chat.top_p is None else chat.top_p,
            top_k=DEFAULT_TOP_K if chat.top_k is None else chat.top_k,
            min_p=DEFAULT_MIN_P if chat.min_p is None else chat.min_p,
            repeat_penalty=DEFAULT_REPEAT_PENALTY if chat.repeat_penalty is None else chat.repeat_penalty,
            presence_penalty=chat.presence_penalty or 0.0,
            frequency_penalty=chat.frequency_penalty or 0.0,
            seed=(chat.seed if chat.seed is not None else config.seed if config.seed is not None
                  else random.getrandbits(32)) & 0xFFFFFFFF,
            top_logprobs=(chat.top_logprobs or 0) if chat.logprobs else None,
        )
        if chat.logit_bias:
            bad = [t for t in chat.logit_bias if not 0 <= t < model.n_vocab]
            if bad:
                raise bad_request(f"'logit_bias' names token {bad[0]}, but the model's vocabulary has tokens "
                                  f"0 to {model.n_vocab - 1}.", "logit_bias")
            job.logit_bias = dict(chat.logit_bias)
        if tools:
            job.tool_names = frozenset(t["function"]["name"] for t in tools)
            choice = chat.tool_choice or "auto"
            if choice == "auto":
                job.tool_mode = "auto"
            else:
                job.tool_mode = "forced"
                job.grammar = tool_call_grammar(tools, None if choice == "required" else choice["function"]["name"])
        response_format = chat.response_format or {"type": "text"}
        if job.grammar is None and response_format["type"] == "json_object":
            job.grammar = json_object_grammar()
        elif job.grammar is None and response_format["type"] == "json_schema":
            job.grammar = json_schema_grammar(response_format["json_schema"].get("schema") or {"type": "object"})
        job.prompt = model.prompt_tokens(chat.messages, tools)
        room = model.n_ctx - len(job.prompt)
        if room <= 0:
            raise bad_request(
                f"The messages take {len(job.prompt)} tokens, but the model's context holds {model.n_ctx}; "
                "shorten them.", "messages", "context_length_exceeded")
        job.max_new_tokens = min(chat.max_tokens or config.max_tokens, room)
        job.stop.extend(s for s in model.text_stops if s not in job.stop)
        return job

    def _generate(self, job: Job, emit: Emit, cancel: Cancellation) -> Outcome:
        """Worker thread: generate ``job``, sending text to ``emit`` as it comes."""
        model = self._model
        if model is None:
            return Outcome(cancelled=True)
        tools: Optional[ToolCallFilter] = None
        if job.tool_mode is not None:
            tools = ToolCallFilter(emit, job.tool_names, hold_all=job.tool_mode == "forced")
            emit = tools.emit
        outcome = model.generate(job, emit, cancel, self._scheduler.stopping, self.config.request_timeout)
        if tools is not None and not outcome.cancelled:
            try:
                outcome.tool_calls = tools.finish()
            except ClientGone:
                outcome.cancelled = True
            if outcome.tool_calls:
                outcome.finish_reason = "tool_calls"
        return outcome


class LocalStream(ChunkStream):
    """A streamed answer: the role chunk at once, then one chunk per generated piece."""

    def __init__(self, backend: LocalBackend, job: Job, ticket, cancel: Cancellation, include_usage: bool) -> None:
        self.backend = backend
        self.job = job
        self.ticket = ticket
        self.cancel = cancel
        self.include_usage = include_usage

    async def run(self, sink: ChunkSink) -> None:
        backend = self.backend
        factory = ChunkFactory(backend.model_id, backend.fingerprint)
        sink.send(factory.role())
        send = sink.send_threadsafe
        content = factory.content
        if self.job.top_logprobs is None:
            def emit(text: str, logprobs: Optional[list]) -> None:
                send(content(text))
        else:
            def emit(text: str, logprobs: Optional[list]) -> None:
                send(content(text, {"content": logprobs or [], "refusal": None}))
        outcome: Outcome = await backend._scheduler.run(self.ticket, backend._generate, self.job, emit, self.cancel)
        if outcome.cancelled:
            raise ClientGone() if self.cancel.is_set() or sink.closed else shutting_down()
        if outcome.tool_calls:
            sink.send(factory.chunk({"tool_calls": [{"index": i, **call} for i, call in enumerate(outcome.tool_calls)]}))
        sink.send(factory.finish(outcome.finish_reason))
        if self.include_usage:
            sink.send(factory.usage(usage(len(self.job.prompt), outcome.completion_tokens)))
