"""Chat answers as Anthropic's ``message`` object and its streaming events.

``stop_reason``: the chat ``finish_reason`` ``stop`` is ``end_turn``, or ``stop_sequence`` (with
``stop_sequence`` set) when one of the request's stop sequences ended the answer; ``length`` is
``max_tokens``; ``tool_calls`` is ``tool_use``.

A stream is ``message_start``, ``ping``, then per content block ``content_block_start``,
``content_block_delta`` (``text_delta`` as text is generated, ``input_json_delta`` for a tool
call's arguments) and ``content_block_stop``, then ``message_delta`` (stop reason and usage) and
``message_stop``. The input token count is known only at the end, so ``message_start`` reports 0
and ``message_delta`` the real count. A stream that fails ends with an ``error`` event.
"""

from __future__ import annotations

from typing import Optional

import orjson

from ..answers import Answer
from ..errors import APIError
from ..http.sse import named_sse_frame
from ..ids import new_id
from ..translation import ChunkTranslator
from .errors import error_object

MESSAGE_ID_PREFIX = "msg_"
TOOL_USE_ID_PREFIX = "toolu_"
_STOP_REASONS = {"length": "max_tokens", "tool_calls": "tool_use", "function_call": "tool_use"}


def stop_of(answer: Answer, stops: list) -> tuple:
    """``(stop_reason, stop_sequence)`` of ``answer``."""
    matched = answer.matched_stop(stops)
    if matched is not None:
        return "stop_sequence", matched
    return _STOP_REASONS.get(answer.finish_reason, "end_turn"), None


def usage(answer: Answer) -> dict:
    return {"input_tokens": answer.prompt_tokens, "output_tokens": answer.completion_tokens,
            "cache_creation_input_tokens": 0, "cache_read_input_tokens": answer.cached_tokens}


def message_object(answer: Answer, model: str, stops: list) -> dict:
    """The ``message`` answering a non-streamed request."""
    content = [{"type": "text", "text": answer.text}] if answer.text or not answer.tool_calls else []
    content.extend({"type": "tool_use", "id": call["id"] or new_id(TOOL_USE_ID_PREFIX), "name": call["name"],
                    "input": _input_of(call["arguments"])} for call in answer.tool_calls)
    stop_reason, stop_sequence = stop_of(answer, stops)
    return {"id": new_id(MESSAGE_ID_PREFIX), "type": "message", "role": "assistant", "model": model,
            "content": content, "stop_reason": stop_reason, "stop_sequence": stop_sequence, "usage": usage(answer)}


class MessagesTranslator(ChunkTranslator):
    """Writes one streamed message's events (see the module docstring)."""

    def __init__(self, model: str, stops: list) -> None:
        super().__init__()
        self.model = model
        self.stops = stops
        self.blocks = 0
        self._open: Optional[tuple] = None  # ("text", None) or ("tool", chat call index)

    def on_start(self) -> None:
        message = {"id": new_id(MESSAGE_ID_PREFIX), "type": "message", "role": "assistant", "model": self.model,
                   "content": [], "stop_reason": None, "stop_sequence": None, "usage": usage(Answer())}
        self.emit("message_start", {"type": "message_start", "message": message})
        self.emit("ping", {"type": "ping"})

    def on_text(self, text: str) -> None:
        if self._open != ("text", None):
            self._start(("text", None), {"type": "text", "text": ""})
        self.emit("content_block_delta", {"type": "content_block_delta", "index": self.blocks - 1,
                                          "delta": {"type": "text_delta", "text": text}})

    def on_tool_call(self, index: int, call_id: Optional[str], name: Optional[str], arguments: str) -> None:
        if self._open != ("tool", index):
            call = self.answer.tool_calls[index]
            call["id"] = call["id"] or new_id(TOOL_USE_ID_PREFIX)
            self._start(("tool", index), {"type": "tool_use", "id": call["id"], "name": call["name"], "input": {}})
        if arguments:
            self.emit("content_block_delta", {"type": "content_block_delta", "index": self.blocks - 1,
                                              "delta": {"type": "input_json_delta", "partial_json": arguments}})

    def on_finish(self) -> None:
        if not self.blocks:
            self._start(("text", None), {"type": "text", "text": ""})
        self._stop()
        stop_reason, stop_sequence = stop_of(self.answer, self.stops)
        self.emit("message_delta", {"type": "message_delta",
                                    "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
                                    "usage": usage(self.answer)})
        self.emit("message_stop", {"type": "message_stop"})

    def error_frames(self, error: APIError) -> bytes:
        return named_sse_frame("error", error_object(error))

    def _start(self, which: tuple, block: dict) -> None:
        self._stop()
        self._open = which
        self.emit("content_block_start", {"type": "content_block_start", "index": self.blocks, "content_block": block})
        self.blocks += 1

    def _stop(self) -> None:
        if self._open is not None:
            self._open = None
            self.emit("content_block_stop", {"type": "content_block_stop", "index": self.blocks - 1})


def _input_of(arguments: str) -> dict:
    """A tool call's arguments as the ``input`` object (arguments that are not a JSON object are
    kept under ``"arguments"`` rather than lost)."""
    try:
        value = orjson.loads(arguments) if arguments else {}
    except orjson.JSONDecodeError:
        return {"arguments": arguments}
    return value if isinstance(value, dict) else {"arguments": value}
