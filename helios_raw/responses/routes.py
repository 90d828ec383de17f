"""The Responses routes: ``POST /v1/responses``, ``GET`` and ``DELETE /v1/responses/{id}``.

A request is translated into a chat completion (see :mod:`.request`), answered by the backend
like any chat request, and its answer translated back (:mod:`.objects`, :mod:`.events`). A
response with ``store`` (the default) is kept in the :class:`~.store.ResponseStore`.

A remote backend with ``responses_passthrough`` instead passes all three routes straight through
to its upstream's ``/responses``: the upstream validates, answers and stores those responses.
"""

from __future__ import annotations

import asyncio
from typing import Optional

import orjson

from ..answers import answer_of
from ..backends.base import Backend
from ..backends.remote import EventRelay, RemoteBackend
from ..cancel import ClientGone
from ..errors import APIError, bad_request
from ..http.request import Request
from ..http.response import JSONResponse, ResponseWriter
from ..http.sse import named_sse_frame, named_sse_response
from ..openai.handlers import require_json
from ..translation import translated_response
from .events import ResponsesTranslator
from .objects import ResponseDraft, history_of_output, output_of, status_of
from .request import ResponsesRequest, parse_responses_request
from .store import ResponseStore


class ResponsesRoutes:
    """Serves the Responses API over ``backend`` (see the module docstring)."""

    def __init__(self, backend: Backend, store: ResponseStore, strict_models: bool = False) -> None:
        self.backend = backend
        self.store = store
        self.strict_models = strict_models
        self.passthrough = isinstance(backend, RemoteBackend) and backend.config.responses_passthrough

    def install(self, app) -> None:
        app.add_route("POST", "/v1/responses", self.create, description="OpenAI Responses (streamed and not)")
        app.add_route("GET", "/v1/responses/{response_id}", self.retrieve, description="A stored response")
        app.add_route("DELETE", "/v1/responses/{response_id}", self.delete, description="Delete a stored response")

    # -- handlers ------------------------------------------------------------------------------

    async def create(self, request: Request):
        require_json(request)
        body = request.json()
        if self.passthrough:
            if not isinstance(body, dict):
                raise bad_request("The request body must be a JSON object.")
            return await self._forward(request, "POST", "/responses", body)
        parsed = parse_responses_request(body, self._history)
        chat = parsed.chat
        self.backend.check_request(chat.model, self.strict_models)
        draft = ResponseDraft(parsed, self.backend.served_id(chat.model))
        if not parsed.stream:
            answer = answer_of(await self.backend.complete(chat, request.cancelled))
            response = draft.build(status_of(answer), output_of(answer), answer)
            self._keep(parsed, response)
            return JSONResponse(response)
        stream = await self.backend.open_stream(chat, request.cancelled)
        translator = ResponsesTranslator(draft, lambda response: self._keep(parsed, response))
        return translated_response(stream, translator, "responses")

    async def retrieve(self, request: Request):
        response_id = request.params["response_id"]
        if self.passthrough:
            return await self._forward(request, "GET", f"/responses/{response_id}", None)
        stored = self.store.get(response_id)
        if stored is None:
            raise _not_found(response_id)
        return JSONResponse(stored.response)

    async def delete(self, request: Request):
        response_id = request.params["response_id"]
        if self.passthrough:
            return await self._forward(request, "DELETE", f"/responses/{response_id}", None)
        if not self.store.delete(response_id):
            raise _not_found(response_id)
        return JSONResponse({"id": response_id, "object": "response", "deleted": True})

    # -- helpers -------------------------------------------------------------------------------

    def _history(self, response_id: str) -> Optional[list]:
        stored = self.store.get(response_id)
        return None if stored is None else stored.history

    def _keep(self, parsed: ResponsesRequest, response: dict) -> None:
        if parsed.store:
            self.store.put(response, parsed.history + history_of_output(response["output"]))

    async def _forward(self, request: Request, method: str, path: str, body: Optional[dict]):
        answer = await self.backend.forward(method, path, body, request.cancelled)
        if isinstance(answer, dict):
            return JSONResponse(answer)
        return _relayed(answer)


def _relayed(relay: EventRelay):
    """The upstream's event stream, each event as it came; an error cutting it short is an
    ``error`` event."""
    relayed = [0]

    def error_frames(error: APIError) -> bytes:
        return named_sse_frame("error", {"type": "error", "code": error.code or error.type, "message": error.message,
                                         "param": error.param, "sequence_number": relayed[0]})

    async def produce(writer: ResponseWriter) -> None:
        def forward(name: str, data: bytes) -> None:
            relayed[0] += 1
            head = b"" if name == "message" else b"event: " + name.encode() + b"\n"
            writer.write(head + b"data: " + data.replace(b"\n", b"\ndata: ") + b"\n\n")

        try:
            await relay.run(forward, writer.drain)
        except (ClientGone, asyncio.CancelledError):
            raise
        except APIError as exc:
            writer.write(error_frames(exc))

    return named_sse_response(produce, error_frames)


def _not_found(response_id: str) -> APIError:
    return APIError(404, f"Response with id {orjson.dumps(response_id).decode()} not found.", param="response_id",
                    code="response_not_found")
