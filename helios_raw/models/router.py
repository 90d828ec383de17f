"""Several models behind one server: requests routed by ``model``, local models loaded on demand.

:class:`ModelRouter` is itself a :class:`~helios_raw.backends.base.Backend`, so every route (chat,
completions, embeddings, Responses, Messages) and the agent's model calls go through it. Routing:

- a request's ``model`` is matched against each model's id and aliases, then against what each
  always-on backend lists (a remote upstream's own models); with one model served, any other name
  is answered by it (the lenient default) unless ``strict``; with several, an unknown name is a
  404 ``model_not_found``.
- A loadable model (a local GGUF) is loaded by the first request that needs it; requests for a
  model that is loading wait for it (up to ``wait_timeout`` seconds, then a 503 with
  ``Retry-After``) and only ever get it once it has loaded completely. Loading runs beside
  everything else: other models keep serving and ``/health`` answers.
- At most ``max_loaded`` loadable models are loaded (or loading) at once: loading one more first
  unloads the least recently used model nobody is using or waiting for, and waits for that to
  finish; if every loaded model is in use, it waits for one to be released (again up to
  ``wait_timeout``). A model with a ``ttl`` is unloaded once idle that many seconds.
- A model that failed to load is tried again by the next request that names it.

Everything here runs on the event loop; there is no lock.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Awaitable, Callable, Optional

from ..backends.base import Backend, BackendError, ChunkStream
from ..cancel import Cancellation
from ..errors import APIError, model_loading, model_not_found, model_unavailable
from ..openai.completions import CompletionRequest
from ..openai.embeddings import EmbeddingRequest
from ..openai.schema import ChatRequest
from ..sink import ChunkSink
from .slot import Slot

log = logging.getLogger("helios_raw.models")

_STATE_OF_STATUS = {"loaded": "ready", "loading": "loading", "failed": "failed", "unloaded": "ready"}


class ModelRouter(Backend):
    """The models a server serves (see the module docstring); ``slots`` in the order listed."""

    def __init__(self, slots: list, max_loaded: int = 3, wait_timeout: float = 120.0, strict: bool = False) -> None:
        super().__init__()
        if not slots:
            raise ValueError("a ModelRouter needs at least one model")
        self.slots: list[Slot] = list(slots)
        self.max_loaded = max_loaded
        self.wait_timeout = wait_timeout
        self.strict = strict
        self._names: dict[str, Slot] = {}
        self._change: Optional[asyncio.Event] = None
        self._tasks: set = set()
        self._index()

    # -- what the server reports ---------------------------------------------------------------

    @property
    def model_id(self) -> str:  # the first model: what an agent over this router calls
        return self.slots[0].id

    @property
    def state(self) -> str:
        """``"failed"`` or ``"loading"`` while a model loaded at start-up (or an always-on
        backend) is; else ``"ready"``: models loaded on demand don't make the server unready."""
        states = {slot.backend.state if not slot.loadable else _STATE_OF_STATUS[slot.status]
                  for slot in self.slots if slot.preload or not slot.loadable}
        return "failed" if "failed" in states else "loading" if "loading" in states else "ready"

    @property
    def context_length(self) -> Optional[int]:
        return self.slots[0].context_length

    def health(self) -> dict:
        if len(self.slots) == 1:
            slot = self.slots[0]
            if not slot.loadable or slot.status == "loaded":
                return slot.backend.health()
            return {"model": slot.id, "backend_state": self.state, "model_status": slot.status}
        return {"model": self.model_id, "backend_state": self.state,
                "models": {slot.id: slot.status for slot in self.slots}}

    def model_ids(self) -> list[str]:
        ids: list[str] = []
        for slot in self.slots:
            ids.extend(i for i in ([slot.id] if slot.loadable else slot.backend.model_ids()) if i not in ids)
        return ids

    def served_id(self, model: str) -> str:
        slot = self._find(model) or self.slots[0]
        return slot.id if slot.loadable else slot.backend.served_id(model)

    async def list_models(self) -> list[dict]:
        """Every model, with ``status`` (loaded, loading, unloaded, failed) and ``context_length``."""
        listed: dict[str, dict] = {}
        for slot in self.slots:
            if slot.loadable:
                models = [slot.describe(self.created)]
            else:
                models = await slot.backend.list_models()
                for model in models:
                    model.setdefault("context_length", slot.backend.context_length)
                    model.setdefault("status", slot.status)
                    if model["id"] == slot.id and slot.aliases:
                        model.setdefault("aliases", list(slot.aliases))
            for model in models:
                listed.setdefault(model["id"], model)
        return list(listed.values())

    # -- routing -------------------------------------------------------------------------------

    def check_request(self, model: str, strict_models: bool) -> None:
        slot = self._find(model)
        if slot is None:
            if len(self.slots) == 1 and not (strict_models or self.strict):
                slot = self.slots[0]
            elif any(not s.loadable for s in self.slots):
                return  # an upstream's fresh model list may name it: decided when the request is served
            else:
                raise model_not_found(model)
        if not slot.loadable:
            slot.backend.check_request(model, False)

    def _find(self, model: str) -> Optional[Slot]:
        slot = self._names.get(model)
        if slot is not None:
            return slot
        for slot in self.slots:
            if not slot.loadable and model in slot.backend.model_ids():
                return slot
        return None

    async def _resolve(self, model: str) -> Slot:
        slot = self._find(model)
        if slot is None and len(self.slots) == 1 and not self.strict:
            return self.slots[0]
        if slot is None:
            always_on = [s.backend.list_models() for s in self.slots if not s.loadable]
            await asyncio.gather(*always_on, return_exceptions=True)  # refreshes a stale upstream list
            slot = self._find(model)
        if slot is None:
            raise model_not_found(model)
        return slot

    def _index(self) -> None:
        """Map ids and aliases to slots (an always-on backend's ids are what it lists)."""
        names: dict[str, Slot] = {}
        for slot in self.slots:
            for name in ((slot.id,) if slot.loadable else ()) + slot.aliases:
                if names.get(name, slot) is not slot:
                    raise BackendError(f"Two models are served as {name!r}; give them different ids.")
                names[name] = slot
        self._names = names

    # -- the contract --------------------------------------------------------------------------

    async def complete(self, request: ChatRequest, cancel: Cancellation) -> dict:
        return await self._call(request.model, cancel, lambda backend: backend.complete(request, cancel))

    async def open_stream(self, request: ChatRequest, cancel: Cancellation) -> ChunkStream:
        return await self._open(request.model, cancel, lambda backend: backend.open_stream(request, cancel))

    async def complete_text(self, request: CompletionRequest, cancel: Cancellation) -> dict:
        return await self._call(request.model, cancel, lambda backend: backend.complete_text(request, cancel))

    async def open_text_stream(self, request: CompletionRequest, cancel: Cancellation) -> ChunkStream:
        return await self._open(request.model, cancel, lambda backend: backend.open_text_stream(request, cancel))

    async def embed(self, request: EmbeddingRequest, cancel: Cancellation) -> dict:
        return await self._call(request.model, cancel, lambda backend: backend.embed(request, cancel))

    async def _call(self, model: str, cancel: Cancellation, call: Callable[[Backend], Awaitable]):
        slot = await self._resolve(model)
        backend = await self._acquire(slot, cancel)
        try:
            return await call(backend)
        finally:
            self._release(slot)

    async def _open(self, model: str, cancel: Cancellation, opener: Callable[[Backend], Awaitable]) -> ChunkStream:
        slot = await self._resolve(model)
        backend = await self._acquire(slot, cancel)
        try:
            stream = await opener(backend)
        except BaseException:
            self._release(slot)
            raise
        return HeldStream(stream, lambda: self._release(slot))

    # -- holding a model -----------------------------------------------------------------------

    async def _acquire(self, slot: Slot, cancel: Cancellation) -> Backend:
        """The slot's backend, loaded, held for the caller until :meth:`_release`."""
        if not slot.loadable:
            return slot.backend
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_timeout
        attempted = False
        slot.waiting += 1
        try:
            while slot.status != "loaded":
                if slot.loading is None:
                    if attempted and slot.status == "failed":
                        raise model_unavailable()
                    if attempted and slot.no_room:
                        raise models_busy(self.max_loaded)
                    attempted = True
                    self._begin_load(slot)
                remaining = deadline - loop.time()
                try:
                    if remaining <= 0:
                        raise asyncio.TimeoutError
                    await cancel.guard(asyncio.wait_for(asyncio.shield(slot.loading), remaining))
                except asyncio.TimeoutError:
                    busy = slot.no_room or (slot.loading is not None and not slot.has_room)
                    raise (models_busy(self.max_loaded) if busy else model_loading()) from None
        finally:
            slot.waiting -= 1
        slot.users += 1
        slot.last_used = time.monotonic()
        slot.cancel_expiry()
        return slot.backend

    def _release(self, slot: Slot) -> None:
        if not slot.loadable:
            return
        slot.users -= 1
        slot.last_used = time.monotonic()
        if slot.users == 0:
            self._idle(slot)
            self._changed()

    # -- loading and unloading -----------------------------------------------------------------

    def _begin_load(self, slot: Slot) -> None:
        slot.status = "loading"
        slot.no_room = False
        slot.loading = asyncio.ensure_future(self._load(slot))

    async def _load(self, slot: Slot) -> None:
        try:
            if slot.closing is not None:
                await asyncio.shield(slot.closing)
            if not await self._make_room(slot):
                slot.status, slot.no_room = "unloaded", True
                log.warning("model %s not loaded: %d models are loaded and all in use", slot.id, self.max_loaded)
                return
            slot.has_room = True
            backend, started = slot.backend, time.perf_counter()
            try:
                await backend.start()
                await backend.wait_ready()
            except asyncio.CancelledError:
                await _close_quietly(backend)
                raise
            except Exception as exc:
                slot.status, slot.error = "failed", exc
                slot.backend = slot.make()
                log.error("model %s failed to load: %s", slot.id, exc, exc_info=not isinstance(exc, BackendError))
                await _close_quietly(backend)
                return
            slot.status, slot.last_used = "loaded", time.monotonic()
            log.info("model %s ready (loaded on demand in %.2f s)", slot.id, time.perf_counter() - started)
            self._idle(slot)
        finally:
            slot.loading, slot.has_room = None, False
            self._changed()

    async def _make_room(self, slot: Slot) -> bool:
        """Unload idle models, least recently used first, until ``slot`` may load; False if no
        model became idle within ``wait_timeout``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_timeout
        while True:
            others = [s for s in self.slots if s is not slot and s.holds_memory]
            if len(others) < self.max_loaded:
                return True
            idle = [s for s in others if s.idle and s.loading is None and s.closing is None]
            if idle:
                await self._unload(min(idle, key=lambda s: s.last_used), f"to make room for {slot.id}")
                continue
            try:
                await asyncio.wait_for(self._changes().wait(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                return False

    async def _unload(self, slot: Slot, reason: str) -> None:
        if slot.status != "loaded":
            return
        slot.status = "unloaded"
        slot.cancel_expiry()
        backend, slot.backend = slot.backend, slot.make()
        slot.closing = asyncio.ensure_future(_close_quietly(backend))
        try:
            await asyncio.shield(slot.closing)
        finally:
            slot.closing = None
            self._changed()
        log.info("model %s unloaded (%s)", slot.id, reason)

    def _idle(self, slot: Slot) -> None:
        """Start the slot's idle timer, if it has a ``ttl`` and nobody holds or waits for it."""
        if slot.ttl is not None and slot.idle:
            slot.cancel_expiry()
            slot.expiry = asyncio.get_running_loop().call_later(slot.ttl, self._expire, slot)

    def _expire(self, slot: Slot) -> None:
        slot.expiry = None
        if slot.idle and slot.loading is None and slot.closing is None:
            self._background(self._unload(slot, f"idle for {slot.ttl:g} s"))

    def _background(self, work: Awaitable) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _changes(self) -> asyncio.Event:
        """Set the next time a model is released, loaded, failed or unloaded."""
        if self._change is None:
            self._change = asyncio.Event()
        return self._change

    def _changed(self) -> None:
        change, self._change = self._change, None
        if change is not None:
            change.set()

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start always-on backends, check every local model file (a BackendError names the first
        that is unusable), and begin loading the models marked ``preload``."""
        for slot in self.slots:
            if slot.loadable and slot.check is not None:
                slot.id = slot.check()
            elif not slot.loadable:
                await slot.backend.start()
        self._index()
        for slot in self.slots:
            if slot.loadable and slot.preload and slot.loading is None:
                self._begin_load(slot)
        if len(self.slots) > 1 or not self.slots[0].preload:
            log.info("serving %d model(s): %s", len(self.slots), ", ".join(
                f"{slot.id} ({'loading' if slot.loading else 'loaded on first use' if slot.loadable else 'always on'})"
                for slot in self.slots))

    async def wait_ready(self) -> None:
        """Return once the models loaded at start-up have loaded; raise the BackendError of the
        first that failed."""
        for slot in self.slots:
            if not slot.loadable:
                await slot.backend.wait_ready()
            elif slot.preload:
                while slot.loading is not None:
                    await asyncio.shield(slot.loading)
                if slot.status == "failed":
                    error = slot.error
                    raise error if isinstance(error, BackendError) else BackendError(
                        f"The model {slot.id!r} failed to load: {error}.")

    async def close(self) -> None:
        """Stop loads in progress and close every backend."""
        pending = list(self._tasks) + [s.loading for s in self.slots if s.loading is not None]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for slot in self.slots:
            slot.cancel_expiry()
            if slot.closing is not None:
                await asyncio.gather(slot.closing, return_exceptions=True)
            if not slot.loadable or slot.status == "loaded":
                await _close_quietly(slot.backend)
            if slot.loadable:
                slot.status = "unloaded"


class HeldStream(ChunkStream):
    """A stream that holds its model until it has run."""

    def __init__(self, stream: ChunkStream, release: Callable[[], None]) -> None:
        self.stream = stream
        self.release = release

    async def run(self, sink: ChunkSink) -> None:
        try:
            await self.stream.run(sink)
        finally:
            self.release()


def models_busy(max_loaded: int) -> APIError:
    """A 503 with ``Retry-After``: no model could be unloaded to make room for the one asked for."""
    return APIError(503, f"The server keeps at most {max_loaded} models loaded and all of them are in use; "
                         "try again in a moment.", type="server_error", code="models_busy",
                    headers=[("retry-after", "1")])


async def _close_quietly(backend: Backend) -> None:
    try:
        await backend.close()
    except Exception:  # a backend that fails to close is logged; the others still close
        log.exception("closing %s failed", backend.model_id)
