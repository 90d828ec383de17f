"""One served model: its backend, and for a model loaded on demand, where its loading stands.

A *loadable* entry (a local GGUF) makes a fresh backend with ``make()`` for each load: ``start()``
plus ``wait_ready()`` load it, ``close()`` unloads it. Its ``status`` is ``"unloaded"``,
``"loading"``, ``"loaded"`` or ``"failed"``. Requests hold it while they use it (``users``) or wait
for it (``waiting``); only an entry nobody holds or waits for may be unloaded.

Any other entry (a remote upstream, an agent, a backend an embedding program passes) has one
backend for the server's lifetime, started and closed with the server; its status is the
backend's own.
"""

from __future__ import annotations

import asyncio
import time
from typing import Callable, Optional

from ..backends.base import Backend


class Entry:
    """One model of the registry (see the module docstring)."""

    def __init__(self, model_id: str, make: Callable[[], Backend], *, aliases: tuple = (), loadable: bool = False,
                 ttl: Optional[float] = None, preload: bool = False, context_size: Optional[int] = None,
                 check: Optional[Callable[[], str]] = None) -> None:
        self.id = model_id
        self.aliases = tuple(aliases)
        self.make = make
        #: Where its backends record what they do (the server's, once it has handed them out).
        self.metrics = None
        self.backend = make()
        self.loadable = loadable
        self.ttl = ttl
        self.preload = preload
        #: The context length configured, for a loadable entry whose backend doesn't say.
        self.context_size = context_size
        #: Checks the model can be loaded (a file is there) and returns its id; raises BackendError.
        self.check = check
        self.users = 0
        self.waiting = 0
        self.last_used = time.monotonic()
        self._status = "unloaded"
        #: The load in progress (it has room once ``has_room``), and the unload in progress.
        self.loading: Optional[asyncio.Future] = None
        self.has_room = False
        self.closing: Optional[asyncio.Future] = None
        self.expiry: Optional[asyncio.TimerHandle] = None
        #: Why the last load failed; whether the last load found no room to load.
        self.error: Optional[Exception] = None
        self.no_room = False

    @property
    def status(self) -> str:
        return self._status if self.loadable else self.backend.status

    @status.setter
    def status(self, value: str) -> None:
        self._status = value

    @property
    def idle(self) -> bool:
        """Loaded, and nobody holds or waits for it."""
        return self.status == "loaded" and self.users == 0 and self.waiting == 0

    @property
    def holds_memory(self) -> bool:
        """Counts against ``max_loaded_models``: loaded, loading with room, or still unloading."""
        return self.loadable and (self._status == "loaded" or (self.loading is not None and self.has_room)
                                  or self.closing is not None)

    @property
    def context_length(self) -> Optional[int]:
        length = self.backend.context_length
        return length if length is not None else self.context_size

    def describe(self, created: int) -> dict:
        """The ``/v1/models`` object of a loadable entry."""
        return {"id": self.id, "object": "model", "created": created, "owned_by": self.backend.owned_by,
                "context_length": self.context_length, "status": self.status, "aliases": list(self.aliases)}

    def renew(self) -> Backend:
        """Replace the backend with a fresh one (the old one is the caller's to close); the old."""
        old, self.backend = self.backend, self.make()
        if self.metrics is not None:
            self.backend.use_metrics(self.metrics)
        return old

    def cancel_expiry(self) -> None:
        if self.expiry is not None:
            self.expiry.cancel()
            self.expiry = None
