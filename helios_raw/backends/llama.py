"""The local backend: a GGUF model run in-process by llama-cpp-python.

One model, one context, one generation at a time (see :mod:`.scheduler`). Loading, tokenising
and generating run off the event loop: the model loads and generates on the scheduler's worker
thread; prompts are rendered and tokenised on the loop's default executor (tokenising only reads
the vocabulary). A streamed answer is written token by token from the worker thread through
``EventStream.send_threadsafe``, which blocks while the client reads slowly, so no token is ever
dropped; the worker checks the request's ``Cancellation`` before every token.

The context is kept from one request to the next: a prompt is evaluated only from where it
differs from the tokens already there, and a prompt equal to them is sampled straight from the
logits kept from their evaluation (no model work at all). The last token of an answer is never
decoded, so the context holds exactly the tokens evaluated, and its logits remain those of the last.

Sampling when the request leaves a value out: ``temperature`` and ``max_tokens`` from
:class:`~helios_raw.config.LocalConfig`; ``top_k`` 40, ``top_p`` 0.95, ``min_p`` 0.05 (llama.cpp's
usual chat defaults); ``repeat_penalty`` 1.0 (off), ``presence_penalty`` and
``frequency_penalty`` 0; ``seed`` from the config, else random per request. The sampler chain is
the one llama-cpp-python builds, so a given seed gives the same text as ``Llama.generate``.

Usage counts come from the model's tokenizer: ``prompt_tokens`` is the rendered prompt's length
(special tokens included), ``completion_tokens`` the number of tokens sampled, not counting an
end-of-turn token.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import ctypes
import hashlib
import importlib.util
import logging
import math
import os
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from ..config import LocalConfig
from ..errors import APIError, bad_request, server_error
from ..http.request import Cancellation
from ..http.response import ClientGone, EventStream
from ..openai.objects import ChunkFactory, assistant_message, completion, usage
from ..openai.schema import ChatRequest
from .base import Backend, BackendError, ChunkStream
from .chat_formats import ChatFormat, choose_chat_format, could_be_tool_call, parse_tool_calls
from .grammars import json_object_grammar, json_schema_grammar, tool_call_grammar
from .model_files import expected_model_stem, resolve_model_path
from .scheduler import Scheduler

log = logging.getLogger("helios_raw.local")

LLAMA_CPP_MISSING = "The local backend needs llama-cpp-python: pip install 'helios_raw[local]'."
DEFAULT_TOP_K = 40
DEFAULT_TOP_P = 0.95
DEFAULT_MIN_P = 0.05
DEFAULT_REPEAT_PENALTY = 1.0
#: Tokens the repetition penalties look back over (llama-cpp-python's ``last_n_tokens_size``).
PENALTY_LAST_N = 64

#: ``emit(text, logprobs)``: where generated text goes; ``logprobs`` is None unless requested.
Emit = Callable[[str, Optional[list]], None]


@dataclass
class Job:
    """One request made ready for the model: the prompt's tokens and how to sample."""

    prompt: list[int]
    max_new_tokens: int
    stop: list[str]
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    repeat_penalty: float
    presence_penalty: float
    frequency_penalty: float
    seed: int
    logit_bias: dict[int, float] = field(default_factory=dict)
    grammar: Optional[str] = None
    #: None: no logprobs; else how many alternatives per token.
    top_logprobs: Optional[int] = None
    #: None; "auto" (a tool call is recognised in the text) or "forced" (a grammar makes one).
    tool_mode: Optional[str] = None
    tool_names: frozenset = frozenset()


@dataclass
class Outcome:
    """How a generation ended."""

    finish_reason: str = "stop"
    completion_tokens: int = 0
    tool_calls: Optional[list] = None
    cancelled: bool = False


class LlamaBackend(Backend):
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
            with _model_params(use_extra_bufts=not _cpu_advertises_amx()):
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
            raise ClientGone() if cancel.is_set() else _shutting_down()
        content = None if outcome.tool_calls else "".join(sink.parts)
        logprobs = {"content": sink.logprobs, "refusal": None} if job.top_logprobs is not None else None
        return completion(
            self.model_id, assistant_message(content, outcome.tool_calls), outcome.finish_reason,
            usage(len(job.prompt), outcome.completion_tokens), logprobs=logprobs, fingerprint=self.fingerprint)

    async def open_stream(self, request: ChatRequest, cancel: Cancellation) -> ChunkStream:
        job = await self._prepare(request)
        ticket = self._scheduler.reserve(cancel)
        return LlamaChunkStream(self, job, ticket, cancel, request.include_usage)

    async def _prepare(self, request: ChatRequest) -> Job:
        if self._model is None:
            if self._state == "loading":
                raise APIError(503, "The model is still loading; try again in a moment.", type="server_error",
                               code="model_loading", headers=[("retry-after", "1")])
            raise _shutting_down() if self._scheduler.stopping.is_set() else APIError(
                503, "The model failed to load; see the server log.", type="server_error", code="model_unavailable")
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


class LlamaChunkStream(ChunkStream):
    """A streamed answer: the role chunk at once, then one chunk per generated piece."""

    def __init__(self, backend: LlamaBackend, job: Job, ticket, cancel: Cancellation, include_usage: bool) -> None:
        self.backend = backend
        self.job = job
        self.ticket = ticket
        self.cancel = cancel
        self.include_usage = include_usage

    async def run(self, events: EventStream) -> None:
        backend = self.backend
        factory = ChunkFactory(backend.model_id, backend.fingerprint)
        events.send(factory.role())
        send = events.send_threadsafe
        content = factory.content
        if self.job.top_logprobs is None:
            def emit(text: str, logprobs: Optional[list]) -> None:
                send(content(text))
        else:
            def emit(text: str, logprobs: Optional[list]) -> None:
                send(content(text, {"content": logprobs or [], "refusal": None}))
        outcome: Outcome = await backend._scheduler.run(self.ticket, backend._generate, self.job, emit, self.cancel)
        if outcome.cancelled:
            raise ClientGone() if self.cancel.is_set() or events.closed else _shutting_down()
        if outcome.tool_calls:
            events.send(factory.chunk({"tool_calls": [{"index": i, **call} for i, call in enumerate(outcome.tool_calls)]}))
        events.send(factory.finish(outcome.finish_reason))
        if self.include_usage:
            events.send(factory.usage(usage(len(self.job.prompt), outcome.completion_tokens)))


class LoadedModel:
    """A loaded llama.cpp model and context with what serving it needs.

    :meth:`generate` runs on the worker thread only; :meth:`prompt_tokens` may run on any thread
    (it reads only the vocabulary).
    """

    def __init__(self, llama_cpp, llama, chat_format: Optional[str]) -> None:
        import numpy  # llama-cpp-python's own dependency

        self.np = numpy
        self.lc = llama_cpp
        self.llama = llama
        self.vocab = llama._model.vocab
        self.n_vocab = llama.n_vocab()
        self.n_ctx = min(llama.n_ctx(), len(llama.input_ids))  # llama.cpp may round the context up
        self.bos = llama.token_bos()
        self.add_bos = bool(llama._model.add_bos_token()) and self.bos >= 0
        eos = llama.token_eos()
        self.format = choose_chat_format(
            llama.metadata, chat_format, self._one_token,
            bos_token=llama._model.token_get_text(self.bos) if self.bos >= 0 else "",
            eos_token=llama._model.token_get_text(eos) if eos >= 0 else "")
        # A format's end-of-turn string is an end token when the vocabulary has it as one token,
        # else a stop string matched in the text.
        self.end_tokens: set[int] = set()
        self.text_stops: list[str] = []
        for stop in self.format.stop:
            token = self._one_token(stop)
            if token is not None:
                self.end_tokens.add(token)
            elif stop:
                self.text_stops.append(stop)
        self._tokens: dict[int, tuple[bytes, bool]] = {}
        self.generated_tokens = 0
        self._piece_buffer = ctypes.create_string_buffer(256)
        # True while the context's logits are those computed for the last token in its cache
        # (``llama.input_ids[llama.n_tokens - 1]``): a prompt equal to the cache is then sampled
        # from them without evaluating anything.
        self._logits_current = False

    # -- any thread --------------------------------------------------------------------------

    def prompt_tokens(self, messages: list[dict], tools: Optional[list[dict]]) -> list[int]:
        text = self.format.render(messages, tools)
        tokens = self.llama.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        if self.add_bos and (not tokens or tokens[0] != self.bos):
            tokens.insert(0, self.bos)
        return tokens

    def _one_token(self, text: str) -> Optional[int]:
        """The id of ``text`` if the vocabulary holds it as a single token."""
        if not text:
            return None
        tokens = self.llama.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        return tokens[0] if len(tokens) == 1 else None

    # -- worker thread -----------------------------------------------------------------------

    def warm_up(self) -> None:
        """Decode a few tokens and forget them: llama.cpp sets up its compute graphs on the first
        decode (hundreds of milliseconds), which the first request should not wait for."""
        self.llama.eval([self.bos if self.bos >= 0 else 0] * 8)
        self._forget()

    def generate(self, job: Job, emit: Emit, cancel: Cancellation, stopping, timeout: float) -> Outcome:
        """Prefill the prompt, then sample until an end token, a stop string, ``max_new_tokens``,
        ``timeout`` seconds (both ``length``) or cancellation (checked before every token)."""
        lc, llama = self.lc, self.llama
        outcome = Outcome()
        deadline = time.monotonic() + timeout
        chain = self._sampler(job)
        text = TextAssembler(job.stop, emit)
        try:
            if not self._prefill(job.prompt, cancel, stopping):
                outcome.cancelled = True
                return outcome
            # The per-token path: one llama.cpp call to sample, one to decode, nothing else that
            # releases the GIL (each release lets the event loop's thread in between).
            sample, decode, ctx = lc.llama_sampler_sample, lc.llama_decode, llama.ctx
            batch = llama._batch.batch
            batch.n_tokens, batch.n_seq_id[0], batch.seq_id[0][0], batch.logits[0] = 1, 1, 0, True
            batch_token, batch_pos, history = batch.token, batch.pos, llama.input_ids
            token_info, known = self._token_info, self._tokens
            logprobs = job.top_logprobs
            feed = text.feed
            clock = time.monotonic
            position = llama.n_tokens
            # The last token sampled is never decoded (nothing would read its logits): the cache
            # then ends with the last token decoded, and the context's logits are still its own.
            budget = job.max_new_tokens
            if budget <= 0:
                outcome.finish_reason = "length"
            while budget > 0:
                if cancel.is_set() or stopping.is_set():
                    outcome.cancelled = True
                    break
                token = sample(chain, ctx, -1)
                piece, is_end = known.get(token) or token_info(token)
                if is_end:
                    break
                outcome.completion_tokens += 1
                self.generated_tokens += 1
                if feed(piece, None if logprobs is None else self._logprob(token, piece, logprobs)):
                    break
                if outcome.completion_tokens >= budget or clock() > deadline:
                    outcome.finish_reason = "length"
                    break
                batch_token[0], batch_pos[0] = token, position
                if decode(ctx, batch) != 0:
                    raise RuntimeError(f"llama_decode failed at position {position}")
                history[position] = token
                position += 1
                llama.n_tokens = position
            if not outcome.cancelled:
                text.flush()
        except ClientGone:
            outcome.cancelled = True
        except APIError:
            raise
        except Exception:
            log.exception("generation failed")
            self._forget()
            raise server_error("The model failed while generating; see the server log.") from None
        finally:
            lc.llama_sampler_free(chain)
        return outcome

    def _prefill(self, prompt: list[int], cancel: Cancellation, stopping) -> bool:
        """Make the context hold exactly ``prompt`` with the logits of its last token, evaluating
        only what the cache lacks: nothing when ``prompt`` is the cache and its logits are still
        current, else everything after the longest common prefix (at least the last token).
        False if cancelled between batches (the context is then empty)."""
        llama = self.llama
        cached = llama.n_tokens
        size = len(prompt)
        shared = min(cached, size)
        if shared:
            differs = self.np.flatnonzero(llama.input_ids[:shared] != self.np.asarray(prompt[:shared]))
            if differs.size:
                shared = int(differs[0])
        if shared == size == cached and self._logits_current:
            return True
        reusable = min(shared, size - 1)
        self._logits_current = False
        if reusable > 0 and llama._ctx.kv_cache_seq_rm(-1, reusable, -1):
            llama.n_tokens = reusable
        else:
            llama.reset()
        rest = prompt[llama.n_tokens:]
        step = llama.n_batch
        for start in range(0, len(rest), step):
            if cancel.is_set() or stopping.is_set():
                llama.reset()
                return False
            llama.eval(rest[start:start + step])
        self._logits_current = True
        return True

    def _forget(self) -> None:
        """Empty the context (its cache and its logits)."""
        self.llama.reset()
        self._logits_current = False

    def _sampler(self, job: Job):
        """A llama.cpp sampler chain for ``job``, in llama-cpp-python's order; freed by the caller."""
        lc = self.lc
        chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
        try:
            def add(sampler) -> None:
                lc.llama_sampler_chain_add(chain, sampler)

            if job.logit_bias:
                biases = (lc.llama_logit_bias * len(job.logit_bias))()
                for i, (token, bias) in enumerate(job.logit_bias.items()):
                    biases[i].token, biases[i].bias = token, bias
                add(lc.llama_sampler_init_logit_bias(self.n_vocab, len(job.logit_bias), biases))
            if job.repeat_penalty != 1.0 or job.presence_penalty or job.frequency_penalty:
                add(lc.llama_sampler_init_penalties(self.n_vocab, PENALTY_LAST_N, job.repeat_penalty,
                                                    job.frequency_penalty, job.presence_penalty))
            if job.grammar:
                grammar = lc.llama_sampler_init_grammar(self.vocab, job.grammar.encode("utf-8"), b"root")
                if not grammar:
                    raise bad_request("llama.cpp could not parse the grammar built for this request.",
                                      "response_format", "unsupported_schema")
                add(grammar)
            if job.temperature <= 0.0:
                add(lc.llama_sampler_init_greedy())
            else:
                add(lc.llama_sampler_init_top_k(job.top_k))
                add(lc.llama_sampler_init_top_p(job.top_p, 1))
                add(lc.llama_sampler_init_min_p(job.min_p, 1))
                add(lc.llama_sampler_init_temp(job.temperature))
                add(lc.llama_sampler_init_dist(job.seed))
        except BaseException:
            lc.llama_sampler_free(chain)
            raise
        return chain

    def _token_info(self, token: int) -> tuple[bytes, bool]:
        """(the token's text as bytes, whether it ends the turn), cached."""
        lc = self.lc
        buffer = self._piece_buffer
        n = lc.llama_token_to_piece(self.vocab, token, buffer, len(buffer), 0, False)
        if n < 0:
            buffer = ctypes.create_string_buffer(-n)
            n = lc.llama_token_to_piece(self.vocab, token, buffer, len(buffer), 0, False)
        info = (buffer.raw[:n], bool(lc.llama_vocab_is_eog(self.vocab, token)) or token in self.end_tokens)
        self._tokens[token] = info
        return info

    def _logprob(self, token: int, piece: bytes, top: int) -> dict:
        """OpenAI's logprob entry for the token just sampled (from the model's raw logits)."""
        np = self.np
        logits = np.ctypeslib.as_array(self.lc.llama_get_logits_ith(self.llama.ctx, -1), shape=(self.n_vocab,))
        peak = float(logits.max())
        log_total = peak + math.log(float(np.exp(logits - peak).sum()))
        entry = {"token": piece.decode("utf-8", "replace"), "logprob": float(logits[token]) - log_total,
                 "bytes": list(piece), "top_logprobs": []}
        if top:
            best = np.argpartition(-logits, min(top, self.n_vocab - 1))[:top]
            for other in sorted(best.tolist(), key=lambda t: -logits[t]):
                other_piece = (self._tokens.get(other) or self._token_info(other))[0]
                entry["top_logprobs"].append({"token": other_piece.decode("utf-8", "replace"),
                                              "logprob": float(logits[other]) - log_total,
                                              "bytes": list(other_piece)})
        return entry


class TextAssembler:
    """Turns token bytes into text for ``emit``: a UTF-8 sequence split across tokens is held
    until complete, text that may begin a stop string is held until it can't, and text from a
    stop string on is never emitted. Logprob entries travel with the text they produced."""

    __slots__ = ("_decode", "_emit", "_stops", "_held", "_logprobs")

    def __init__(self, stops: list[str], emit: Emit) -> None:
        self._decode = codecs.getincrementaldecoder("utf-8")("replace").decode
        self._emit = emit
        self._stops = stops
        self._held = ""
        self._logprobs: Optional[list] = None

    def feed(self, piece: bytes, logprob: Optional[dict]) -> bool:
        """Add one token's bytes; True when a stop string has been reached."""
        text = self._decode(piece)
        if logprob is not None:
            if self._logprobs is None:
                self._logprobs = []
            self._logprobs.append(logprob)
        if not self._stops:
            if text:
                self._send(text)
            return False
        buffer = self._held + text
        cut = -1
        for stop in self._stops:
            at = buffer.find(stop)
            if at >= 0 and (cut < 0 or at < cut):
                cut = at
        if cut >= 0:
            self._held = ""
            if cut:
                self._send(buffer[:cut])
            return True
        keep = self._stop_prefix_length(buffer)
        self._held = buffer[len(buffer) - keep:] if keep else ""
        if len(buffer) > keep:
            self._send(buffer[:len(buffer) - keep])
        return False

    def flush(self) -> None:
        """Emit what is held (the generation ended without reaching a stop string)."""
        text = self._held + self._decode(b"", True)
        self._held = ""
        if text:
            self._send(text)

    def _send(self, text: str) -> None:
        logprobs, self._logprobs = self._logprobs, None
        self._emit(text, logprobs)

    def _stop_prefix_length(self, buffer: str) -> int:
        """The length of the longest end of ``buffer`` that begins some stop string."""
        for length in range(min(len(buffer), max(len(s) for s in self._stops) - 1), 0, -1):
            tail = buffer[-length:]
            if any(stop.startswith(tail) for stop in self._stops):
                return length
        return 0


class ToolCallFilter:
    """Sits between the generation and its output when tools may be called.

    In ``auto`` mode text passes through as soon as it can no longer be a tool call; while it
    might be one it is held. With ``hold_all`` (a grammar forces a call) everything is held.
    :meth:`finish` turns the held text into tool calls, or releases it as content.
    """

    def __init__(self, emit: Emit, names: frozenset, hold_all: bool) -> None:
        self._emit = emit
        self._names = set(names)
        self._hold_all = hold_all
        self._passing = False
        self._held = ""
        self._logprobs: list = []

    def emit(self, text: str, logprobs: Optional[list]) -> None:
        if self._passing:
            self._emit(text, logprobs)
            return
        self._held += text
        if logprobs:
            self._logprobs.extend(logprobs)
        if not self._hold_all and not could_be_tool_call(self._held):
            self._passing = True
            self._release()

    def finish(self) -> Optional[list]:
        if self._passing or not self._held:
            return None
        calls = parse_tool_calls(self._held, self._names)
        if calls is None:
            self._release()
        return calls

    def _release(self) -> None:
        text, self._held = self._held, ""
        logprobs, self._logprobs = self._logprobs, []
        self._emit(text, logprobs or None)


class CollectedText:
    """The output of a non-streamed request."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.logprobs: list = []

    def emit(self, text: str, logprobs: Optional[list]) -> None:
        self.parts.append(text)
        if logprobs:
            self.logprobs.extend(logprobs)


_PARAMS_LOCK = threading.Lock()


@contextlib.contextmanager
def _model_params(**overrides: Any):
    """Make ``llama_cpp.Llama()`` load with ``overrides`` of llama.cpp's model parameters (it
    exposes no argument for them): its ``llama_model_default_params`` is wrapped meanwhile."""
    import llama_cpp.llama_cpp as bindings

    with _PARAMS_LOCK:
        defaults = bindings.llama_model_default_params

        def patched():
            params = defaults()
            for name, value in overrides.items():
                setattr(params, name, value)
            return params

        bindings.llama_model_default_params = patched
        try:
            yield
        finally:
            bindings.llama_model_default_params = defaults


def _cpu_advertises_amx() -> bool:
    """Whether the CPU claims Intel AMX. llama.cpp then moves quantised weights into AMX buffers,
    and on virtual machines that advertise AMX without enabling it every batched decode dies of
    a general protection fault (seen on this project's machines, where decoding without those
    buffers was also faster). With AMX advertised, the local backend loads without them."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return " amx_tile" in line or " amx_int8" in line
    except OSError:
        pass
    return False


def _shutting_down() -> APIError:
    return APIError(503, "The server is shutting down.", type="server_error", code="server_shutting_down")
