"""The contract every backend (local model, remote upstream, agent) fulfils.

The OpenAI handlers validate a request into a :class:`~helios_raw.openai.schema.ChatRequest` and
then call exactly one of :meth:`Backend.complete` or :meth:`Backend.open_stream`. Errors a client
should see are raised as :class:`~helios_raw.errors.APIError`: before a stream starts they become
an HTTP status; once it runs, an error event followed by ``[DONE]``.
"""

from __future__ import annotations

import abc
import time

from ..cancel import Cancellation
from ..errors import model_loading, model_not_found, model_unavailable
from ..metrics import Metrics
from ..openai.schema import ChatRequest
from ..sink import ChunkSink


class ChunkStream(abc.ABC):
    """A stream of ``chat.completion.chunk`` objects, accepted but not yet started."""

    @abc.abstractmethod
    async def run(self, sink: ChunkSink) -> None:
        """Send every chunk to ``sink``: the first (with ``delta.role``) at once, content
        as it is generated, one chunk with ``finish_reason``, and, if the request asked for
        ``include_usage``, a usage chunk. The caller writes ``[DONE]``. Stop promptly once
        ``cancel`` (given to :meth:`Backend.open_stream`) is set."""


class Backend(abc.ABC):
    """Serves chat completions for one model id."""

    #: The id listed by ``/v1/models`` and put in every response's ``model``.
    model_id: str = "unknown"
    owned_by: str = "helios_raw"
    #: Whether the client's request body goes on as sent (to an upstream that then answers it).
    relays_requests: bool = False

    def __init__(self) -> None:
        self.created = int(time.time())
        #: Where the backend records what it does; the server gives it its own at construction,
        #: so read it when serving, never keep it from ``__init__``.
        self.metrics = Metrics()

    @property
    def state(self) -> str:
        """``"loading"``, ``"ready"`` or ``"failed"``."""
        return "ready"

    def check_request(self, model: str, strict_models: bool) -> None:
        """Raise the 503 a request gets while the backend is loading or has failed, and with
        ``strict_models`` the 404 for a ``model`` it does not serve."""
        state = self.state
        if state == "loading":
            raise model_loading()
        if state != "ready":
            raise model_unavailable()
        if strict_models and model not in self.model_ids():
            raise model_not_found(model)

    def health(self) -> dict:
        """Extra facts for ``/health`` (model id, state, queue length ...)."""
        return {"model": self.model_id, "backend_state": self.state}

    def model_ids(self) -> list[str]:
        """The ids ``/v1/models`` lists."""
        return [self.model_id]

    async def start(self) -> None:
        """Prepare to serve (load a model, open a pool). Raise ``BackendError`` with one plain
        sentence if that can't be done."""

    async def wait_ready(self) -> None:
        """Return once the backend serves; raise ``BackendError`` if it never will."""

    async def close(self) -> None:
        """Release what :meth:`start` took."""

    @abc.abstractmethod
    async def complete(self, request: ChatRequest, cancel: Cancellation) -> dict:
        """Answer ``request`` with one ``chat.completion`` object."""

    @abc.abstractmethod
    async def open_stream(self, request: ChatRequest, cancel: Cancellation) -> ChunkStream:
        """Accept a streamed request (raise an APIError to refuse it with an HTTP status)."""


class BackendError(Exception):
    """A backend cannot start; the message is one sentence for the operator."""
