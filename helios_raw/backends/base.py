"""The contract every backend (local model, remote upstream, agent) fulfils.

The OpenAI handlers validate a request into a :class:`~helios_raw.openai.schema.ChatRequest` and
then call exactly one of :meth:`Backend.complete` or :meth:`Backend.open_stream`. Errors a client
should see are raised as :class:`~helios_raw.errors.APIError`: before a stream starts they become
an HTTP status; once it runs, an error event followed by ``[DONE]``.

``POST /v1/completions`` and ``POST /v1/embeddings`` call :meth:`Backend.complete_text` /
:meth:`Backend.open_text_stream` and :meth:`Backend.embed` the same way; a backend that cannot
serve them keeps the defaults, which refuse with a 400 naming the model.

A stream returned by ``open_stream`` or ``open_text_stream`` is always run: the caller runs it
(or, if it never can, the request's cancellation is set), so a backend may hold resources for it.
"""

from __future__ import annotations

import abc
import time
from typing import Optional

from ..cancel import Cancellation
from ..errors import APIError, model_loading, model_not_found, model_unavailable
from ..metrics import Metrics
from ..openai.completions import CompletionRequest
from ..openai.embeddings import EmbeddingRequest
from ..openai.objects import model_object
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

    def relays(self, model: str) -> bool:
        """Whether a request for ``model`` goes on as the client sent it."""
        return self.relays_requests

    def use_metrics(self, metrics: Metrics) -> None:
        """Record into ``metrics`` from now on (the server's own)."""
        self.metrics = metrics

    def __init__(self) -> None:
        self.created = int(time.time())
        #: Where the backend records what it does; the server gives it its own at construction,
        #: so read it when serving, never keep it from ``__init__``.
        self.metrics = Metrics()

    @property
    def state(self) -> str:
        """``"loading"``, ``"ready"`` or ``"failed"``."""
        return "ready"

    def check_ready(self) -> None:
        """Raise the 503 a request gets while the backend is loading or has failed."""
        state = self.state
        if state == "loading":
            raise model_loading()
        if state != "ready":
            raise model_unavailable()

    def health_problem(self) -> Optional[APIError]:
        """Why ``/health`` should answer 503 now (None: the backend serves); cheap, no I/O."""
        try:
            self.check_ready()
        except APIError as error:
            return error
        return None

    def check_request(self, model: str, strict_models: bool) -> None:
        """:meth:`check_ready`, and with ``strict_models`` the 404 for a ``model`` the backend
        does not serve."""
        self.check_ready()
        if strict_models and model not in self.model_ids():
            raise model_not_found(model)

    @property
    def status(self) -> str:
        """The ``/v1/models`` status of this backend's model: ``"loaded"``, ``"loading"`` or
        ``"failed"`` (by :attr:`state`, unless a backend knows better)."""
        return {"ready": "loaded", "loading": "loading"}.get(self.state, "failed")

    @property
    def context_length(self) -> Optional[int]:
        """Tokens of prompt plus answer one request may take, listed by ``/v1/models``; None when
        unknown."""
        return None

    def health(self) -> dict:
        """Extra facts for ``/health`` (model id, state, queue length ...)."""
        return {"model": self.model_id, "backend_state": self.state}

    def model_ids(self) -> list[str]:
        """The ids ``/v1/models`` lists."""
        return [self.model_id]

    def served_id(self, model: str) -> str:
        """The id an answer to a request naming ``model`` carries."""
        return self.model_id

    async def list_models(self) -> list[dict]:
        """The ``model`` objects ``/v1/models`` lists (``id``, ``object``, ``created``,
        ``owned_by``; more fields are kept)."""
        return [model_object(model_id, self.created, self.owned_by) for model_id in self.model_ids()]

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

    async def complete_text(self, request: CompletionRequest, cancel: Cancellation) -> dict:
        """Answer ``request`` (its ``prompts`` continued as they are, no chat template) with one
        ``text_completion`` object: a choice per prompt, in order, ``index`` its position."""
        raise unsupported_route(request.model, "/v1/completions", "text completions")

    async def open_text_stream(self, request: CompletionRequest, cancel: Cancellation) -> ChunkStream:
        """Accept a streamed text completion: its stream sends ``text_completion`` chunks (each
        choice's ``index`` the prompt's position; ``finish_reason`` null until the choice's last)
        and, if ``include_usage``, a last chunk with empty ``choices`` and the usage."""
        raise unsupported_route(request.model, "/v1/completions", "text completions")

    async def embed(self, request: EmbeddingRequest, cancel: Cancellation) -> dict:
        """Answer ``request`` with the embeddings ``list`` object, one vector per input in order,
        encoded as ``request.encoding_format`` asks (see :func:`~helios_raw.openai.embeddings.embedding_list`)."""
        raise unsupported_route(request.model, "/v1/embeddings", "embeddings")

    async def count_tokens(self, request: ChatRequest, cancel: Cancellation) -> Optional[int]:
        """The prompt tokens ``request`` would take, counted without generating; None when the
        backend can't tell without asking its model for an answer."""
        return None


class BackendError(Exception):
    """A backend cannot start; the message is one sentence for the operator."""


def unsupported_route(model: str, route: str, what: str) -> APIError:
    """The 400 for a request to ``route`` naming a model that does not serve ``what``."""
    return APIError(400, f"The model '{model}' does not serve {what}, so it cannot answer {route}.",
                    param="model", code="unsupported_model")
