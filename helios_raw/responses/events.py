"""A streamed chat answer as the Responses API's events.

In OpenAI's order, each with the next ``sequence_number`` from 0: ``response.created``,
``response.in_progress``; for text, ``response.output_item.added`` (a message),
``response.content_part.added``, ``response.output_text.delta`` per piece as it is generated,
``response.output_text.done``, ``response.content_part.done``, ``response.output_item.done``; for
each tool call, ``response.output_item.added`` (a function_call), ``response.function_call_arguments.delta``
per piece, ``.done`` and ``response.output_item.done``; last ``response.completed``, or
``response.incomplete`` when the answer was cut by ``max_output_tokens``. A stream that fails
ends with an ``error`` event and ``response.failed``.
"""

from __future__ import annotations

from typing import Callable, Optional

from ..errors import APIError
from ..http.sse import named_sse_frame
from ..ids import new_id
from ..openai.objects import TOOL_CALL_ID_PREFIX
from ..translation import ChunkTranslator
from .objects import (
    CALL_ITEM_ID_PREFIX,
    MESSAGE_ID_PREFIX,
    ResponseDraft,
    call_item,
    message_item,
    status_of,
    text_part,
)


class ResponsesTranslator(ChunkTranslator):
    """Writes one response's events; ``finished(response)`` is called with the final response
    object (completed or incomplete), for the store."""

    def __init__(self, draft: ResponseDraft, finished: Callable[[dict], None]) -> None:
        super().__init__()
        self.draft = draft
        self.finished = finished
        self.sequence = 0
        self.output: list = []
        self._open: Optional[dict] = None  # the item being streamed: its kind, index, id and content

    # -- the stream's life ---------------------------------------------------------------------

    def on_start(self) -> None:
        response = self.draft.build("in_progress", [])
        self.emit("response.created", {"type": "response.created", "response": response})
        self.emit("response.in_progress", {"type": "response.in_progress", "response": response})

    def on_text(self, text: str) -> None:
        if self._open is None or self._open["kind"] != "message":
            self._open_message()
        item = self._open
        item["parts"].append(text)
        self.emit("response.output_text.delta", {
            "type": "response.output_text.delta", "item_id": item["id"], "output_index": item["index"],
            "content_index": 0, "delta": text, "logprobs": []})

    def on_tool_call(self, index: int, call_id: Optional[str], name: Optional[str], arguments: str) -> None:
        item = self._open
        if item is None or item["kind"] != "call" or item["call"] != index:
            self._close("completed")
            call = self.answer.tool_calls[index]
            if not call["id"]:
                call["id"] = new_id(TOOL_CALL_ID_PREFIX)
            item = self._open = {"kind": "call", "call": index, "index": len(self.output),
                                 "id": new_id(CALL_ITEM_ID_PREFIX)}
            self.output.append(None)
            added = call_item(item["id"], {**call, "arguments": ""}, "in_progress")
            self.emit("response.output_item.added", {"type": "response.output_item.added",
                                                     "output_index": item["index"], "item": added})
        if arguments:
            self.emit("response.function_call_arguments.delta", {
                "type": "response.function_call_arguments.delta", "item_id": item["id"],
                "output_index": item["index"], "delta": arguments})

    def on_finish(self) -> None:
        status = status_of(self.answer)
        if not self.output:
            self._open_message()
        self._close("incomplete" if status == "incomplete" else "completed")
        response = self.draft.build(status, self.output, self.answer)
        self.finished(response)
        event = "response.completed" if status == "completed" else "response.incomplete"
        self.emit(event, {"type": event, "response": response})

    def error_frames(self, error: APIError) -> bytes:
        failed = self.draft.build("failed", [item for item in self.output if item is not None], error=error)
        return (self._frame("error", {"type": "error", "code": error.code or error.type, "message": error.message,
                                      "param": error.param})
                + self._frame("response.failed", {"type": "response.failed", "response": failed}))

    # -- items ---------------------------------------------------------------------------------

    def _open_message(self) -> None:
        self._close("completed")
        item = self._open = {"kind": "message", "index": len(self.output), "id": new_id(MESSAGE_ID_PREFIX),
                             "parts": []}
        self.output.append(None)
        self.emit("response.output_item.added", {"type": "response.output_item.added", "output_index": item["index"],
                                                 "item": message_item(item["id"], "", "in_progress")})
        self.emit("response.content_part.added", {
            "type": "response.content_part.added", "item_id": item["id"], "output_index": item["index"],
            "content_index": 0, "part": text_part("")})

    def _close(self, status: str) -> None:
        """End the item being streamed with its ``.done`` events."""
        item, self._open = self._open, None
        if item is None:
            return
        where = {"item_id": item["id"], "output_index": item["index"]}
        if item["kind"] == "message":
            text = "".join(item["parts"])
            self.emit("response.output_text.done", {"type": "response.output_text.done", **where,
                                                    "content_index": 0, "text": text, "logprobs": []})
            self.emit("response.content_part.done", {"type": "response.content_part.done", **where,
                                                     "content_index": 0, "part": text_part(text)})
            done = message_item(item["id"], text, status)
        else:
            call = self.answer.tool_calls[item["call"]]
            self.emit("response.function_call_arguments.done", {
                "type": "response.function_call_arguments.done", **where, "name": call["name"],
                "arguments": call["arguments"]})
            done = call_item(item["id"], call, "completed")
        self.output[item["index"]] = done
        self.emit("response.output_item.done", {"type": "response.output_item.done", "output_index": item["index"],
                                                "item": done})

    # -- frames --------------------------------------------------------------------------------

    def emit(self, event: str, obj: dict) -> None:
        self._write(self._frame(event, obj))

    def _frame(self, event: str, obj: dict) -> bytes:
        obj["sequence_number"] = self.sequence
        self.sequence += 1
        return named_sse_frame(event, obj)
