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
from .entry import Entry

log = logging.getLogger("helios_raw.models")

_STATE_OF_STATUS = {"loaded": "ready", "loading": "loading", "failed": "failed", "unloaded": "ready"}


class ModelRouter(Backend):
    """The models a server serves (see the module docstring); ``entries`` in the order listed."""

    def __init__(self, entries: list, max_loaded: int = 3, wait_timeout: float = 120.0, strict: bool = False) -> None:
        super().__init__()
        if not entries:
            raise ValueError("a ModelRouter needs at least one model")
        self.entries: list[Entry] = list(entries)
        self.max_loaded = max_loaded
        self.wait_timeout = wait_timeout
        self.strict = strict
        self._names: dict[str, Entry] = {}
        self._change: Optional[asyncio.Event] = None
        self._tasks: set = set()
        self._starting = False  # from start() to wait_ready(): a start-up load's failure is raised, not logged
        self._index()

    # -- what the server reports ---------------------------------------------------------------

    @property
    def model_id(self) -> str:  # the first model: what an agent over this router calls
        return self.entries[0].id

    @property
    def state(self) -> str:
        """``"failed"`` or ``"loading"`` while a model loaded at start-up (or an always-on
        backend) is; else ``"ready"``: models loaded on demand don't make the server unready."""
        states = {entry.backend.state if not entry.loadable else _STATE_OF_STATUS[entry.status]
                  for entry in self.entries if entry.preload or not entry.loadable}
        return "failed" if "failed" in states else "loading" if "loading" in states else "ready"

    @property
    def context_length(self) -> Optional[int]:
        return self.entries[0].context_length

    def health(self) -> dict:
        if len(self.entries) == 1:
            entry = self.entries[0]
            if not entry.loadable or entry.status == "loaded":
                return entry.backend.health()
            return {"model": entry.id, "backend_state": self.state, "model_status": entry.status}
        return {"model": self.model_id, "backend_state": self.state,
                "models": {entry.id: entry.status for entry in self.entries}}

    def health_problem(self):
        """With one model, that model's; with several, only what makes the server unready."""
        if len(self.entries) == 1 and not self.entries[0].loadable:
            return self.entries[0].backend.health_problem()
        return super().health_problem()

    def model_ids(self) -> list[str]:
        ids: list[str] = []
        for entry in self.entries:
            ids.extend(i for i in ([entry.id] if entry.loadable else entry.backend.model_ids()) if i not in ids)
        return ids

    def use_metrics(self, metrics) -> None:
        super().use_metrics(metrics)
        for entry in self.entries:
            entry.metrics = metrics
            entry.backend.use_metrics(metrics)

    def relays(self, model: str) -> bool:
        entry = self._find(model) or self.entries[0]
        return entry.backend.relays(model)

    def served_id(self, model: str) -> str:
        entry = self._find(model) or self.entries[0]
        return entry.id if entry.loadable else entry.backend.served_id(model)

    async def list_models(self) -> list[dict]:
        """Every model, with ``status`` (loaded, loading, unloaded, failed) and ``context_length``."""
        listed: dict[str, dict] = {}
        for entry in self.entries:
            if entry.loadable:
                models = [entry.describe(self.created)]
            else:
                models = await entry.backend.list_models()
                for model in models:
                    model.setdefault("context_length", entry.backend.context_length)
                    model.setdefault("status", entry.status)
                    if model["id"] == entry.id and entry.aliases:
                        model.setdefault("aliases", list(entry.aliases))
            for model in models:
                listed.setdefault(model["id"], model)
        return list(listed.values())

    # -- routing -------------------------------------------------------------------------------

    def check_request(self, model: str, strict_models: bool) -> None:
        entry = self._find(model)
        if entry is None:
            if len(self.entries) == 1 and not (strict_models or self.strict):
                entry = self.entries[0]
            elif any(not s.loadable for s in self.entries):
                return  # an upstream's fresh model list may name it: decided when the request is served
            else:
                raise model_not_found(model)
        if not entry.loadable:
            entry.backend.check_request(model, False)

    def _find(self, model: str) -> Optional[Entry]:
        entry = self._names.get(model)
        if entry is not None:
            return entry
        for entry in self.entries:
            if not entry.loadable and model in entry.backend.model_ids():
                return entry
        return None

    async def _resolve(self, model: str) -> Entry:
        entry = self._find(model)
        if entry is None and len(self.entries) == 1 and not self.strict:
            return self.entries[0]
        if entry is None:
            always_on = [s.backend.list_models() for s in self.entries if not s.loadable]
            await asyncio.gather(*always_on, return_exceptions=True)  # refreshes a stale upstream list
            entry = self._find(model)
        if entry is None:
            raise model_not_found(model)
        return entry

    def _index(self) -> None:
        """Map ids and aliases to entries (an always-on backend's ids are what it lists)."""
        names: dict[str, Entry] = {}
        for entry in self.entries:
            for name in ((entry.id,) if entry.loadable else ()) + entry.aliases:
                if names.get(name, entry) is not entry:
                    raise BackendError(f"Two models are served as {name!r}; give them different ids.")
                names[name] = entry
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

    async def count_tokens(self, request: ChatRequest, cancel: Cancellation) -> Optional[int]:
        return await self._call(request.model, cancel, lambda backend: backend.count_tokens(request, cancel))

    async def _call(self, model: str, cancel: Cancellation, call: Callable[[Backend], Awaitable]):
        entry = await self._resolve(model)
        backend = await self._acquire(entry, cancel)
        try:
            return await call(backend)
        finally:
            self._release(entry)

    async def _open(self, model: str, cancel: Cancellation, opener: Callable[[Backend], Awaitable]) -> ChunkStream:
        entry = await self._resolve(model)
        backend = await self._acquire(entry, cancel)
        try:
            stream = await opener(backend)
        except BaseException:
            self._release(entry)
            raise
        return HeldStream(stream, lambda: self._release(entry))

    # -- holding a model -----------------------------------------------------------------------

    async def _acquire(self, entry: Entry, cancel: Cancellation) -> Backend:
        """The entry's backend, loaded, held for the caller until :meth:`_release`."""
        if not entry.loadable:
            return entry.backend
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_timeout
        attempted = False
        entry.waiting += 1
        try:
            while entry.status != "loaded":
                if entry.loading is None:
                    if attempted and entry.status == "failed":
                        raise model_unavailable()
                    if attempted and entry.no_room:
                        raise models_busy(self.max_loaded)
                    attempted = True
                    self._begin_load(entry)
                remaining = deadline - loop.time()
                try:
                    if remaining <= 0:
                        raise asyncio.TimeoutError
                    await cancel.guard(asyncio.wait_for(asyncio.shield(entry.loading), remaining))
                except asyncio.TimeoutError:
                    busy = entry.no_room or (entry.loading is not None and not entry.has_room)
                    raise (models_busy(self.max_loaded) if busy else model_loading()) from None
        finally:
            entry.waiting -= 1
        entry.users += 1
        entry.last_used = time.monotonic()
        entry.cancel_expiry()
        return entry.backend

    def _release(self, entry: Entry) -> None:
        if not entry.loadable:
            return
        entry.users -= 1
        entry.last_used = time.monotonic()
        if entry.users == 0:
            self._idle(entry)
            self._changed()

    # -- loading and unloading -----------------------------------------------------------------

    def _begin_load(self, entry: Entry) -> None:
        entry.status = "loading"
        entry.no_room = False
        entry.loading = asyncio.ensure_future(self._load(entry))

    async def _load(self, entry: Entry) -> None:
        try:
            if entry.closing is not None:
                await asyncio.shield(entry.closing)
            if not await self._make_room(entry):
                entry.status, entry.no_room = "unloaded", True
                log.warning("model %s not loaded: %d models are loaded and all in use", entry.id, self.max_loaded)
                return
            entry.has_room = True
            backend, started = entry.backend, time.perf_counter()
            try:
                await backend.start()
                await backend.wait_ready()
            except asyncio.CancelledError:
                await _close_quietly(backend)
                raise
            except Exception as exc:
                entry.status, entry.error = "failed", exc
                entry.renew()
                if not (entry.preload and self._starting):  # else wait_ready raises it, once
                    log.error("model %s failed to load: %s", entry.id, exc, exc_info=not isinstance(exc, BackendError))
                await _close_quietly(backend)
                return
            entry.status, entry.last_used = "loaded", time.monotonic()
            log.info("model %s ready (loaded in %.2f s)", entry.id, time.perf_counter() - started)
            self._idle(entry)
        finally:
            entry.loading, entry.has_room = None, False
            self._changed()

    async def _make_room(self, entry: Entry) -> bool:
        """Unload idle models, least recently used first, until ``entry`` may load; False if no
        model became idle within ``wait_timeout``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_timeout
        while True:
            others = [s for s in self.entries if s is not entry and s.holds_memory]
            if len(others) < self.max_loaded:
                return True
            idle = [s for s in others if s.idle and s.loading is None and s.closing is None]
            if idle:
                await self._unload(min(idle, key=lambda s: s.last_used), f"to make room for {entry.id}")
                continue
            try:
                await asyncio.wait_for(self._changes().wait(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                return False

    async def _unload(self, entry: Entry, reason: str) -> None:
        if entry.status != "loaded":
            return
        entry.status = "unloaded"
        entry.cancel_expiry()
        backend = entry.renew()
        entry.closing = asyncio.ensure_future(_close_quietly(backend))
        try:
            await asyncio.shield(entry.closing)
        finally:
            entry.closing = None
            self._changed()
        log.info("model %s unloaded (%s)", entry.id, reason)

    def _idle(self, entry: Entry) -> None:
        """Start the entry's idle timer, if it has a ``ttl`` and nobody holds or waits for it."""
        if entry.ttl is not None and entry.idle:
            entry.cancel_expiry()
            entry.expiry = asyncio.get_running_loop().call_later(entry.ttl, self._expire, entry)

    def _expire(self, entry: Entry) -> None:
        entry.expiry = None
        if entry.idle and entry.loading is None and entry.closing is None:
            self._background(self._unload(entry, f"idle for {entry.ttl:g} s"))

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
        self._starting = True
        for entry in self.entries:
            if entry.loadable and entry.check is not None:
                entry.id = entry.check()
            elif not entry.loadable:
                await entry.backend.start()
        self._index()
        for entry in self.entries:
            if entry.loadable and entry.preload and entry.loading is None:
                self._begin_load(entry)
        if len(self.entries) > 1 or not self.entries[0].preload:
            log.info("serving %d model(s): %s", len(self.entries), ", ".join(
                f"{entry.id} ({'loading' if entry.loading else 'loaded on first use' if entry.loadable else 'always on'})"
                for entry in self.entries))

    async def wait_ready(self) -> None:
        """Return once the models loaded at start-up have loaded; raise the BackendError of the
        first that failed (not logged besides: whoever waits reports it)."""
        try:
            await self._wait_started()
        finally:
            self._starting = False

    async def _wait_started(self) -> None:
        for entry in self.entries:
            if not entry.loadable:
                await entry.backend.wait_ready()
            elif entry.preload:
                while entry.loading is not None:
                    await asyncio.shield(entry.loading)
                if entry.status == "failed":
                    error = entry.error
                    raise error if isinstance(error, BackendError) else BackendError(
                        f"The model {entry.id!r} failed to load: {error}.")

    async def close(self) -> None:
        """Stop loads in progress and close every backend."""
        pending = list(self._tasks) + [s.loading for s in self.entries if s.loading is not None]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for entry in self.entries:
            entry.cancel_expiry()
            if entry.closing is not None:
                await asyncio.gather(entry.closing, return_exceptions=True)
            if not entry.loadable or entry.status == "loaded":
                await _close_quietly(entry.backend)
            if entry.loadable:
                entry.status = "unloaded"


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
