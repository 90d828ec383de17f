"""Reading a chat answer back: a ``chat.completion`` object, or a stream of its chunks.

Whoever answers in another shape (another API's events, an agent's next step) reads here:
:func:`answer_of` turns a completion into an :class:`Answer`; a :class:`ChunkReader` builds one
from ``chat.completion.chunk`` objects as they come, calling :meth:`ChunkReader.on_text` and
:meth:`ChunkReader.on_tool_call` with each piece.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from .errors import APIError


@dataclass
class Answer:
    """What one chat answer said. ``tool_calls`` are ``{"id", "name", "arguments"}``;
    ``stop_reason`` is the stop string that ended it when the backend names it (vLLM does)."""

    text: str = ""
    tool_calls: list = field(default_factory=list)
    finish_reason: str = "stop"
    stop_reason: Optional[str] = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0

    def matched_stop(self, stops: list) -> Optional[str]:
        """The stop sequence that ended the answer, if one did: the one the backend named, else
        one the text ends with (backends that keep it), else None."""
        if self.finish_reason != "stop" or not stops:
            return None
        if self.stop_reason in stops:
            return self.stop_reason
        return next((s for s in stops if self.text.endswith(s)), None)

    def read_usage(self, usage: Optional[dict]) -> None:
        if not isinstance(usage, dict):
            return
        self.prompt_tokens = _count(usage.get("prompt_tokens"))
        self.completion_tokens = _count(usage.get("completion_tokens"))
        details = usage.get("prompt_tokens_details")
        self.cached_tokens = _count(details.get("cached_tokens")) if isinstance(details, dict) else 0


def answer_of(completion: dict) -> Answer:
    """The :class:`Answer` of a ``chat.completion`` object (its first choice)."""
    answer = Answer()
    choices = completion.get("choices") if isinstance(completion, dict) else None
    choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
    message = choice.get("message") or {}
    answer.text = message.get("content") if isinstance(message.get("content"), str) else ""
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        answer.tool_calls.append({"id": str(call.get("id") or ""), "name": str(function.get("name") or ""),
                                  "arguments": str(function.get("arguments") or "")})
    answer.finish_reason = choice.get("finish_reason") or "stop"
    if isinstance(choice.get("stop_reason"), str):
        answer.stop_reason = choice["stop_reason"]
    answer.read_usage(completion.get("usage"))
    return answer


class ChunkReader:
    """Reads ``chat.completion.chunk`` objects into :attr:`answer` (text joined by :meth:`settle`)."""

    def __init__(self) -> None:
        self.answer = Answer()
        self._parts: list[str] = []

    def on_text(self, text: str) -> None:
        """A piece of the answer's text."""

    def on_tool_call(self, index: int, call_id: Optional[str], name: Optional[str], arguments: str) -> None:
        """A piece of tool call ``index``: its id and name when first seen, then argument text."""

    def settle(self) -> None:
        """Join the text read so far into :attr:`answer` (once the stream has ended)."""
        self.answer.text = "".join(self._parts)

    def read(self, chunk: dict) -> None:
        """Take one chunk (an error chunk raises the APIError it carries)."""
        if not isinstance(chunk, dict):
            return
        if "error" in chunk:
            error = chunk["error"] if isinstance(chunk["error"], dict) else {"message": str(chunk["error"])}
            raise APIError(502, str(error.get("message") or "The model's stream reported an error."),
                           type=str(error.get("type") or "server_error"), code=error.get("code"))
        if isinstance(chunk.get("usage"), dict):
            self.answer.read_usage(chunk["usage"])
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if isinstance(text, str) and text:
                self._parts.append(text)
                self.on_text(text)
            for piece in delta.get("tool_calls") or []:
                self._read_call(piece)
            if choice.get("finish_reason"):
                self.answer.finish_reason = choice["finish_reason"]
                if isinstance(choice.get("stop_reason"), str):
                    self.answer.stop_reason = choice["stop_reason"]

    def _read_call(self, piece: dict) -> None:
        if not isinstance(piece, dict):
            return
        calls = self.answer.tool_calls
        index = piece.get("index")
        if not isinstance(index, int) or index < 0:
            index = len(calls)
        while len(calls) <= index:
            calls.append({"id": "", "name": "", "arguments": ""})
        call = calls[index]
        function = piece.get("function") or {}
        call_id = piece.get("id") if isinstance(piece.get("id"), str) and piece.get("id") else None
        name = function.get("name") if isinstance(function.get("name"), str) and function.get("name") else None
        arguments = function.get("arguments") if isinstance(function.get("arguments"), str) else ""
        if call_id:
            call["id"] = call_id
        if name:
            call["name"] += name
        call["arguments"] += arguments
        self.on_tool_call(index, call_id, name, arguments)


def _count(value) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0

