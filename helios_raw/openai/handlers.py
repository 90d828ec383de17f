"""The OpenAI routes: ``POST /v1/chat/completions``, ``GET /v1/models[/{model}]``, and ``/health``."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Optional

from ..cancel import ClientGone
from ..errors import APIError, model_not_found, server_error
from ..http.request import Request
from ..http.response import JSONResponse, Response
from ..http.sse import SSESink, sse_response
from .legacy import LegacySink, legacy_completion
from .objects import model_object
from .schema import parse_chat_request

if TYPE_CHECKING:  # pragma: no cover
    from ..backends.base import Backend

log = logging.getLogger("helios_raw.openai")


class OpenAIRoutes:
    """Serves ``backend`` under the OpenAI paths. With ``strict_models``, a request naming a model
    the backend doesn't serve is a 404 ``model_not_found``; otherwise the one model answers."""

    def __init__(self, backend: "Backend", strict_models: bool = False) -> None:
        self.backend = backend
        self.strict_models = strict_models

    def install(self, app) -> None:
        app.add_route("POST", "/v1/chat/completions", self.chat_completions,
                      description="OpenAI chat completions (streamed and not)")
        app.add_route("GET", "/v1/models", self.list_models, inline=True, description="OpenAI model list")
        app.add_route("GET", "/v1/models/{model}", self.get_model, inline=True, description="One model")

    # -- handlers ----------------------------------------------------------------------------

    def list_models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [self._model(m) for m in self.backend.model_ids()]})

    def get_model(self, request: Request) -> Response:
        model = request.params["model"]
        if model not in self.backend.model_ids():
            raise model_not_found(model)
        return JSONResponse(self._model(model))

    async def chat_completions(self, request: Request):
        require_json(request)
        chat = parse_chat_request(request.json())
        self.backend.check_request(chat.model, self.strict_models)
        # An upstream given the request as sent answers legacy functions in their own shape.
        legacy = chat.legacy_functions and not self.backend.relays_requests
        if not chat.stream:
            result = await self.backend.complete(chat, request.cancelled)
            return JSONResponse(legacy_completion(result) if legacy else result)
        stream = await self.backend.open_stream(chat, request.cancelled)

        async def produce(sink: SSESink) -> None:
            try:
                await stream.run(LegacySink(sink) if legacy else sink)
            except (ClientGone, asyncio.CancelledError):
                raise
            except APIError as exc:
                sink.error(exc)
                return
            except Exception:
                log.exception("stream for %s failed", request.path)
                sink.error(server_error())
                return
            sink.done()

        return sse_response(produce)

    # -- helpers -----------------------------------------------------------------------------

    def _model(self, model_id: str) -> dict:
        return model_object(model_id, self.backend.created, self.backend.owned_by)


def require_json(request: Request) -> None:
    """415 unless the body is declared JSON (a missing Content-Type is taken as JSON)."""
    content_type: Optional[str] = request.header("content-type")
    if content_type is None:
        return
    media = content_type.split(";", 1)[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise APIError(415, f"Unsupported Content-Type {media!r}; send 'Content-Type: application/json'.",
                       code="unsupported_media_type")


def health_route(backend: Optional["Backend"]):
    """The inline ``GET /health`` handler. 200 ``{"status": "ok", ...}`` while the backend serves;
    503 with ``"status": "loading"`` or ``"error"`` and the OpenAI error object a request would
    get otherwise, so that load balancers and orchestrators can act on the status code."""
    static = JSONResponse({"status": "ok"})

    def health(request: Request) -> Response:
        if backend is None:
            return static
        facts = backend.health()
        try:
            backend.check_request("", False)
        except APIError as error:
            status = "loading" if error.code == "model_loading" else "error"
            return JSONResponse({"status": status, **facts, **error.to_dict()}, error.status, error.headers)
        return JSONResponse({"status": "ok", **facts})

    return health
