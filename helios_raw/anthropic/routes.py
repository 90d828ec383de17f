"""The Messages routes: ``POST /v1/messages`` and ``POST /v1/messages/count_tokens``.

A request is translated into a chat completion (:mod:`.request`), answered by the backend like
any chat request, and its answer translated back (:mod:`.events`). Every error under
``/v1/messages`` is in Anthropic's shape (:mod:`.errors`).

``count_tokens`` counts the translated request's prompt with the model's own tokenizer and chat
template (tool definitions included) where the backend can do so without generating (the local
model); else it asks for a one-token answer and reports the prompt tokens counted (an upstream,
or an agent, whose system prompt counts too), at the cost of one generated token.
"""

from __future__ import annotations

from ..answers import answer_of
from ..backends.base import Backend
from ..http.request import Request
from ..http.response import JSONResponse
from ..openai.handlers import require_json
from ..translation import translated_response
from .errors import render_error
from .events import MessagesTranslator, message_object
from .request import parse_messages_request


class MessagesRoutes:
    """Serves Anthropic's Messages API over ``backend``."""

    def __init__(self, backend: Backend, strict_models: bool = False) -> None:
        self.backend = backend
        self.strict_models = strict_models

    def install(self, app) -> None:
        app.render_errors("/v1/messages", render_error)
        app.add_route("POST", "/v1/messages", self.create, description="Anthropic Messages (streamed and not)")
        app.add_route("POST", "/v1/messages/count_tokens", self.count_tokens,
                      description="Anthropic token counting")

    async def create(self, request: Request):
        require_json(request)
        parsed = parse_messages_request(request.json())
        chat = parsed.chat
        self.backend.check_request(chat.model, self.strict_models)
        model = self.backend.served_id(chat.model)
        if not parsed.stream:
            answer = answer_of(await self.backend.complete(chat, request.cancelled))
            return JSONResponse(message_object(answer, model, parsed.stop_sequences))
        stream = await self.backend.open_stream(chat, request.cancelled)
        return translated_response(stream, MessagesTranslator(model, parsed.stop_sequences), "messages")

    async def count_tokens(self, request: Request):
        require_json(request)
        parsed = parse_messages_request(request.json(), counting=True)
        chat = parsed.chat
        self.backend.check_request(chat.model, self.strict_models)
        counted = await self.backend.count_tokens(chat, request.cancelled)
        if counted is not None:
            return JSONResponse({"input_tokens": counted})
        chat.max_tokens, chat.temperature = 1, 0.0
        chat.raw = {**chat.raw, "max_tokens": 1, "temperature": 0}
        answer = answer_of(await self.backend.complete(chat, request.cancelled))
        return JSONResponse({"input_tokens": answer.prompt_tokens})
