"""The upstream's model list (``GET <base_url>/models``), asked at start-up and cached.

The list is asked again once it is older than ``models_refresh`` seconds, in the background when
someone needs it next (one request at a time): until the answer comes, the list had is used, so
``/v1/models`` never waits for the upstream once it has been asked. What it holds:

- ``"ok"``: the upstream's ``model`` objects, normalised (see :func:`~.normalise.model_object`);
- ``"unlisted"``: the upstream answers but has no model list (404, 405 or 501, or a body that is
  no list): it still serves ``model_name``;
- ``"error"``: the upstream could not be asked (unreachable, timed out, an error status);
- ``"unknown"``: not asked yet.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Optional

from ...errors import APIError
from .normalise import model_object
from .text import decode_json, mend_all

if TYPE_CHECKING:  # pragma: no cover
    from .backend import RemoteBackend

log = logging.getLogger("helios_raw.remote")

#: Seconds asking for the list may take before it counts as failed.
LIST_TIMEOUT = 10.0


class UpstreamCatalog:
    """The model list of ``backend``'s upstream (see the module docstring)."""

    def __init__(self, backend: "RemoteBackend") -> None:
        self.backend = backend
        self.state = "unknown"
        self.reason = ""
        self.models: list[dict] = []
        self.fetched_at: Optional[float] = None
        self._task: Optional[asyncio.Future] = None

    def ids(self) -> list[str]:
        return [m["id"] for m in self.models]

    def get(self, model_id: str) -> Optional[dict]:
        for model in self.models:
            if model["id"] == model_id:
                return model
        return None

    def start(self) -> None:
        """Ask for the list in the background and log what the upstream serves."""
        task = asyncio.ensure_future(self.refresh(0.0))
        task.add_done_callback(self._log)

    async def refresh(self, max_age: float) -> None:
        """Ask the upstream again if the list is older than ``max_age`` seconds; wait for the
        answer only if there was no list yet."""
        if self.fetched_at is not None and time.monotonic() - self.fetched_at < max_age:
            return
        if self._task is None:
            self._task = asyncio.ensure_future(self._fetch())
        if self.fetched_at is None:
            await asyncio.shield(self._task)

    def probe(self, max_age: float) -> None:
        """Ask again in the background if the list is older than ``max_age`` seconds."""
        if self.fetched_at is not None and time.monotonic() - self.fetched_at >= max_age and self._task is None:
            self._task = asyncio.ensure_future(self._fetch())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _fetch(self) -> None:
        try:
            body = await asyncio.wait_for(self.backend.fetch("GET", "/models"), LIST_TIMEOUT)
            models = self._models(body)
            if models is None:
                self.state, self.reason = "unlisted", "its model list is not an object with a 'data' array"
            else:
                self.models, self.state, self.reason = models, "ok", ""
        except asyncio.TimeoutError:
            self.state, self.reason = "error", f"it did not answer within {LIST_TIMEOUT:g} seconds"
        except APIError as exc:
            if exc.status in (404, 405, 501):
                self.state, self.reason = "unlisted", "it has no model list"
            else:
                self.state, self.reason = "error", exc.message
        finally:
            self.fetched_at = time.monotonic()
            self._task = None

    def _models(self, body: bytes) -> Optional[list[dict]]:
        """The models of a list's body; None if the body is no model list."""
        try:
            obj, lossy = decode_json(body)
        except ValueError:
            obj, lossy = None, False
        data = obj.get("data") if isinstance(obj, dict) else None
        if not isinstance(data, list):
            return None
        backend = self.backend
        models = [model_object(mend_all(m) if lossy else m, backend.created, backend.owned_by)
                  for m in data if isinstance(m, dict)]
        return [m for m in models if m is not None]

    def _log(self, task: asyncio.Future) -> None:
        if task.cancelled() or task.exception() is not None:
            return
        url = self.backend.base_url
        if self.state == "ok":
            log.info("upstream %s serves %d model(s): %s", url, len(self.models), ", ".join(self.ids()) or "none")
            name = self.backend.config.model_name
            if self.backend.mirror and self.models and name not in self.ids():
                log.warning("upstream %s does not list model_name %r, which requests naming none of its models "
                            "are sent as", url, name)
        else:
            log.warning("upstream %s: could not list its models (%s)", url, self.reason.rstrip("."))
