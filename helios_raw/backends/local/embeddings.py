"""Embeddings on the local model: a second llama.cpp context of the same weights, in embedding mode.

The context is made on first use (on the engine's thread, like every llama.cpp call) and freed
with the model. Inputs are packed into as few decodes as fit (``MAX_INPUTS`` sequences and the
context's tokens a decode), each input its own sequence. A vector is the model's own pooling of
its input (the GGUF's ``pooling_type``: mean, CLS, last token), or the mean of its tokens' states
when the model declares none (a chat model); every vector is scaled to length 1, as OpenAI's are.
"""

from __future__ import annotations

import math
from typing import Optional

from ...errors import bad_request
from ..base import BackendError
from .model import LoadedModel

#: Inputs evaluated together in one decode.
MAX_INPUTS = 32


class Embedder:
    """Turns token lists into unit vectors (engine thread only)."""

    def __init__(self, model: LoadedModel, context_size: int) -> None:
        self.model = model
        self.context_size = context_size
        self._ctx = None
        self._batch = None

    @property
    def size(self) -> int:
        """The length of a vector."""
        return self.model.n_embd

    def embed(self, inputs: list[list[int]]) -> list[list[float]]:
        """One unit vector per input, in order; a 400 for an input longer than the context."""
        for number, tokens in enumerate(inputs):
            if len(tokens) > self.context_size:
                raise bad_request(f"Input {number} takes {len(tokens)} tokens, but the model embeds at most "
                                  f"{self.context_size} at once; shorten it.", "input", "context_length_exceeded")
            if not tokens:
                raise bad_request(f"Input {number} holds no token.", "input")
        self._open()
        vectors: list[list[float]] = []
        group: list[list[int]] = []
        for tokens in inputs:
            if group and (len(group) == MAX_INPUTS or sum(map(len, group)) + len(tokens) > self.context_size):
                vectors += self._decode(group)
                group = []
            group.append(tokens)
        return vectors + self._decode(group)

    def close(self) -> None:
        if self._batch is not None:
            self.model.lc.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx is not None:
            self._ctx.close()
            self._ctx = None

    def _open(self) -> None:
        if self._ctx is not None:
            return
        from llama_cpp import _internals

        lc, model = self.model.lc, self.model
        params = lc.llama_context_default_params()
        params.embeddings = True
        params.n_ctx = params.n_batch = params.n_ubatch = self.context_size
        params.n_seq_max = MAX_INPUTS
        params.kv_unified = True
        params.n_threads = params.n_threads_batch = model.threads
        params.no_perf = True
        try:
            self._ctx = _internals.LlamaContext(model=model.weights, params=params, verbose=False)
        except (ValueError, RuntimeError):
            raise BackendError("llama.cpp could not make an embedding context for this model.") from None
        self._batch = lc.llama_batch_init(self.context_size, 0, 1)
        self.pooled = lc.llama_pooling_type(self._ctx.ctx) != lc.LLAMA_POOLING_TYPE_NONE
        if lc.llama_pooling_type(self._ctx.ctx) == lc.LLAMA_POOLING_TYPE_RANK:
            self.close()
            raise bad_request("This model ranks documents; it does not make embeddings.", "model",
                              "unsupported_model")

    def _decode(self, group: list[list[int]]) -> list[list[float]]:
        lc, ctx, batch = self.model.lc, self._ctx.ctx, self._batch
        lc.llama_memory_clear(lc.llama_get_memory(ctx), True)
        row = 0
        for seq, tokens in enumerate(group):
            for position, token in enumerate(tokens):
                batch.token[row], batch.pos[row], batch.n_seq_id[row] = token, position, 1
                batch.seq_id[row][0], batch.logits[row] = seq, True
                row += 1
        batch.n_tokens = row
        if lc.llama_decode(ctx, batch) != 0:
            raise BackendError("llama.cpp failed to embed the input.")
        size, np = self.size, self.model.np
        vectors, row = [], 0
        for seq, tokens in enumerate(group):
            if self.pooled:
                vector = np.ctypeslib.as_array(lc.llama_get_embeddings_seq(ctx, seq), shape=(size,)).astype("float64")
            else:
                vector = sum(np.ctypeslib.as_array(lc.llama_get_embeddings_ith(ctx, row + i), shape=(size,))
                             .astype("float64") for i in range(len(tokens))) / len(tokens)
            row += len(tokens)
            vectors.append(_unit(vector.tolist()))
        return vectors


def _unit(vector: list[float]) -> list[float]:
    norm = math.sqrt(math.fsum(x * x for x in vector))
    return [x / norm for x in vector] if norm > 0 else vector


def check_dimensions(dimensions: Optional[int], size: int) -> None:
    """A 400 unless ``dimensions`` is absent or the model's own vector length."""
    if dimensions is not None and dimensions != size:
        raise bad_request(f"This model's embeddings have {size} dimensions; it can't make {dimensions}.",
                          "dimensions", "unsupported_value")
