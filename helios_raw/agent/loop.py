"""The agent and its tool-call loop, one :class:`Conversation` per request.

A request's conversation is: the agent's system prompt (always first), the request's messages
(a system message of the request's own stays, after the agent's), then for each model call that
asks for tools, the assistant message with its ``tool_calls`` and one ``tool`` message per call.
Nothing outlives the request, so one agent serves any number of requests at once.

Where the loop ends:

* the model answers without tool calls: that is the final answer;
* the model calls a tool the *client* declared in its request's ``tools``: the answer goes back to
  the client with ``finish_reason: "tool_calls"`` and only the client's calls (the client runs
  them and sends the results in its next request; the agent's own calls in that same answer are
  dropped and the model asks for them again then);
* ``max_iterations`` model calls have all asked for tools: the answer says the agent stopped at
  its limit, with ``finish_reason: "length"`` (the answer was cut short by a limit, as with
  ``max_tokens``).

The answer's text is everything the model said across the calls (text that came with tool calls
included), which is exactly what a streaming client sees. Tool calls run concurrently (sync tools
in worker threads); a tool that raises, or is given arguments that do not fit its schema, answers
the model with an ``Error: ...`` text instead. A client that leaves ends the loop: async tools
still running are cancelled and no further model call is made.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Callable, Iterable, Optional, Union

from ..cancel import Cancellation
from ..errors import bad_request
from ..ids import new_id
from ..openai.objects import TOOL_CALL_ID_PREFIX
from ..openai.schema import ChatRequest
from .tools import Tool, tool

if TYPE_CHECKING:  # pragma: no cover
    from ..backends.base import Backend

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."


class Agent:
    """A named system prompt plus tools, answering over a backend.

    ``tools`` are :class:`Tool` objects or plain functions (turned into tools as ``@tool`` would).
    ``backend`` None means the backend the server is configured with. ``max_iterations`` bounds
    the model calls one request may make.
    """

    def __init__(
        self,
        name: str,
        system_prompt: str = DEFAULT_SYSTEM_PROMPT,
        tools: Iterable[Union[Tool, Callable]] = (),
        max_iterations: int = 10,
        backend: Optional["Backend"] = None,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError("an Agent needs a non-empty name")
        if isinstance(max_iterations, bool) or not isinstance(max_iterations, int) or max_iterations < 1:
            raise ValueError(f"max_iterations must be a positive integer, not {max_iterations!r}")
        self.name = name
        self.system_prompt = system_prompt or ""
        self.tools: list[Tool] = [t if isinstance(t, Tool) else tool(t) for t in tools]
        self.max_iterations = max_iterations
        self.backend = backend
        self._by_name = {t.name: t for t in self.tools}
        if len(self._by_name) != len(self.tools):
            names = [t.name for t in self.tools]
            duplicate = next(n for n in names if names.count(n) > 1)
            raise ValueError(f"agent {name}: two tools are named {duplicate!r}")

    def __repr__(self) -> str:
        return f"Agent({self.name!r}, tools={[t.name for t in self.tools]})"

    def find_tool(self, name: str) -> Optional[Tool]:
        return self._by_name.get(name)

    def messages_for(self, request_messages: list[dict]) -> list[dict]:
        """The system prompt, then the request's messages."""
        head = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return head + list(request_messages)


@dataclass
class Step:
    """What one model call answered."""

    content: str
    tool_calls: list[dict]
    finish_reason: str
    usage: Optional[dict] = None


@dataclass
class Ending:
    """How a request's answer ends: its ``finish_reason``, the tool calls handed to the client,
    and a note to append to the text."""

    finish_reason: str
    client_calls: list[dict] = field(default_factory=list)
    note: str = ""


def step_from_completion(result: dict) -> Step:
    """The :class:`Step` of a backend's ``chat.completion`` object."""
    choice = (result.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    content = message.get("content")
    if isinstance(content, list):
        content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return Step(content or "", list(message.get("tool_calls") or []), choice.get("finish_reason") or "stop",
                result.get("usage"))


class Conversation:
    """One request's turn with the agent: the messages so far, usage, and the text spoken."""

    def __init__(self, agent: Agent, request: ChatRequest, inner_model: str) -> None:
        self.agent = agent
        self.request = request
        self.inner_model = inner_model
        self.messages = agent.messages_for(request.messages)
        client_tools = request.tools or []
        self.client_tool_names = {t["function"]["name"] for t in client_tools}
        clash = sorted(n for n in self.client_tool_names if agent.find_tool(n) is not None)
        if clash:
            raise bad_request(f"The tool {clash[0]!r} in 'tools' has the name of one of the agent's own tools; "
                              "rename it.", "tools")
        self.tool_definitions = [t.definition() for t in agent.tools] + list(client_tools)
        self.calls_made = 0
        self.spoken: list[str] = []
        self.usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}

    @property
    def text(self) -> str:
        return "".join(self.spoken)

    def next_request(self, stream: bool) -> ChatRequest:
        """The request for the next model call: the client's parameters, this conversation's
        messages and tools; the client's ``tool_choice`` applies to the first call only.
        ``raw`` (what a pass-through upstream sees) is kept in step with the fields."""
        tools = self.tool_definitions or None
        tool_choice = self.request.tool_choice if self.calls_made == 0 else None
        messages = list(self.messages)
        raw = {k: v for k, v in self.request.raw.items() if k not in _REPLACED}
        raw.update(model=self.inner_model, messages=messages, stream=stream)
        if tools:
            raw["tools"] = tools
        if tool_choice is not None:
            raw["tool_choice"] = tool_choice
        if stream:
            raw["stream_options"] = {"include_usage": True}
        return replace(self.request, model=self.inner_model, messages=messages, raw=raw,
                       stream=stream, include_usage=stream, tools=tools, tool_choice=tool_choice)

    def record(self, step: Step) -> Optional[Ending]:
        """Count ``step``; the :class:`Ending` if the answer ends with it, None if its tool calls
        should run and the model be asked again."""
        self.calls_made += 1
        if step.usage:
            for key in self.usage:
                value = step.usage.get(key)
                if isinstance(value, int):
                    self.usage[key] += value
        if step.content:
            self.spoken.append(step.content)
        if not step.tool_calls:
            return Ending(step.finish_reason)
        client_calls = [c for c in step.tool_calls if _call_name(c) in self.client_tool_names]
        if client_calls:
            return Ending("tool_calls", client_calls=[_with_id(c) for c in client_calls])
        if self.calls_made >= self.agent.max_iterations:
            return Ending("length", note=self.limit_note())
        return None

    def limit_note(self) -> str:
        prefix = "\n\n" if self.spoken else ""
        return (f"{prefix}[The agent stopped after {self.agent.max_iterations} model calls "
                "(its max_iterations) without reaching a final answer.]")

    async def run_tools(self, step: Step, cancel: Cancellation) -> None:
        """Run ``step``'s tool calls at once and append the assistant message and the results.

        If ``cancel`` is set first, the async tools are cancelled (a sync tool's thread finishes
        on its own, unheard) and :class:`~helios_raw.cancel.ClientGone` is raised."""
        calls = [_with_id(c) for c in step.tool_calls]
        results = await cancel.guard(asyncio.gather(*(self._run(c) for c in calls)))
        self.messages.append({"role": "assistant", "content": step.content or None, "tool_calls": calls})
        for call, result in zip(calls, results):
            self.messages.append({"role": "tool", "tool_call_id": call["id"], "content": result})

    async def _run(self, call: dict) -> str:
        name = _call_name(call)
        found = self.agent.find_tool(name)
        if found is None:
            known = ", ".join(t.name for t in self.agent.tools) or "none"
            return f"Error: there is no tool named {name!r} (available: {known})."
        arguments = (call.get("function") or {}).get("arguments")
        return await found.invoke(arguments if isinstance(arguments, str) else "")


_REPLACED = ("model", "messages", "stream", "stream_options", "tools", "tool_choice", "functions", "function_call")


def _call_name(call: dict) -> str:
    function = call.get("function") if isinstance(call, dict) else None
    return function.get("name", "") if isinstance(function, dict) else ""


def _with_id(call: dict) -> dict:
    """``call`` in the OpenAI shape, with an id (some upstreams omit it)."""
    function = call.get("function") or {}
    return {
        "id": call.get("id") or new_id(TOOL_CALL_ID_PREFIX),
        "type": "function",
        "function": {"name": function.get("name", ""), "arguments": function.get("arguments") or ""},
    }
