"""A GGUF model loaded by llama.cpp, and one context holding a sequence per slot.

Loading and the context's compute happen on the engine's thread (see :mod:`.engine`); what may
run on any thread is marked. The context is made for continuous batching:

- ``slots`` sequences, each with its own KV cache of ``context_size`` cells (llama.cpp's
  non-unified cache: ``n_ctx = context_size * slots``, split evenly), so one request's context
  never depends on what the others hold, and a sequence always occupies the same cells;
- flash attention (``flash_attention``, on by default): masked cells are skipped rather than
  summed as zeros, which is what makes a sequence's logits independent of where its cells lie
  and of how much the cache held before (measured: bit-identical logits whether a prompt is
  evaluated whole, in chunks, re-entered from a cached prefix, or beside other sequences);
- physical batches of ``prefill_chunk + slots`` tokens: one step's generated tokens plus one
  chunk of a prompt.

A prompt is tokenised with llama.cpp's special-token parsing, so the chat template's control
tokens count as such; message content that itself spells a control token (``<|im_end|>`` in a
user's text) is tokenised as plain text, so a user cannot close their turn and forge another.
"""

from __future__ import annotations

import ctypes
import logging
import math
import re
from typing import TYPE_CHECKING, Optional

from ...config import LocalConfig
from ..base import BackendError
from .chat_formats import ChatFormat, choose_chat_format
from .platform import cpu_advertises_amx, physical_cores

if TYPE_CHECKING:  # pragma: no cover
    from .embeddings import Embedder

log = logging.getLogger("helios_raw.local")
llama_log = logging.getLogger("helios_raw.llama")

LLAMA_CPP_MISSING = "The local backend needs llama-cpp-python: pip install 'helios_raw[local]'."
#: Characters of one llama.cpp log line kept (a rejected grammar is logged whole otherwise).
LOG_LINE_LIMIT = 300


class LoadedModel:
    """A llama.cpp model and its batched context (see the module docstring)."""

    def __init__(self, path: str, config: LocalConfig, slots: int, chunk: int) -> None:
        import numpy  # llama-cpp-python's own dependency

        try:
            import llama_cpp
            from llama_cpp import _internals
        except ImportError:
            raise BackendError(LLAMA_CPP_MISSING) from None
        _route_llama_logs(llama_cpp)
        self.np = numpy
        self.lc = llama_cpp
        self.threads = config.n_threads or physical_cores()
        model_params = llama_cpp.llama_model_default_params()
        model_params.n_gpu_layers = config.n_gpu_layers
        model_params.use_extra_bufts = not cpu_advertises_amx()
        try:
            self.weights = _internals.LlamaModel(path_model=path, params=model_params, verbose=False)
        except (ValueError, RuntimeError):
            raise BackendError(
                f"llama.cpp could not load {path}: the file may be truncated or corrupt, or made for a "
                "model architecture this llama.cpp build does not know.") from None
        try:
            self.ctx = self._context(llama_cpp, _internals, config, slots, chunk)
            self._describe_vocabulary(config)
        except BaseException:
            self.weights.close()
            raise
        self.slots = slots
        self.batch_size = chunk + slots
        self.n_embd = self.weights.n_embd()
        self._embedder: Optional["Embedder"] = None
        self._candidates = None  # llama_token_data for sampling from kept logits, made on first use

    def _context(self, lc, internals, config: LocalConfig, slots: int, chunk: int):
        params = lc.llama_context_default_params()
        params.n_ctx = config.context_size * slots
        params.n_seq_max = slots
        params.kv_unified = False
        params.n_batch = params.n_ubatch = chunk + slots
        params.n_threads = params.n_threads_batch = self.threads
        params.flash_attn_type = (lc.LLAMA_FLASH_ATTN_TYPE_ENABLED if config.flash_attention
                                  else lc.LLAMA_FLASH_ATTN_TYPE_DISABLED)
        params.no_perf = True
        try:
            context = internals.LlamaContext(model=self.weights, params=params, verbose=False)
        except (ValueError, RuntimeError):
            raise BackendError(f"llama.cpp could not make a context of {config.context_size} tokens for "
                               f"{slots} slots; lower context_size or parallel.") from None
        self.memory = lc.llama_get_memory(context.ctx)
        self.n_ctx = min(config.context_size, lc.llama_n_ctx_seq(context.ctx))
        return context

    def _describe_vocabulary(self, config: LocalConfig) -> None:
        model, lc = self.weights, self.lc
        self.vocab = model.vocab
        self.n_vocab = model.n_vocab()
        self.bos = model.token_bos()
        self.add_bos = bool(model.add_bos_token()) and self.bos >= 0
        eos = model.token_eos()
        self.format: ChatFormat = choose_chat_format(
            model.metadata(), config.chat_format, self._one_token,
            bos_token=model.token_get_text(self.bos) if self.bos >= 0 else "",
            eos_token=model.token_get_text(eos) if eos >= 0 else "")
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
        special = lc.LLAMA_TOKEN_ATTR_CONTROL | lc.LLAMA_TOKEN_ATTR_USER_DEFINED
        texts = {model.token_get_text(t) for t in range(self.n_vocab)
                 if lc.llama_vocab_get_attr(self.vocab, t) & special}
        texts.discard("")
        self._special = re.compile("|".join(re.escape(t) for t in sorted(texts, key=len, reverse=True))) \
            if texts else None
        self._pieces: dict[int, tuple[bytes, bool]] = {}
        self._piece_buffer = ctypes.create_string_buffer(256)

    def embedder(self) -> "Embedder":
        """The embedding context of these weights, made on first use (engine thread)."""
        if self._embedder is None:
            from .embeddings import Embedder

            self._embedder = Embedder(self, self.n_ctx)
        return self._embedder

    def close(self) -> None:
        """Free the contexts and the model (engine thread, once nothing decodes)."""
        if self._embedder is not None:
            self._embedder.close()
        self.ctx.close()
        self.weights.close()

    # -- any thread --------------------------------------------------------------------------

    def prompt_tokens(self, messages: list[dict], tools: Optional[list[dict]]) -> list[int]:
        """The prompt for ``messages`` (and ``tools``) in the model's chat format, as tokens."""
        text = self.format.render(messages, tools)
        tokens: list[int] = []
        start = 0
        for span_start, span_end in self._user_spans(text, messages):
            tokens += self._tokenize(text[start:span_start], special=True)
            tokens += self._tokenize(text[span_start:span_end], special=False)
            start = span_end
        tokens += self._tokenize(text[start:], special=True)
        if self.add_bos and (not tokens or tokens[0] != self.bos):
            tokens.insert(0, self.bos)
        return tokens

    def raw_tokens(self, text: str) -> list[int]:
        """A raw prompt as the model reads text: its control tokens recognised, a BOS first when
        the model wants one."""
        tokens = self._tokenize(text, special=True)
        if self.add_bos and (not tokens or tokens[0] != self.bos):
            tokens.insert(0, self.bos)
        return tokens

    def _user_spans(self, text: str, messages: list[dict]) -> list[tuple[int, int]]:
        """Where ``text`` holds message content that spells a control token, in order."""
        if self._special is None:
            return []
        spans, at = [], 0
        for message in messages:
            content = message.get("content")
            parts = [content] if isinstance(content, str) else [
                p.get("text", "") for p in content or () if isinstance(p, dict)]
            for part in parts:
                if not part or self._special.search(part) is None:
                    continue
                found = text.find(part, at)
                if found < 0:  # the template changed the text: defuse what it holds instead
                    found = text.find(part.strip(), at)
                    part = part.strip()
                if found < 0:
                    continue
                spans.append((found, found + len(part)))
                at = found + len(part)
        return spans

    def _tokenize(self, text: str, special: bool) -> list[int]:
        return self.weights.tokenize(text.encode("utf-8"), False, special) if text else []

    def _one_token(self, text: str) -> Optional[int]:
        """The id of ``text`` if the vocabulary holds it as a single token."""
        if not text:
            return None
        tokens = self._tokenize(text, special=True)
        return tokens[0] if len(tokens) == 1 else None

    def piece(self, token: int) -> tuple[bytes, bool]:
        """(the token's text as bytes, whether it ends the turn); cached."""
        found = self._pieces.get(token)
        if found is not None:
            return found
        lc = self.lc
        buffer = self._piece_buffer
        n = lc.llama_token_to_piece(self.vocab, token, buffer, len(buffer), 0, False)
        if n < 0:
            buffer = ctypes.create_string_buffer(-n)
            n = lc.llama_token_to_piece(self.vocab, token, buffer, len(buffer), 0, False)
        info = (buffer.raw[:n], bool(lc.llama_vocab_is_eog(self.vocab, token)) or token in self.end_tokens)
        self._pieces[token] = info
        return info

    # -- engine thread -----------------------------------------------------------------------

    def row_logits(self, row: int):
        """The logits the last decode computed for batch row ``row`` (a view, valid until the next)."""
        return self.np.ctypeslib.as_array(self.lc.llama_get_logits_ith(self.ctx.ctx, row), shape=(self.n_vocab,))

    def sample(self, chain, logits) -> int:
        """Sample with ``chain`` from ``logits`` kept from an earlier decode, as llama.cpp's
        ``llama_sampler_sample`` does from a batch row: apply the chain, take its choice, accept it."""
        lc, np = self.lc, self.np
        if self._candidates is None:
            self._candidates = (lc.llama_token_data * self.n_vocab)()
            self._candidate_fields = np.ctypeslib.as_array(self._candidates)
        fields = self._candidate_fields
        fields["id"] = np.arange(self.n_vocab, dtype=np.int32)
        fields["logit"] = logits
        fields["p"] = 0.0
        array = lc.llama_token_data_array(self._candidates, self.n_vocab, -1, False)
        lc.llama_sampler_apply(chain, ctypes.byref(array))
        token = int(self._candidates[array.selected].id)
        lc.llama_sampler_accept(chain, token)
        return token

    def logprob(self, source, token: int, piece: bytes, top: int) -> dict:
        """OpenAI's logprob entry for ``token``, sampled from batch row ``source`` (an int) or
        from logits kept from an earlier decode."""
        np = self.np
        logits = self.row_logits(source) if isinstance(source, int) else source
        peak = float(logits.max())
        log_total = peak + math.log(float(np.exp(logits - peak).sum()))
        entry = {"token": token_text(piece), "logprob": float(logits[token]) - log_total,
                 "bytes": list(piece), "top_logprobs": []}
        if top:
            best = np.argpartition(-logits, min(top, self.n_vocab - 1))[:top]
            for other in sorted(best.tolist(), key=lambda t: -logits[t]):
                other_piece = self.piece(other)[0]
                entry["top_logprobs"].append({"token": token_text(other_piece),
                                              "logprob": float(logits[other]) - log_total,
                                              "bytes": list(other_piece)})
        return entry


def token_text(piece: bytes) -> str:
    """A token's text for a logprob entry: the text itself, or, for bytes that are not whole
    UTF-8 characters, ``bytes:\\xNN...`` as OpenAI writes them."""
    try:
        return piece.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in piece)


_LOG_CALLBACK = None


def _route_llama_logs(lc) -> None:
    """Send llama.cpp's own log lines (warnings and errors only) to the ``helios_raw.llama``
    logger, each cut to ``LOG_LINE_LIMIT`` characters."""
    global _LOG_CALLBACK
    if _LOG_CALLBACK is not None:
        return
    levels = {3: logging.WARNING, 4: logging.ERROR}  # ggml's WARN and ERROR; INFO and DEBUG are dropped

    def forward(level: int, text: bytes, _data) -> None:
        python_level = levels.get(level)
        if python_level is not None and llama_log.isEnabledFor(python_level):
            line = text.decode("utf-8", "replace").strip()
            if len(line) > LOG_LINE_LIMIT:
                line = f"{line[:LOG_LINE_LIMIT]}... ({len(line)} characters)"
            if line:
                llama_log.log(python_level, "%s", line)

    _LOG_CALLBACK = lc.llama_log_callback(forward)
    lc.llama_log_set(_LOG_CALLBACK, ctypes.c_void_p(0))
