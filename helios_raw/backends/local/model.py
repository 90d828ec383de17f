"""A loaded llama.cpp model and context, and one generation on it.

The context is kept from one request to the next: a prompt is evaluated only from where it
differs from the tokens already there, and a prompt equal to them is sampled straight from the
logits kept from their evaluation (no model work at all). The last token of an answer is never
decoded, so the context holds exactly the tokens evaluated, and its logits remain those of the last.

Sampling when the request leaves a value out: ``temperature`` and ``max_tokens`` from
:class:`~helios_raw.config.LocalConfig`; ``top_k`` 40, ``top_p`` 0.95, ``min_p`` 0.05 (llama.cpp's
usual chat defaults); ``repeat_penalty`` 1.0 (off), ``presence_penalty`` and
``frequency_penalty`` 0; ``seed`` from the config, else random per request. The sampler chain is
the one llama-cpp-python builds, so a given seed gives the same text as ``Llama.generate``.
"""

from __future__ import annotations

import ctypes
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Optional

from ...cancel import Cancellation, ClientGone
from ...errors import APIError, bad_request, server_error
from .chat_formats import choose_chat_format
from .text import Emit, TextAssembler

log = logging.getLogger("helios_raw.local")

LLAMA_CPP_MISSING = "The local backend needs llama-cpp-python: pip install 'helios_raw[local]'."
DEFAULT_TOP_K = 40
DEFAULT_TOP_P = 0.95
DEFAULT_MIN_P = 0.05
DEFAULT_REPEAT_PENALTY = 1.0
#: Tokens the repetition penalties look back over (llama-cpp-python's ``last_n_tokens_size``).
PENALTY_LAST_N = 64


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


