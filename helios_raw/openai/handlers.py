"""The OpenAI routes: ``POST /v1/chat/completions``, ``GET /v1/models[/{model}]``, and ``/health``."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Optional

import orjson

from ..cancel import ClientGone
from ..errors import APIError, server_error
from ..http.request import Request
from ..http.response import JSONResponse, Response
from ..http.sse import SSESink, sse_response
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
        app.add_route("GET", "/v1/models", self.list_models, description="OpenAI model list")
        app.add_route("GET", "/v1/models/{model}", self.get_model, description="One model")

    # -- handlers ----------------------------------------------------------------------------

    def list_models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [self._model(m) for m in self.backend.model_ids()]})

    def get_model(self, request: Request) -> Response:
        model = request.params["model"]
        if model not in self.backend.model_ids():
            raise APIError(404, f"The model '{model}' does not exist.", param="model", code="model_not_found")
        return JSONResponse(self._model(model))

    async def chat_completions(self, request: Request):
        require_json(request)
        chat = parse_chat_request(request.json())
        self._check_ready()
        if self.strict_models and chat.model not in self.backend.model_ids():
            raise APIError(404, f"The model '{chat.model}' does not exist.", param="model", code="model_not_found")
        if not chat.stream:
            return JSONResponse(await self.backend.complete(chat, request.cancelled))
        stream = await self.backend.open_stream(chat, request.cancelled)

        async def produce(sink: SSESink) -> None:
            try:
                await stream.run(sink)
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

    def _check_ready(self) -> None:
        state = self.backend.state
        if state == "loading":
            raise APIError(503, "The model is still loading; try again in a moment.", type="server_error",
                           code="model_loading", headers=[("retry-after", "1")])
        if state != "ready":
            raise APIError(503, "The model failed to load; see the server log.", type="server_error",
                           code="model_unavailable")


def require_json(request: Request) -> None:
    """415 for a body declared as another type than JSON that does not parse as JSON either. A
    body that parses is taken whatever it is declared as, as other servers do: ``curl -d`` sends
    JSON as ``application/x-www-form-urlencoded``."""
    content_type: Optional[str] = request.header("content-type")
    if content_type is None:
        return
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "application/json" or media.endswith("+json"):
        return
    try:
        orjson.loads(request.body)
    except orjson.JSONDecodeError:
        raise APIError(415, f"Unsupported Content-Type {media!r}, and the body is not JSON; send JSON with "
                       "'Content-Type: application/json'.", code="unsupported_media_type") from None


def health_route(backend: Optional["Backend"]):
    """The inline ``GET /health`` handler: ``{"status": "ok" | "loading" | "error", ...}``."""
    static = JSONResponse({"status": "ok"})

    def health(request: Request) -> Response:
        if backend is None:
            return static
        state = backend.state
        status = {"ready": "ok", "loading": "loading"}.get(state, "error")
        return JSONResponse({"status": status, **backend.health()})

    return health
