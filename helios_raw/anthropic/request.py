"""A ``POST /v1/messages`` body, validated and translated into a chat completions body.

:func:`parse_messages_request` checks the Messages fields, turns ``system`` and ``messages``
(``text``, ``tool_use`` and ``tool_result`` blocks) into chat messages and the rest into chat
parameters, then validates that body with the chat route's
:func:`~helios_raw.openai.schema.parse_chat_request`, so every chat rule applies too.

``output_config.format`` (a JSON schema) is enforced as the chat route enforces ``json_schema``.
What cannot be honoured is a 400 naming the field: image and document blocks (the translation
carries text only), extended thinking, effort, server tools (web search, code execution,
computer use ...), MCP servers, containers, diagnostics, an inference region, fast mode.
``cache_control`` marks are accepted (they only say where a prompt cache may begin), and so are
``user_profile_id`` and ``workspace_id`` (attribution, which a single server has no use for).
Unknown fields are a 400 too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from ..errors import APIError, bad_request
from ..openai.schema import ChatRequest, parse_chat_request

#: Fields of both ``/v1/messages`` and ``count_tokens``; any other is refused by name.
COMMON_FIELDS = frozenset({
    "model", "messages", "system", "tools", "tool_choice", "thinking", "mcp_servers", "context_management",
    "cache_control", "output_config", "speed", "user_profile_id", "workspace_id",
})
CREATE_FIELDS = COMMON_FIELDS | {"max_tokens", "stop_sequences", "temperature", "top_p", "top_k", "stream", "metadata",
                                 "service_tier", "container", "diagnostics", "inference_geo"}
COUNT_FIELDS = COMMON_FIELDS | {"output_format"}
#: At most this many stop sequences (the chat rules' limit).
MAX_STOP_SEQUENCES = 4


@dataclass
class MessagesRequest:
    """A validated Messages request: ``chat`` is its translation."""

    chat: ChatRequest
    stop_sequences: list
    stream: bool


def parse_messages_request(body: Any, counting: bool = False) -> MessagesRequest:
    """Validate ``body`` (``counting``: a ``count_tokens`` body, which has no ``max_tokens``);
    raises a 400 :class:`APIError` naming the field at fault."""
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.")
    unknown = sorted(set(body) - (COUNT_FIELDS if counting else CREATE_FIELDS))
    if unknown:
        raise bad_request(f"{unknown[0]}: Extra inputs are not permitted", unknown[0])
    _refuse_unsupported(body)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("model: Field required (a non-empty string)", "model")
    chat_body: dict = {"model": model, "messages": _system(body.get("system")) + _messages(body.get("messages"))}
    if not counting:
        max_tokens = body.get("max_tokens")
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise bad_request("max_tokens: Field required (an integer of at least 1)", "max_tokens")
        chat_body["max_tokens"] = max_tokens
    temperature = body.get("temperature")
    if temperature is not None:
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 <= temperature <= 1:
            raise bad_request("temperature: must be a number from 0 to 1", "temperature")
        chat_body["temperature"] = temperature
    for key in ("top_p", "top_k"):
        if body.get(key) is not None:
            chat_body[key] = body[key]
    stops = _stop_sequences(body.get("stop_sequences"))
    if stops:
        chat_body["stop"] = stops
    if body.get("tools") is not None:
        chat_body["tools"] = _tools(body["tools"])
    output_format = _output_format(body)
    if output_format is not None:
        chat_body["response_format"] = output_format
    if body.get("tool_choice") is not None:
        chat_body["tool_choice"], parallel = _tool_choice(body["tool_choice"])
        if parallel is False:
            chat_body["parallel_tool_calls"] = False
    metadata = body.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict) or not isinstance(metadata.get("user_id", ""), (str, type(None))):
            raise bad_request("metadata: must be an object whose user_id is a string", "metadata")
        if metadata.get("user_id"):
            chat_body["user"] = metadata["user_id"]
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise bad_request("stream: must be a boolean", "stream")
    if stream:
        chat_body["stream"] = True
        chat_body["stream_options"] = {"include_usage": True}
    try:
        chat = parse_chat_request(chat_body)
    except APIError as exc:
        raise bad_request(exc.message.replace("max_completion_tokens", "max_tokens"), exc.param) from None
    return MessagesRequest(chat, stops, bool(stream))


def _refuse_unsupported(body: dict) -> None:
    thinking = body.get("thinking")
    if thinking is not None and not (isinstance(thinking, dict) and thinking.get("type") == "disabled"):
        raise bad_request("thinking: extended thinking is not supported by this server", "thinking")
    if body.get("service_tier") not in (None, "auto", "standard_only"):
        raise bad_request("service_tier: only 'auto' and 'standard_only' are served here", "service_tier")
    if body.get("speed") not in (None, "standard"):
        raise bad_request("speed: only 'standard' is served here", "speed")
    for key in ("container", "mcp_servers", "context_management", "diagnostics", "inference_geo"):
        if body.get(key) is not None:
            raise bad_request(f"{key}: not supported by this server", key)
    config = body.get("output_config")
    if config is not None and (not isinstance(config, dict) or config.get("effort") is not None
                               or set(config) - {"effort", "format"}):
        raise bad_request("output_config: only 'format' is supported by this server (no 'effort')", "output_config")


def _output_format(body: dict):
    """The chat ``response_format`` of ``output_config.format`` (or count_tokens' ``output_format``)."""
    config = body.get("output_config")
    spec = config.get("format") if isinstance(config, dict) else body.get("output_format")
    if spec is None:
        return None
    if not isinstance(spec, dict) or spec.get("type") != "json_schema" or not isinstance(spec.get("schema"), dict):
        raise bad_request("output_config.format: must be {'type': 'json_schema', 'schema': {...}}",
                          "output_config.format")
    return {"type": "json_schema", "json_schema": {"name": "output", "schema": spec["schema"], "strict": True}}


def _system(value: Any) -> list:
    if value is None:
        return []
    if isinstance(value, str):
        return [{"role": "system", "content": value}] if value else []
    if isinstance(value, list):
        text = _text_blocks(value, "system")
        return [{"role": "system", "content": text}] if text else []
    raise bad_request("system: must be a string or an array of text blocks", "system")


def _messages(value: Any) -> list:
    if not isinstance(value, list) or not value:
        raise bad_request("messages: Field required (a non-empty array)", "messages")
    out: list = []
    for i, message in enumerate(value):
        where = f"messages.{i}"
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            raise bad_request(f"{where}.role: must be 'user' or 'assistant'", f"{where}.role")
        content = message.get("content")
        if isinstance(content, str):
            out.append({"role": message["role"], "content": content})
        elif isinstance(content, list):
            out.extend(_blocks(message["role"], content, f"{where}.content"))
        else:
            raise bad_request(f"{where}.content: must be a string or an array of content blocks", f"{where}.content")
    return out


def _blocks(role: str, blocks: list, where: str) -> list:
    """The chat messages of one message's blocks: tool results first (as ``tool`` messages), then
    the text; an assistant's ``tool_use`` blocks become its ``tool_calls``."""
    texts, calls, results = [], [], []
    for j, block in enumerate(blocks):
        kind = block.get("type") if isinstance(block, dict) else None
        at = f"{where}.{j}"
        if kind == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif kind == "tool_use" and role == "assistant":
            if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str) \
                    or not isinstance(block.get("input"), dict):
                raise bad_request(f"{at}: a tool_use block needs 'id', 'name' and an 'input' object", at)
            calls.append({"id": block["id"], "type": "function",
                          "function": {"name": block["name"], "arguments": orjson.dumps(block["input"]).decode()}})
        elif kind == "tool_result" and role == "user":
            if not isinstance(block.get("tool_use_id"), str):
                raise bad_request(f"{at}.tool_use_id: Field required", f"{at}.tool_use_id")
            content = block.get("content", "")
            text = content if isinstance(content, str) else _text_blocks(content, f"{at}.content")
            if block.get("is_error"):
                text = f"Error: {text}"
            results.append({"role": "tool", "tool_call_id": block["tool_use_id"], "content": text})
        elif kind in ("image", "document", "search_result"):
            raise bad_request(f"{at}: {kind} blocks are not supported: the model served here reads text only",
                              f"{at}.type")
        elif kind in ("thinking", "redacted_thinking"):
            raise bad_request(f"{at}: {kind} blocks are not supported by this server", f"{at}.type")
        else:
            raise bad_request(f"{at}: a {role} message may not hold a {kind!r} block here", f"{at}.type")
    out = results
    if calls:
        out.append({"role": "assistant", "content": "".join(texts) or None, "tool_calls": calls})
    elif texts or not results:
        out.append({"role": role, "content": "".join(texts)})
    return out


def _text_blocks(blocks: Any, where: str) -> str:
    if not isinstance(blocks, list):
        raise bad_request(f"{where}: must be a string or an array of text blocks", where)
    texts = []
    for j, block in enumerate(blocks):
        if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(block.get("text"), str):
            kind = block.get("type") if isinstance(block, dict) else None
            raise bad_request(f"{where}.{j}: only text blocks are supported here, not {kind!r}", f"{where}.{j}")
        texts.append(block["text"])
    return "".join(texts)


def _stop_sequences(value: Any) -> list:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise bad_request("stop_sequences: must be an array of strings", "stop_sequences")
    if len(value) > MAX_STOP_SEQUENCES:
        raise bad_request(f"stop_sequences: this server supports at most {MAX_STOP_SEQUENCES} stop sequences",
                          "stop_sequences")
    return [s for s in value if s]


def _tools(value: Any) -> list:
    if not isinstance(value, list):
        raise bad_request("tools: must be an array", "tools")
    tools = []
    for i, tool in enumerate(value):
        if not isinstance(tool, dict):
            raise bad_request(f"tools.{i}: must be an object", f"tools.{i}")
        if tool.get("type") not in (None, "custom"):
            raise bad_request(f"tools.{i}.type: server tool {tool['type']!r} is not supported by this server; "
                              "only client tools with an input_schema are", f"tools.{i}.type")
        if not isinstance(tool.get("name"), str) or not isinstance(tool.get("input_schema"), dict):
            raise bad_request(f"tools.{i}: a tool needs a 'name' and an 'input_schema' object", f"tools.{i}")
        function = {"name": tool["name"], "parameters": tool["input_schema"]}
        if isinstance(tool.get("description"), str):
            function["description"] = tool["description"]
        tools.append({"type": "function", "function": function})
    return tools


def _tool_choice(value: Any) -> tuple:
    """The chat ``tool_choice`` and ``parallel_tool_calls`` of an Anthropic ``tool_choice``."""
    kind = value.get("type") if isinstance(value, dict) else None
    parallel = None if not isinstance(value, dict) or value.get("disable_parallel_tool_use") is None \
        else not value["disable_parallel_tool_use"]
    if kind == "auto":
        return "auto", parallel
    if kind == "any":
        return "required", parallel
    if kind == "none":
        return "none", parallel
    if kind == "tool" and isinstance(value.get("name"), str):
        return {"type": "function", "function": {"name": value["name"]}}, parallel
    raise bad_request("tool_choice: must be {'type': 'auto' | 'any' | 'none'} or {'type': 'tool', 'name': ...}",
                      "tool_choice")
