"""Continuous batching: one thread decodes every active request's next token in one batch.

The engine's thread owns the llama.cpp context (it loads the model, decodes, samples and frees
it; nothing else touches the context). Each step it:

1. admits the sequences the event loop handed over into free slots: the free slot whose cached
   tokens share the longest prefix with the prompt, if that prefix is at least ``SIMILARITY`` of
   the prompt (else the least recently used free slot, whose cache is worth least; among slots
   sharing as much, the one with least to discard, so one holding exactly the prompt), cut back to
   that prefix, so a conversation's next turn evaluates only what is new while an unrelated
   request sharing only the chat template's first tokens leaves it alone; a slot that holds
   exactly the prompt, the logits of its last token kept, lets it be sampled with no decode;
2. drops the sequences whose client left, and those paused past ``stall_timeout`` while other
   requests wait for a slot;
3. builds one batch: the pending token of every generating sequence that is not paused, then
   prompt tokens of admitted sequences, at most ``chunk`` of them (chunked prefill: a long prompt
   arriving delays the running streams by about one step);
4. decodes it, and samples each sequence that has logits with its own sampler chain.

A sequence whose client reads slowly is paused in place: it keeps its slot and its cache, is left
out of batches, and resumes when the client has drained its output; the others go on. Chunks and
endings go to the event loop through the :class:`~.outbox.Outbox`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from typing import Callable, Optional, TypeVar

from ...errors import server_error, shutting_down
from .model import LoadedModel
from .outbox import Outbox
from .sequence import Sequence

log = logging.getLogger("helios_raw.local")
T = TypeVar("T")

#: Seconds an idle engine with paused sequences waits before looking at them again.
POLL_INTERVAL = 0.05
#: The share of a prompt a slot's cache must hold for the prompt to go to that slot.
SIMILARITY = 0.5
class Engine:
    """Runs sequences in ``slots`` parallel slots of one context (see the module docstring).

    ``load()`` makes the :class:`~.model.LoadedModel` on the engine's thread. ``waiting()`` tells
    how many requests wait for a slot (a stalled sequence gives way only to them).
    """

    def __init__(self, load: Callable[[], LoadedModel], slots: int, chunk: int, stall_timeout: float,
                 waiting: Callable[[], int], on_end: Callable[[Sequence], None]) -> None:
        self.slots = slots
        self.chunk = chunk
        self.stall_timeout = stall_timeout
        self.model: Optional[LoadedModel] = None
        self._load = load
        self._waiting = waiting
        self._on_end = on_end
        self._wake = threading.Condition()
        self._incoming: deque[Sequence] = deque()
        self._calls: deque = deque()  # (work, future): run on the thread between steps
        self._stopping = False
        self._thread: Optional[threading.Thread] = None
        self._running: list[Optional[Sequence]] = [None] * slots
        self._cached: list[list[int]] = [[] for _ in range(slots)]
        #: Per slot, the logits computed for the last token of its cache, while they still are.
        self._kept: list = [None] * slots
        self._last_used = [0.0] * slots
        self._prefilling: deque[Sequence] = deque()
        self.outbox: Optional[Outbox] = None
        #: Since start-up: batches decoded, tokens generated, prompt tokens found in a slot's cache.
        self.steps = 0
        self.generated_tokens = 0
        self.reused_tokens = 0

    @property
    def busy(self) -> int:
        """Slots holding a sequence."""
        return sum(1 for s in self._running if s is not None)

    def cache_usage(self) -> float:
        """The share of the KV cache held by running sequences, from 0 to 1 (the caches of idle
        slots are kept for reuse but given up to whatever comes)."""
        if self.model is None:
            return 0.0
        used = sum(len(self._cached[s.slot]) for s in list(self._running) if s is not None)
        return used / (self.model.n_ctx * self.slots)

    # -- event loop --------------------------------------------------------------------------

    def start(self) -> asyncio.Future:
        """Start the thread; the future resolves once the model is loaded (or fails to)."""
        loop = asyncio.get_running_loop()
        ready = loop.create_future()
        self.outbox = Outbox(loop, self._on_end, self.wake)
        self._thread = threading.Thread(target=self._run, args=(loop, ready), name="helios-engine", daemon=True)
        self._thread.start()
        return ready

    def submit(self, sequence: Sequence) -> None:
        """Hand over a sequence that holds a slot's place (see :class:`~.admission.Admission`)."""
        sequence.outbox = self.outbox
        with self._wake:
            self._incoming.append(sequence)
            self._wake.notify()

    def call(self, work: Callable[[LoadedModel], T]) -> "asyncio.Future[T]":
        """Run ``work(model)`` on the engine's thread between two steps; a future of its result."""
        future = self.outbox.loop.create_future()
        with self._wake:
            self._calls.append((work, future))
            self._wake.notify()
        return future

    def wake(self) -> None:
        with self._wake:
            self._wake.notify()

    async def close(self) -> None:
        """End every sequence (as shut down), free the model on the engine's thread, wait for it."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join)

    # -- engine thread -----------------------------------------------------------------------

    def _run(self, loop: asyncio.AbstractEventLoop, ready: asyncio.Future) -> None:
        try:
            self.model = self._load()
            self._warm_up()
        except BaseException as exc:  # reported to the loop; the thread ends
            loop.call_soon_threadsafe(_settle, ready, None, exc)
            return
        loop.call_soon_threadsafe(_settle, ready, self.model, None)
        lc, batch = self.model.lc, None
        try:
            batch = lc.llama_batch_init(self.model.batch_size, 0, 1)
            while self._next_work():
                self._step(batch)
        except Exception:  # a bug: every sequence gets an error rather than a hang
            log.exception("the engine failed")
            self._end_all(error=True)
        finally:
            self._end_all()
            if batch is not None:
                lc.llama_batch_free(batch)
            self.model.close()

    def _next_work(self) -> bool:
        """Wait until a step can run, running calls meanwhile; False once stopping."""
        while True:
            with self._wake:
                if self._stopping:
                    return False
                while self._incoming:
                    self._admit(self._incoming.popleft())
                calls, self._calls = self._calls, deque()
                if not calls:
                    if self._runnable():
                        return True
                    self._wake.wait(POLL_INTERVAL if any(self._running) else None)
                    self._drop_finished()
                    continue
            for work, future in calls:  # outside the lock: the loop may hand over work meanwhile
                try:
                    result, error = work(self.model), None
                except Exception as exc:  # an APIError for its caller, or a failure to report
                    result, error = None, exc
                self.outbox.loop.call_soon_threadsafe(_settle, future, result, error)

    def _runnable(self) -> bool:
        self._drop_finished()
        return any(s is not None and not s.held for s in self._running)

    def _admit(self, sequence: Sequence) -> None:
        prompt = sequence.job.prompt
        free = [i for i, s in enumerate(self._running) if s is None]
        shared = {i: _shared_prefix(self._cached[i], prompt) for i in free}
        slot = max(free, key=lambda i: (shared[i], -len(self._cached[i])))
        if shared[slot] < SIMILARITY * len(prompt):
            slot = min(free, key=lambda i: self._last_used[i])
        sequence.slot = slot
        sequence.admitted_step = self.steps
        sequence.metrics.started()
        self._running[slot] = sequence
        if (self._kept[slot] is not None and sequence.prompt_logprobs is None
                and shared[slot] == len(prompt) == len(self._cached[slot])):
            # the prompt is the slot's cache, whose last logits are kept: nothing to evaluate
            sequence.kept = self._kept[slot]
            sequence.evaluated = sequence.outcome.cached_tokens = len(prompt)
            self.reused_tokens += len(prompt)
            return
        self._kept[slot] = None
        # a prompt whose every token's logprob is asked for is evaluated whole
        reuse = 0 if sequence.prompt_logprobs is not None else min(shared[slot], len(prompt) - 1)
        lc, model = self.model.lc, self.model
        if not lc.llama_memory_seq_rm(model.memory, slot, reuse, -1):
            lc.llama_memory_seq_rm(model.memory, slot, 0, -1)
            reuse = 0
        del self._cached[slot][reuse:]
        sequence.evaluated = sequence.outcome.cached_tokens = reuse
        self.reused_tokens += reuse
        self._prefilling.append(sequence)

    def _drop_finished(self) -> None:
        """End the sequences whose client left, and stalled ones another request waits for."""
        now = time.monotonic()
        for sequence in self._running:
            if sequence is None:
                continue
            if sequence.cancel.is_set():
                sequence.outcome.cancelled = "client"
                self._finish(sequence)
            elif sequence.paused and now - sequence.paused_since > self.stall_timeout and self._waiting() > 0:
                sequence.outcome.cancelled = "stalled"
                self._finish(sequence)

    def _step(self, batch) -> None:
        model, lc = self.model, self.model.lc
        for sequence in self._running:
            if sequence is not None and sequence.kept is not None and not sequence.held:
                kept, sequence.kept = sequence.kept, None
                self._sampled(sequence, lambda s: model.sample(s.chain, kept), kept)
        rows: list[tuple[Sequence, int]] = []  # (sequence, batch row whose logits it samples)
        n = 0
        for sequence in self._running:
            if sequence is not None and not sequence.held and not sequence.prefilling and sequence.token >= 0:
                _put(batch, n, sequence.token, len(self._cached[sequence.slot]), sequence.slot, True)
                rows.append((sequence, n))
                n += 1
        budget = self.chunk
        prefills = []
        for sequence in self._prefilling:
            if budget <= 0:
                break
            prompt, start = sequence.job.prompt, sequence.evaluated
            end = min(len(prompt), start + budget)
            every = sequence.prompt_logprobs is not None
            for position in range(start, end):
                _put(batch, n, prompt[position], position, sequence.slot, every or position == len(prompt) - 1)
                n += 1
            if end == len(prompt):
                rows.append((sequence, n - 1))
            prefills.append((sequence, start, end, n - (end - start)))
            budget -= end - start
        if n == 0:
            return
        batch.n_tokens = n
        self.steps += 1
        status = lc.llama_decode(model.ctx.ctx, batch)
        if status != 0:
            self._fail([s for s, _ in rows] + [s for s, *_ in prefills], f"llama_decode returned {status}")
            return
        for sequence, start, end, first_row in prefills:
            if sequence.prompt_logprobs is not None:
                _prompt_logprobs(model, sequence, start, end, first_row)
            self._cached[sequence.slot].extend(sequence.job.prompt[start:end])
            sequence.evaluated = end
            if end == len(sequence.job.prompt):
                self._prefilling.remove(sequence)
                self._kept[sequence.slot] = model.row_logits(first_row + end - start - 1).copy()
        for sequence, row in rows:
            if sequence.token >= 0:
                self._cached[sequence.slot].append(sequence.token)
                self._kept[sequence.slot] = None
            self._sampled(sequence, lambda s: lc.llama_sampler_sample(s.chain, model.ctx.ctx, row), row)

    def _sampled(self, sequence: Sequence, sample, source) -> None:
        """Sample ``sequence``'s next token with ``sample(sequence)`` (logprobs read from ``source``,
        a batch row or kept logits) and hand it over; end the sequence if it is done."""
        model = self.model
        if sequence.first_token_step < 0:
            sequence.first_token_step = self.steps
        try:
            token = sample(sequence)
            self.generated_tokens += 1
            going = sequence.accept(model, token, source)
        except Exception:
            log.exception("sampling failed")
            sequence.outcome.error = server_error("The model failed while generating; see the server log.")
            going = False
        if going and len(self._cached[sequence.slot]) >= model.n_ctx:
            sequence.end("length")
            going = False
        if not going:
            self._finish(sequence)

    def _fail(self, sequences: list[Sequence], reason: str) -> None:
        log.error("decoding a batch failed (%s); its %d requests end with an error", reason, len(sequences))
        for sequence in sequences:
            sequence.outcome.error = server_error("The model failed while generating; see the server log.")
            self._forget(sequence.slot)
            self._finish(sequence)

    def _forget(self, slot: int) -> None:
        self.model.lc.llama_memory_seq_rm(self.model.memory, slot, 0, -1)
        self._cached[slot].clear()
        self._kept[slot] = None

    def _finish(self, sequence: Sequence) -> None:
        """Free the sequence's slot and sampler; its end goes to the loop."""
        if self._running[sequence.slot] is sequence:
            self._running[sequence.slot] = None
            self._last_used[sequence.slot] = time.monotonic()
        if sequence in self._prefilling:
            self._prefilling.remove(sequence)
            self._forget(sequence.slot)  # a half-evaluated prompt is of no use to anyone
        if sequence.chain is not None:
            self.model.lc.llama_sampler_free(sequence.chain)
            sequence.chain = None
        self.outbox.end(sequence)

    def _end_all(self, error: bool = False) -> None:
        with self._wake:
            waiting = list(self._incoming)
            self._incoming.clear()
            calls, self._calls = self._calls, deque()
        for _, future in calls:
            self.outbox.loop.call_soon_threadsafe(_settle, future, None, shutting_down())
        for sequence in [s for s in self._running if s is not None] + waiting:
            if error:
                sequence.outcome.error = server_error("The model failed while generating; see the server log.")
            else:
                sequence.outcome.cancelled = sequence.outcome.cancelled or "shutdown"
            if sequence.slot < 0:
                if sequence.chain is not None:
                    self.model.lc.llama_sampler_free(sequence.chain)
                    sequence.chain = None
                self.outbox.end(sequence)
            else:
                self._finish(sequence)

    def _warm_up(self) -> None:
        """Decode a few tokens and forget them, so the first request does not pay for llama.cpp
        setting up its compute graphs."""
        model, lc = self.model, self.model.lc
        batch = lc.llama_batch_init(8, 0, 1)
        try:
            for i in range(8):
                _put(batch, i, model.bos if model.bos >= 0 else 0, i, 0, i == 7)
            batch.n_tokens = 8
            lc.llama_decode(model.ctx.ctx, batch)
        finally:
            lc.llama_batch_free(batch)
        lc.llama_memory_seq_rm(model.memory, 0, 0, -1)


def _put(batch, row: int, token: int, position: int, slot: int, logits: bool) -> None:
    batch.token[row] = token
    batch.pos[row] = position
    batch.n_seq_id[row] = 1
    batch.seq_id[row][0] = slot
    batch.logits[row] = logits


def _prompt_logprobs(model: LoadedModel, sequence: Sequence, start: int, end: int, first_row: int) -> None:
    """Read the logprob entries of prompt tokens ``start + 1`` to ``end`` (each from the row of
    the token before it); the first prompt token has none."""
    prompt, entries = sequence.job.prompt, sequence.prompt_entries
    if start == 0:
        entries.append(None)
    for position in range(start, min(end, len(prompt) - 1)):
        token = prompt[position + 1]
        entries.append(model.logprob(first_row + position - start, token, model.piece(token)[0],
                                     sequence.prompt_logprobs))


def _shared_prefix(cached: list[int], prompt: list[int]) -> int:
    n = min(len(cached), len(prompt))
    i = 0
    while i < n and cached[i] == prompt[i]:
        i += 1
    return i


def _settle(future: asyncio.Future, result, error: Optional[BaseException]) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
