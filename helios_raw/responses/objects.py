"""Builders of the Responses API's objects: the response, its output items and usage.

A response echoes its request's settings (instructions, tools in the Responses shape, tool
choice, text format, sampling, metadata) as OpenAI does; ``output`` holds one ``message`` item
with an ``output_text`` part when the model said something (or called no tool), then one
``function_call`` item per tool call.
"""

from __future__ import annotations

import time
from typing import Optional

from ..answers import Answer
from ..errors import APIError
from ..ids import new_id
from .request import ResponsesRequest

RESPONSE_ID_PREFIX = "resp_"
MESSAGE_ID_PREFIX = "msg_"
CALL_ITEM_ID_PREFIX = "fc_"


class ResponseDraft:
    """The fixed part of one response: id, creation time, model and the request it echoes."""

    def __init__(self, request: ResponsesRequest, model: str) -> None:
        self.id = new_id(RESPONSE_ID_PREFIX)
        self.created_at = int(time.time())
        self.model = model
        self.request = request

    def build(self, status: str, output: list, answer: Optional[Answer] = None,
              error: Optional[APIError] = None) -> dict:
        """The response object with ``status`` and ``output``; usage from ``answer``."""
        echo = self.request.echo
        incomplete = status == "incomplete"
        response = {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "background": False,
            "completed_at": int(time.time()) if status == "completed" else None,
            "error": _error(error) if error is not None else None,
            "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
            "instructions": echo.get("instructions"),
            "max_output_tokens": echo.get("max_output_tokens"),
            "max_tool_calls": None,
            "model": self.model,
            "output": output,
            "parallel_tool_calls": echo.get("parallel_tool_calls") is not False,
            "previous_response_id": echo.get("previous_response_id"),
            "presence_penalty": 0.0,
            "frequency_penalty": 0.0,
            "prompt_cache_key": echo.get("prompt_cache_key"),
            "reasoning": {"effort": None, "summary": None},
            "safety_identifier": echo.get("safety_identifier"),
            "service_tier": "default",
            "store": self.request.store,
            "temperature": _number(echo.get("temperature"), 1.0),
            "text": {"format": _format_echo(echo.get("text")), "verbosity": "medium"},
            "tool_choice": _tool_choice_echo(echo.get("tool_choice")),
            "tools": [_tool_echo(t) for t in echo.get("tools") or []],
            "top_logprobs": 0,
            "top_p": _number(echo.get("top_p"), 1.0),
            "truncation": "disabled",
            "metadata": echo.get("metadata") or {},
        }
        if answer is not None and status in ("completed", "incomplete"):  # absent until known, never null
            response["usage"] = usage(answer)
        if isinstance(echo.get("user"), str):  # the schema allows it absent, not null
            response["user"] = echo["user"]
        return response


def usage(answer: Answer) -> dict:
    return {
        "input_tokens": answer.prompt_tokens,
        "input_tokens_details": {"cached_tokens": answer.cached_tokens, "cache_write_tokens": 0},
        "output_tokens": answer.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": answer.prompt_tokens + answer.completion_tokens,
    }


def status_of(answer: Answer) -> str:
    """``incomplete`` when the answer was cut by its token limit, else ``completed``."""
    return "incomplete" if answer.finish_reason == "length" else "completed"


def message_item(item_id: str, text: str, status: str) -> dict:
    return {"id": item_id, "type": "message", "status": status, "role": "assistant",
            "content": [text_part(text)] if status != "in_progress" else []}


def text_part(text: str) -> dict:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def call_item(item_id: str, call: dict, status: str) -> dict:
    return {"id": item_id, "type": "function_call", "status": status, "call_id": call["id"],
            "name": call["name"], "arguments": call["arguments"]}


def output_of(answer: Answer) -> list:
    """The output items of a whole answer (the non-streamed response)."""
    status = "incomplete" if answer.finish_reason == "length" else "completed"
    output = []
    if answer.text or not answer.tool_calls:
        output.append(message_item(new_id(MESSAGE_ID_PREFIX), answer.text, status))
    output.extend(call_item(new_id(CALL_ITEM_ID_PREFIX), call, "completed") for call in answer.tool_calls)
    return output


def history_of_output(output: list) -> list:
    """The chat messages a response's output adds to its conversation."""
    messages: list = []
    for item in output:
        if item["type"] == "message":
            messages.append({"role": "assistant", "content": "".join(p["text"] for p in item["content"])})
        elif item["type"] == "function_call":
            call = {"id": item["call_id"], "type": "function",
                    "function": {"name": item["name"], "arguments": item["arguments"]}}
            if messages and messages[-1]["role"] == "assistant" and "tool_calls" in messages[-1]:
                messages[-1]["tool_calls"].append(call)
            elif messages and messages[-1]["role"] == "assistant":
                messages[-1]["tool_calls"] = [call]
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
    return messages


def _error(error: APIError) -> dict:
    code = "rate_limit_exceeded" if error.status == 429 else "server_error"
    return {"code": code, "message": error.message}


def _number(value, default: float) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default


def _format_echo(text) -> dict:
    spec = text.get("format") if isinstance(text, dict) else None
    if not isinstance(spec, dict) or spec.get("type") not in ("json_object", "json_schema"):
        return {"type": "text"}
    if spec["type"] == "json_object":
        return {"type": "json_object"}
    echoed = {"type": "json_schema", "name": spec["name"], "schema": spec["schema"],
              "strict": spec.get("strict") if isinstance(spec.get("strict"), bool) else False}
    if isinstance(spec.get("description"), str):
        echoed["description"] = spec["description"]
    return echoed


def _tool_choice_echo(choice):
    if isinstance(choice, dict):
        return {"type": "function", "name": choice.get("name")}
    return choice if isinstance(choice, str) else "auto"


def _tool_echo(tool: dict) -> dict:
    echoed = {"type": "function", "name": tool["name"], "description": tool.get("description"),
              "parameters": tool.get("parameters"), "strict": tool.get("strict")}
    return echoed
