"""OpenAI's deprecated function calling (``functions`` / ``function_call``), in terms of tools.

Request side (used by :mod:`.schema`): :func:`legacy_tools` turns ``functions`` and
``function_call`` into ``tools`` and ``tool_choice``; :func:`legacy_history` turns an assistant
message's ``function_call`` into a one-call ``tool_calls`` and the ``function`` message that
answers it into a ``tool`` message with the matching id.

Answer side (pure functions for whoever writes the answer of a request whose
``ChatRequest.legacy_functions`` is set): :func:`legacy_completion` rewrites a
``chat.completion`` and :func:`legacy_chunk` a ``chat.completion.chunk``: the first tool call
becomes ``function_call`` (``{"name", "arguments"}``; in a stream, the name in the first
fragment and the arguments in pieces), other tool calls are dropped (the legacy API makes one
call at a time), and ``finish_reason`` ``"tool_calls"`` becomes ``"function_call"``.
"""

from __future__ import annotations

import copy
from typing import Any, Optional

from ..errors import bad_request
from ..sink import ChunkSink

LEGACY_CALL_ID = "call_function_"


def legacy_tools(body: dict) -> tuple[Optional[list], Any]:
    """``(tools, tool_choice)`` for ``body``'s ``functions`` / ``function_call`` (both None when
    it uses neither); a 400 for a malformed or conflicting use."""
    functions, choice = body.get("functions"), body.get("function_call")
    if functions is None:
        if choice is not None:
            raise bad_request("'function_call' is only allowed when 'functions' are given.", "function_call")
        return None, None
    if body.get("tools") is not None or body.get("tool_choice") is not None:
        raise bad_request("'functions' and 'function_call' can't be combined with 'tools' and 'tool_choice'; "
                          "use 'tools'.", "functions", "invalid_parameter_combination")
    if not isinstance(functions, list) or not functions:
        raise bad_request("'functions' must be a non-empty array.", "functions")
    tools = []
    for i, function in enumerate(functions):
        if not isinstance(function, dict):
            raise bad_request(f"'functions[{i}]' must be an object with a 'name'.", f"functions[{i}]")
        tools.append({"type": "function", "function": function})
    if choice is None or choice in ("none", "auto"):
        return tools, choice
    name = choice.get("name") if isinstance(choice, dict) else None
    if not isinstance(name, str):
        raise bad_request("'function_call' must be 'none', 'auto' or {'name': ...}.", "function_call")
    return tools, {"type": "function", "function": {"name": name}}


def legacy_history(messages: list[dict]) -> list[dict]:
    """``messages`` (validated) with legacy function calls written as tool calls: an assistant
    ``function_call`` answered by the ``function`` message right after it becomes a one-call
    ``tool_calls``, and that answer a ``tool`` message with the call's id (an unanswered
    ``function_call`` is left out, as before)."""
    out = []
    for i, message in enumerate(messages):
        call = message.get("function_call")
        if call is not None:
            message = {k: v for k, v in message.items() if k != "function_call"}
            following = messages[i + 1] if i + 1 < len(messages) else {}
            if not message.get("tool_calls") and following.get("role") == "function" \
                    and following.get("name") == call["name"]:
                message["tool_calls"] = [{"id": f"{LEGACY_CALL_ID}{i}", "type": "function", "function": dict(call)}]
        elif message["role"] == "function" and out and out[-1].get("tool_calls", [{}])[0].get("id") == \
                f"{LEGACY_CALL_ID}{i - 1}":
            message = {**message, "role": "tool", "tool_call_id": f"{LEGACY_CALL_ID}{i - 1}"}
        out.append(message)
    return out


def legacy_completion(completion: dict) -> dict:
    """A copy of ``completion`` in the legacy shape."""
    completion = copy.deepcopy(completion)
    for choice in completion.get("choices") or ():
        message = choice.get("message") or {}
        calls = message.pop("tool_calls", None)
        if calls:
            function = calls[0]["function"]
            message["function_call"] = {"name": function["name"], "arguments": function.get("arguments", "")}
        if choice.get("finish_reason") == "tool_calls":
            choice["finish_reason"] = "function_call"
    return completion


def legacy_chunk(chunk: dict) -> Optional[dict]:
    """A copy of ``chunk`` in the legacy shape, or None when nothing is left of it (it only
    carried fragments of tool calls after the first)."""
    chunk = copy.deepcopy(chunk)
    choices = chunk.get("choices") or []
    kept = []
    for choice in choices:
        delta = choice.get("delta") or {}
        calls = delta.pop("tool_calls", None)
        first = [call for call in calls or () if call.get("index", 0) == 0]
        if first:
            function = first[0].get("function") or {}
            delta["function_call"] = {k: function[k] for k in ("name", "arguments") if k in function}
        if choice.get("finish_reason") == "tool_calls":
            choice["finish_reason"] = "function_call"
        if calls and not first and not delta and choice.get("finish_reason") is None and not choice.get("logprobs"):
            continue
        kept.append(choice)
    if choices and not kept:
        return None
    chunk["choices"] = kept
    return chunk


class LegacySink(ChunkSink):
    """Passes a stream's chunks on to ``inner`` in the legacy shape (see :func:`legacy_chunk`)."""

    def __init__(self, inner: ChunkSink) -> None:
        self.inner = inner

    @property
    def closed(self) -> bool:
        return self.inner.closed

    @property
    def paused(self) -> bool:
        return self.inner.paused

    def send(self, chunk: dict) -> None:
        legacy = legacy_chunk(chunk)
        if legacy is not None:
            self.inner.send(legacy)

    async def drain(self) -> None:
        await self.inner.drain()
