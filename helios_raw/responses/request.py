"""A ``POST /v1/responses`` body, validated and translated into a chat completions body.

:func:`parse_responses_request` checks the Responses fields, turns ``instructions``, the
conversation of ``previous_response_id`` and ``input`` into chat ``messages`` and the rest into
chat parameters, then validates that body with the chat route's own
:func:`~helios_raw.openai.schema.parse_chat_request`, so every chat rule applies too.

What cannot be honoured is a 400 that names the field: built-in tools (web search, file search,
computer use ...), ``background``, ``include`` values, image, file and audio inputs (the
translation carries text only), reasoning settings, ``truncation: "auto"``, stored prompts and
conversations. Unknown fields are a 400 too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import orjson

from ..errors import APIError, bad_request
from ..openai.schema import ChatRequest, parse_chat_request

#: Fields a request may carry; any other is refused by name.
KNOWN_FIELDS = frozenset({
    "model", "input", "instructions", "previous_response_id", "store", "stream", "stream_options", "metadata",
    "max_output_tokens", "temperature", "top_p", "tools", "tool_choice", "parallel_tool_calls", "text", "user",
    "safety_identifier", "prompt_cache_key", "prompt_cache_retention", "service_tier", "truncation",
    "background", "include", "reasoning", "max_tool_calls", "top_logprobs", "prompt", "conversation",
})
#: ``include`` values honoured: the encrypted content of reasoning items (there are none).
HONOURED_INCLUDES = frozenset({"reasoning.encrypted_content"})
_ROLES = ("user", "system", "developer", "assistant")


@dataclass
class ResponsesRequest:
    """A validated Responses request: ``chat`` is its translation; ``history`` the chat messages
    of the conversation so far (without ``instructions``), which a stored response keeps so that
    a later request can continue it by ``previous_response_id``."""

    chat: ChatRequest
    history: list
    echo: dict
    store: bool = True
    stream: bool = False


def parse_responses_request(body: Any, history_of: Callable[[str], Optional[list]]) -> ResponsesRequest:
    """Validate ``body``; ``history_of(id)`` gives a stored response's conversation (None if
    unknown). Raises a 400 :class:`APIError` naming the field at fault."""
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.")
    unknown = sorted(set(body) - KNOWN_FIELDS)
    if unknown:
        raise bad_request(f"Unknown parameter: '{unknown[0]}'.", unknown[0], "unknown_parameter")
    _refuse_unsupported(body)

    previous = body.get("previous_response_id")
    history: list = []
    if previous is not None:
        if not isinstance(previous, str) or not previous:
            raise bad_request("'previous_response_id' must be a non-empty string.", "previous_response_id")
        stored = history_of(previous)
        if stored is None:
            raise APIError(400, f"Previous response with id '{previous}' not found.", param="previous_response_id",
                           code="previous_response_not_found")
        history = list(stored)
    history.extend(_input_messages(body.get("input")))

    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise bad_request("'instructions' must be a string.", "instructions")
    messages = ([{"role": "system", "content": instructions}] if instructions else []) + history
    if not messages:
        raise bad_request("'input' is required: give a string or a non-empty array of input items.", "input")

    chat_body: dict = {"model": body.get("model"), "messages": messages}
    for key, chat_key in (("temperature", "temperature"), ("top_p", "top_p"), ("user", "user"),
                          ("parallel_tool_calls", "parallel_tool_calls"),
                          ("max_output_tokens", "max_completion_tokens")):
        if body.get(key) is not None:
            chat_body[chat_key] = body[key]
    if body.get("tools") is not None:
        chat_body["tools"] = _tools(body["tools"])
    if body.get("tool_choice") is not None:
        chat_body["tool_choice"] = _tool_choice(body["tool_choice"])
    response_format = _text_format(body.get("text"))
    if response_format is not None:
        chat_body["response_format"] = response_format
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise bad_request("'stream' must be a boolean.", "stream")
    if stream:
        chat_body["stream"] = True
        chat_body["stream_options"] = {"include_usage": True}
    store = body.get("store")
    if store is not None and not isinstance(store, bool):
        raise bad_request("'store' must be a boolean.", "store")
    _check_metadata(body.get("metadata"))
    try:
        chat = parse_chat_request(chat_body)
    except APIError as exc:
        raise _in_responses_terms(exc) from None
    return ResponsesRequest(chat=chat, history=history, echo=body, store=store is not False, stream=bool(stream))


# -- what is refused ---------------------------------------------------------------------------


def _refuse_unsupported(body: dict) -> None:
    if body.get("background"):
        raise _unsupported("background", "'background' responses are not supported by this server.")
    include = body.get("include")
    if include is not None:
        if not isinstance(include, list) or not all(isinstance(v, str) for v in include):
            raise bad_request("'include' must be an array of strings.", "include")
        for value in include:
            if value not in HONOURED_INCLUDES:
                raise _unsupported("include", f"'include' value {value!r} is not supported by this server.")
    reasoning = body.get("reasoning")
    if reasoning is not None and (not isinstance(reasoning, dict) or any(
            v is not None for v in reasoning.values())):
        raise _unsupported("reasoning", "'reasoning' settings are not supported: the model served here does "
                                        "not produce reasoning items.")
    if body.get("truncation") not in (None, "disabled"):
        raise _unsupported("truncation", "Only 'truncation': 'disabled' is supported by this server.")
    if body.get("service_tier") not in (None, "auto", "default"):
        raise _unsupported("service_tier", "Only the 'auto' and 'default' service tiers are served here.")
    for key in ("max_tool_calls", "prompt", "conversation"):
        if body.get(key) is not None:
            raise _unsupported(key, f"'{key}' is not supported by this server.")
    if body.get("top_logprobs"):
        raise _unsupported("top_logprobs", "'top_logprobs' is not supported on /v1/responses by this server.")
    text = body.get("text")
    if isinstance(text, dict) and text.get("verbosity") not in (None, "medium"):
        raise _unsupported("text.verbosity", "Only the default 'text.verbosity' ('medium') is supported.")


#: Chat parameter names and what the Responses request calls them, for errors of the chat rules.
_RENAMED = (("max_completion_tokens", "max_output_tokens"), ("response_format.json_schema.schema", "text.format.schema"),
            ("response_format.json_schema", "text.format"), ("response_format", "text.format"),
            ("messages", "input"), (".function.", "."))


def _in_responses_terms(error: APIError) -> APIError:
    """``error`` of the chat rules, its parameter named as in the Responses request."""
    for old, new in _RENAMED:
        if error.param and old in error.param:
            error.message = error.message.replace(old, new)
            error.param = error.param.replace(old, new)
    return error


def _unsupported(param: str, message: str) -> APIError:
    return bad_request(message, param, "unsupported_parameter")


# -- input -------------------------------------------------------------------------------------


def _input_messages(value: Any) -> list:
    """Chat messages from ``input``: a string, or a list of message, function_call and
    function_call_output items (consecutive function calls become one assistant message)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list):
        raise bad_request("'input' must be a string or an array of input items.", "input")
    messages: list = []
    for i, item in enumerate(value):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise bad_request(f"'{where}' must be an object.", where)
        kind = item.get("type", "message")
        if kind == "message":
            messages.append(_message(item, where))
        elif kind == "function_call":
            call = {"id": _string(item, "call_id", where), "type": "function",
                    "function": {"name": _string(item, "name", where), "arguments": _string(item, "arguments", where)}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and last.get("tool_calls"):
                last["tool_calls"].append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            if isinstance(output, list):
                output = _text_of_parts(output, f"{where}.output", "input_text")
            elif not isinstance(output, str):
                raise bad_request(f"'{where}.output' must be a string or an array of input_text parts.",
                                  f"{where}.output")
            messages.append({"role": "tool", "tool_call_id": _string(item, "call_id", where), "content": output})
        else:
            raise bad_request(f"'{where}.type' {kind!r} is not supported by this server; input items may be "
                              "'message', 'function_call' and 'function_call_output'.", f"{where}.type",
                              "unsupported_parameter")
    return messages


def _message(item: dict, where: str) -> dict:
    role = item.get("role")
    if role not in _ROLES:
        raise bad_request(f"'{where}.role' must be one of {', '.join(_ROLES)}; got {role!r}.", f"{where}.role")
    content = item.get("content")
    if isinstance(content, list):
        content = _text_of_parts(content, f"{where}.content",
                                 "output_text" if role == "assistant" else "input_text")
    elif not isinstance(content, str):
        raise bad_request(f"'{where}.content' must be a string or an array of content parts.", f"{where}.content")
    return {"role": role, "content": content}


def _text_of_parts(parts: list, where: str, expected: str) -> str:
    texts = []
    for j, part in enumerate(parts):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text") and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "refusal" and isinstance(part.get("refusal"), str):
            texts.append(part["refusal"])
        elif kind in ("input_image", "input_file", "input_audio"):
            raise bad_request(f"'{where}[{j}]': {kind} content is not supported: the model served here reads "
                              "text only.", f"{where}[{j}].type", "unsupported_parameter")
        else:
            raise bad_request(f"'{where}[{j}]' must be an {expected} part with a 'text' string.", f"{where}[{j}]")
    return "".join(texts)


def _string(item: dict, key: str, where: str) -> str:
    value = item.get(key)
    if not isinstance(value, str):
        raise bad_request(f"'{where}.{key}' must be a string.", f"{where}.{key}")
    return value


# -- tools and formats -------------------------------------------------------------------------


def _tools(value: Any) -> list:
    if not isinstance(value, list):
        raise bad_request("'tools' must be an array.", "tools")
    tools = []
    for i, tool in enumerate(value):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind != "function":
            raise bad_request(f"'tools[{i}].type' {kind!r} is not supported by this server: only 'function' tools "
                              "are (built-in tools such as web search, file search and computer use are not).",
                              f"tools[{i}].type", "unsupported_parameter")
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            raise bad_request(f"'tools[{i}].name' must be a non-empty string.", f"tools[{i}].name")
        function = {"name": name}
        for key in ("description", "parameters", "strict"):
            if tool.get(key) is not None:
                function[key] = tool[key]
        tools.append({"type": "function", "function": function})
    return tools


def _tool_choice(value: Any):
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and value.get("type") == "function":
        return {"type": "function", "function": {"name": value.get("name")}}
    kind = value.get("type") if isinstance(value, dict) else None
    raise bad_request(f"'tool_choice' {orjson.dumps(kind or value).decode()} is not supported: give 'none', 'auto', "
                      "'required' or {'type': 'function', 'name': ...}.", "tool_choice", "unsupported_parameter")


def _text_format(text: Any) -> Optional[dict]:
    if text is None:
        return None
    if not isinstance(text, dict):
        raise bad_request("'text' must be an object.", "text")
    spec = text.get("format")
    if spec is None:
        return None
    kind = spec.get("type") if isinstance(spec, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        if not isinstance(spec.get("name"), str) or not isinstance(spec.get("schema"), dict):
            raise bad_request("'text.format' of type 'json_schema' needs a 'name' string and a 'schema' object.",
                              "text.format")
        schema: dict = {key: spec[key] for key in ("name", "schema", "description", "strict") if key in spec}
        return {"type": "json_schema", "json_schema": schema}
    raise bad_request("'text.format.type' must be 'text', 'json_object' or 'json_schema'.", "text.format.type")


def _check_metadata(value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, dict) or len(value) > 16 or not all(
            isinstance(k, str) and len(k) <= 64 and isinstance(v, str) and len(v) <= 512 for k, v in value.items()):
        raise bad_request("'metadata' must be an object of at most 16 string keys (64 characters) and string "
                          "values (512 characters).", "metadata")
