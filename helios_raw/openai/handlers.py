"""The OpenAI routes: ``POST /v1/chat/completions``, ``POST /v1/completions``,
``POST /v1/embeddings``, ``GET /v1/models[/{model}]``, and ``/health``."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Optional

import orjson

from ..cancel import ClientGone
from ..errors import APIError, model_not_found, server_error
from ..http.request import Request
from ..http.response import JSONResponse, Response
from ..http.sse import SSESink, sse_response
from .completions import parse_completion_request
from .embeddings import parse_embedding_request
from .legacy import LegacySink, legacy_completion
from .schema import parse_chat_request

if TYPE_CHECKING:  # pragma: no cover
    from ..backends.base import Backend, ChunkStream

log = logging.getLogger("helios_raw.openai")

#: Path segments a model id may span in ``GET /v1/models/{id}`` (ids such as
#: ``HuggingFaceTB/SmolLM2-135M-Instruct`` hold slashes; ``%2F`` works as well).
MAX_ID_SEGMENTS = 6


class OpenAIRoutes:
    """Serves ``backend`` under the OpenAI paths. With ``strict_models``, a request naming a model
    the backend doesn't serve is a 404 ``model_not_found``; otherwise the one model answers."""

    def __init__(self, backend: "Backend", strict_models: bool = False) -> None:
        self.backend = backend
        self.strict_models = strict_models

    def install(self, app) -> None:
        app.add_route("POST", "/v1/chat/completions", self.chat_completions,
                      description="OpenAI chat completions (streamed and not)")
        app.add_route("POST", "/v1/completions", self.completions, description="OpenAI text completions")
        app.add_route("POST", "/v1/embeddings", self.embeddings, description="OpenAI embeddings")
        app.add_route("GET", "/v1/models", self.list_models, description="OpenAI model list")
        for segments in range(1, MAX_ID_SEGMENTS + 1):
            template = "/v1/models/" + "/".join(f"{{{_id_part(i)}}}" for i in range(segments))
            app.add_route("GET", template, self.get_model, description="One model" if segments == 1 else "")

    # -- handlers ----------------------------------------------------------------------------

    async def list_models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": await self.backend.list_models()})

    async def get_model(self, request: Request) -> Response:
        model = "/".join(request.params[_id_part(i)] for i in range(len(request.params)))
        for listed in await self.backend.list_models():
            if listed["id"] == model or model in listed.get("aliases", ()):
                return JSONResponse(listed)
        raise model_not_found(model)

    async def chat_completions(self, request: Request):
        require_json(request)
        chat = parse_chat_request(request.json())
        self.backend.check_request(chat.model, self.strict_models)
        # An upstream given the request as sent answers legacy functions in their own shape.
        legacy = chat.legacy_functions and not self.backend.relays(chat.model)
        if not chat.stream:
            result = await self.backend.complete(chat, request.cancelled)
            return JSONResponse(legacy_completion(result) if legacy else result)
        return streamed(await self.backend.open_stream(chat, request.cancelled), request, legacy)

    async def completions(self, request: Request):
        require_json(request)
        parsed = parse_completion_request(request.json())
        self.backend.check_request(parsed.model, self.strict_models)
        if not parsed.stream:
            return JSONResponse(await self.backend.complete_text(parsed, request.cancelled))
        return streamed(await self.backend.open_text_stream(parsed, request.cancelled), request)

    async def embeddings(self, request: Request):
        require_json(request)
        parsed = parse_embedding_request(request.json())
        self.backend.check_request(parsed.model, self.strict_models)
        return JSONResponse(await self.backend.embed(parsed, request.cancelled))


def _id_part(index: int) -> str:
    """The name of the ``index``-th path segment of a model id (ids may hold slashes)."""
    return "model" if index == 0 else f"model_{index + 1}"


def streamed(stream: "ChunkStream", request: Request, legacy: bool = False):
    """The event-stream response running ``stream``: its chunks (in the legacy function-call
    shape with ``legacy``), then ``[DONE]``; an error cutting it short is an error event before
    ``[DONE]``."""

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
    """The inline ``GET /health`` handler. 200 ``{"status": "ok", ...}`` while the backend serves;
    503 with ``"status": "loading"`` or ``"error"`` and the OpenAI error object a request would
    get otherwise, so that load balancers and orchestrators can act on the status code."""
    static = JSONResponse({"status": "ok"})

    def health(request: Request) -> Response:
        if backend is None:
            return static
        facts = backend.health()
        error = backend.health_problem()
        if error is not None:
            status = "loading" if error.code == "model_loading" else "error"
            return JSONResponse({"status": status, **facts, **error.to_dict()}, error.status, error.headers)
        return JSONResponse({"status": "ok", **facts})

    return health
