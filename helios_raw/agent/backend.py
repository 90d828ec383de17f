"""Serving an agent: a :class:`~helios_raw.backends.base.Backend` that answers each request by
running the agent's tool-call loop over an inner backend (local model or remote upstream).

Streamed requests stream the answer's text as the inner backend produces it: every model call
is itself streamed, its text forwarded chunk by chunk while its tool calls are collected and run
without being shown; a tool run sends nothing to the client.
"""

from __future__ import annotations

from typing import Optional

from ..backends.base import Backend, ChunkStream
from ..cancel import Cancellation
from ..config import Config
from ..openai.objects import ChunkFactory, assistant_message, completion
from ..openai.schema import ChatRequest
from ..sink import ChunkSink
from .capture import StepCapture
from .loop import Agent, Conversation, step_from_completion


class AgentBackend(Backend):
    """Serves ``agent`` as model ``model_name`` over the agent's own backend, or else the one
    ``config`` chooses (``inner_kind`` "local"/"remote" forces it). Starting, readiness and
    closing are the inner backend's. Holds no per-request state and no lock."""

    def __init__(self, agent: Agent, model_name: Optional[str] = None, config: Optional[Config] = None,
                 inner_kind: Optional[str] = None) -> None:
        super().__init__()
        if not isinstance(agent, Agent):
            raise TypeError(f"AgentBackend needs an Agent, not {type(agent).__name__}")
        self.agent = agent
        self.model_id = model_name or agent.name
        if agent.backend is not None:
            self.inner: Backend = agent.backend
        else:
            from ..backends import backend_from_config

            config = config or Config()
            self.inner = backend_from_config(config, inner_kind or config.backend_kind)

    def use_metrics(self, metrics) -> None:
        super().use_metrics(metrics)
        self.inner.use_metrics(metrics)

    @property
    def state(self) -> str:
        return self.inner.state

    def health(self) -> dict:
        return {**self.inner.health(), "model": self.model_id, "agent": self.agent.name,
                "inner_model": self.inner_model}

    def model_ids(self) -> list[str]:
        return [self.model_id]

    @property
    def inner_model(self) -> str:
        """The model id the inner backend serves (what each model call asks for)."""
        ids = self.inner.model_ids()
        return ids[0] if ids else self.inner.model_id

    async def start(self) -> None:
        await self.inner.start()

    async def wait_ready(self) -> None:
        await self.inner.wait_ready()

    async def close(self) -> None:
        await self.inner.close()

    async def complete(self, request: ChatRequest, cancel: Cancellation) -> dict:
        conversation = Conversation(self.agent, request, self.inner_model)
        while True:
            result = await self.inner.complete(conversation.next_request(stream=False), cancel)
            step = step_from_completion(result)
            ending = conversation.record(step)
            if ending is not None:
                break
            await conversation.run_tools(step, cancel)
        text = conversation.text + ending.note
        # Tool calls with nothing said come with a null content, as OpenAI sends them.
        message = assistant_message(text if text or not ending.client_calls else None, ending.client_calls or None)
        return completion(self.model_id, message, ending.finish_reason, conversation.usage)

    async def open_stream(self, request: ChatRequest, cancel: Cancellation) -> ChunkStream:
        return AgentStream(self, Conversation(self.agent, request, self.inner_model), cancel)


class AgentStream(ChunkStream):
    """One streamed agent answer: role chunk, the text of every model call as it comes, then any
    limit note or client tool calls, the finish chunk and (if asked) the summed usage."""

    def __init__(self, backend: AgentBackend, conversation: Conversation, cancel: Cancellation) -> None:
        self.backend = backend
        self.conversation = conversation
        self.cancel = cancel

    async def run(self, sink: ChunkSink) -> None:
        conversation = self.conversation
        chunks = ChunkFactory(self.backend.model_id, include_usage=conversation.request.include_usage)
        sink.send(chunks.role())
        while True:
            capture = StepCapture(sink, chunks)
            stream = await self.backend.inner.open_stream(conversation.next_request(stream=True), self.cancel)
            await stream.run(capture)
            step = capture.step()
            ending = conversation.record(step)
            if ending is not None:
                break
            await conversation.run_tools(step, self.cancel)
        if ending.note:
            sink.send(chunks.content(ending.note))
        if ending.client_calls:
            sink.send(chunks.chunk({"tool_calls": [{"index": i, **call} for i, call in enumerate(ending.client_calls)]}))
        sink.send(chunks.finish(ending.finish_reason))
        if conversation.request.include_usage:
            sink.send(chunks.usage(conversation.usage))
        await sink.drain()

