"""Parse and validate a ``POST /v1/chat/completions`` body into a :class:`ChatRequest`.

Unknown fields are ignored (and kept in ``raw`` for upstreams that know them); a known field of the
wrong type or out of range is a 400 whose ``param`` names it, as OpenAI does. Beyond types and
ranges, the request is checked as OpenAI checks it: tool messages answer the assistant tool
calls just before them (and every call is answered), tool names match ``[a-zA-Z0-9_-]{1,64}``,
``max_tokens`` and ``max_completion_tokens`` are not both given, content arrays are not empty.
Everything a request may ask of the server is bounded (see :mod:`.limits`), the prompt's size
included, before any of it is rendered or tokenised. Legacy ``functions`` / ``function_call``
become ``tools`` / ``tool_choice`` (see :mod:`.legacy`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from ..errors import bad_request
from .legacy import legacy_history, legacy_tools
from .limits import (
    MAX_JSON_DEPTH,
    MAX_LOGIT_BIAS,
    MAX_MESSAGES,
    MAX_PROMPT_BYTES,
    MAX_STOP,
    MAX_STOP_CHARS,
    MAX_TOKEN_ID,
    MAX_TOOLS,
    SEED_RANGE,
    prompt_bytes,
    too_deep,
)

ROLES = ("system", "developer", "user", "assistant", "tool", "function")
Number = (int, float)
TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]+")
MAX_TOOL_NAME = 64
INT32_MAX = 2 ** 31 - 1


@dataclass
class GenerationRequest:
    """What a chat and a text completion request share: the model asked for, the body as the
    client sent it (``raw``), streaming, the length and how to sample."""

    model: str
    raw: dict
    stream: bool = False
    include_usage: bool = False
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    max_tokens: Optional[int] = None
    stop: list[str] = field(default_factory=list)
    seed: Optional[int] = None
    presence_penalty: Optional[float] = None
    frequency_penalty: Optional[float] = None
    logit_bias: Optional[dict[int, float]] = None
    user: Optional[str] = None
    top_k: Optional[int] = None
    min_p: Optional[float] = None
    repeat_penalty: Optional[float] = None


@dataclass
class ChatRequest(GenerationRequest):
    """A validated chat completion request.

    ``messages`` are normalised dicts: ``role``, ``content`` (a string, or None on an assistant
    message that only calls tools), and where given ``name``, ``tool_calls``, ``tool_call_id``.
    ``max_tokens`` merges ``max_completion_tokens``. ``legacy_functions``: the request used
    ``functions``, so the answer must be given in the legacy shape (see :mod:`.legacy`).
    """

    messages: list[dict] = field(default_factory=list)
    n: int = 1
    response_format: Optional[dict] = None
    tools: Optional[list[dict]] = None
    tool_choice: Union[str, dict, None] = None
    parallel_tool_calls: Optional[bool] = None
    logprobs: bool = False
    top_logprobs: Optional[int] = None
    legacy_functions: bool = False


def checked_body(body: Any) -> dict:
    """``body`` if it is a JSON object nested no deeper than ``MAX_JSON_DEPTH``; else a 400."""
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.")
    deep = too_deep(body)
    if deep is not None:
        where = f" (in '{deep}')" if deep else ""
        raise bad_request(f"The request nests JSON more than {MAX_JSON_DEPTH} levels deep{where}.", deep or None,
                          "invalid_value")
    return body


def read_sampling(req: GenerationRequest, body: dict) -> None:
    """Set ``req``'s streaming and sampling fields from ``body`` (a 400 naming a bad one); the
    length (``max_tokens``) is each route's own."""
    req.stream = _opt_bool(body, "stream") or False
    options = body.get("stream_options")
    if options is not None:
        if not isinstance(options, dict):
            raise bad_request("'stream_options' must be an object.", "stream_options")
        if not req.stream:
            raise bad_request("'stream_options' is only allowed when 'stream' is true.", "stream_options")
        req.include_usage = _opt_bool(options, "include_usage", "stream_options.include_usage") or False
    req.temperature = _opt_number(body, "temperature", 0.0, 2.0)
    req.top_p = _opt_number(body, "top_p", 0.0, 1.0)
    req.presence_penalty = _opt_number(body, "presence_penalty", -2.0, 2.0)
    req.frequency_penalty = _opt_number(body, "frequency_penalty", -2.0, 2.0)
    req.min_p = _opt_number(body, "min_p", 0.0, 1.0)
    req.repeat_penalty = _opt_number(body, "repeat_penalty", 0.0, None)
    req.top_k = _opt_int(body, "top_k", 0, INT32_MAX)
    req.seed = _opt_int(body, "seed", *SEED_RANGE)
    req.stop = _stop(body.get("stop"))
    req.logit_bias = _logit_bias(body.get("logit_bias"))
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise bad_request("'user' must be a string.", "user")
    req.user = user


def parse_chat_request(body: Any) -> ChatRequest:
    """Validate ``body`` (parsed JSON) or raise a 400 :class:`APIError` naming the bad param."""
    body = checked_body(body)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("'model' is required and must be a non-empty string.", "model")
    messages = legacy_history(_messages(body.get("messages")))
    _check_tool_order(messages)
    req = ChatRequest(model=model, messages=messages, raw=body)
    read_sampling(req, body)
    max_tokens = _opt_int(body, "max_completion_tokens", 1)
    legacy_max = _opt_int(body, "max_tokens", 1)
    if max_tokens is not None and legacy_max is not None:
        raise bad_request("Setting 'max_tokens' and 'max_completion_tokens' at the same time is not supported.",
                          "max_tokens", "invalid_parameter_combination")
    req.max_tokens = max_tokens if max_tokens is not None else legacy_max
    n = _opt_int(body, "n", 1)
    req.n = 1 if n is None else n
    if req.n > 1:
        raise bad_request("Only n=1 is supported by this server.", "n", "unsupported_value")
    req.logprobs = _opt_bool(body, "logprobs") or False
    req.top_logprobs = _opt_int(body, "top_logprobs", 0, 20)
    if req.top_logprobs is not None and not req.logprobs:
        raise bad_request("'top_logprobs' requires 'logprobs' to be true.", "top_logprobs")
    req.response_format = _response_format(body.get("response_format"))
    functions, function_call = legacy_tools(body)
    if functions is not None:
        req.legacy_functions = True
        req.tools = _tools(functions, "functions", lambda i: f"functions[{i}]")
        req.tool_choice = _tool_choice(function_call, req.tools, "function_call")
        req.parallel_tool_calls = False
    else:
        req.tools = _tools(body.get("tools"), "tools", lambda i: f"tools[{i}].function")
        req.tool_choice = _tool_choice(body.get("tool_choice"), req.tools, "tool_choice")
        req.parallel_tool_calls = _opt_bool(body, "parallel_tool_calls")
    size = prompt_bytes(messages, req.tools)
    if size > MAX_PROMPT_BYTES:
        raise bad_request(f"The messages and tools hold {size:,} bytes of text; this server accepts at most "
                          f"{MAX_PROMPT_BYTES:,} per request.", "messages", "context_length_exceeded")
    return req


def text_of(content: Union[str, list, None]) -> str:
    """The text of message content: a string, or the ``text`` parts of an array joined."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if part.get("type") == "text")


# -- fields --------------------------------------------------------------------------------------


def _messages(value: Any) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise bad_request("'messages' must be a non-empty array.", "messages")
    if len(value) > MAX_MESSAGES:
        raise bad_request(f"Invalid 'messages': array too long. Expected an array with maximum length "
                          f"{MAX_MESSAGES}, but got an array with length {len(value)} instead.", "messages",
                          "array_above_max_length")
    out = []
    for i, message in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise bad_request(f"'{where}' must be an object.", where)
        role = message.get("role")
        if role not in ROLES:
            raise bad_request(
                f"'{where}.role' must be one of {', '.join(ROLES[:-1])}; got {role!r}.", f"{where}.role")
        content = message.get("content")
        tool_calls = message.get("tool_calls")
        if tool_calls is not None:
            if role != "assistant":
                raise bad_request(f"'{where}.tool_calls' is only allowed on assistant messages.",
                                  f"{where}.tool_calls")
            _tool_calls(tool_calls, f"{where}.tool_calls")
        function_call = message.get("function_call")
        if function_call is not None:
            if role != "assistant" or not _is_call(function_call):
                raise bad_request(f"'{where}.function_call' must be an object with 'name' and 'arguments' strings, "
                                  "on an assistant message.", f"{where}.function_call")
        if content is None:
            if not (role == "assistant" and (tool_calls or function_call)):
                raise bad_request(f"'{where}.content' is required.", f"{where}.content")
        elif isinstance(content, list):
            if not content:
                raise bad_request(f"Invalid '{where}.content': empty array. Expected an array with minimum length 1, "
                                  "but got an empty array instead.", f"{where}.content", "empty_array")
            _content_parts(content, role, f"{where}.content")
        elif not isinstance(content, str):
            raise bad_request(f"'{where}.content' must be a string or an array of content parts.",
                              f"{where}.content")
        clean: dict = {"role": role, "content": content}
        for key in ("name", "tool_call_id"):
            if key in message and message[key] is not None:
                if not isinstance(message[key], str):
                    raise bad_request(f"'{where}.{key}' must be a string.", f"{where}.{key}")
                clean[key] = message[key]
        if role == "tool" and "tool_call_id" not in clean:
            raise bad_request(f"'{where}.tool_call_id' is required on tool messages.", f"{where}.tool_call_id")
        if tool_calls:
            clean["tool_calls"] = tool_calls
        if function_call is not None:
            clean["function_call"] = function_call
        out.append(clean)
    return out


def _check_tool_order(messages: list[dict]) -> None:
    """Tool messages must answer the tool calls of the assistant message just before them
    (other tool messages aside), and every call must be answered before anything else."""
    asking, pending = -1, {}
    for i, message in enumerate(messages):
        if message["role"] == "tool":
            if asking < 0:
                raise bad_request("Invalid parameter: messages with role 'tool' must be a response to a preceding "
                                  "message with 'tool_calls'.", f"messages.[{i}].role")
            call_id = message["tool_call_id"]
            if call_id not in pending:
                raise bad_request(f"Invalid parameter: 'tool_call_id' of '{call_id}' not found in 'tool_calls' of "
                                  "previous message.", f"messages.[{i}].tool_call_id")
            pending[call_id] = True
            continue
        _all_answered(asking, pending)
        asking, pending = -1, {}
        if message["role"] == "assistant" and message.get("tool_calls"):
            asking, pending = i, {call.get("id", ""): False for call in message["tool_calls"]}
    _all_answered(asking, pending)


def _all_answered(asking: int, pending: dict) -> None:
    missing = [call_id for call_id, answered in pending.items() if not answered]
    if missing:
        raise bad_request("An assistant message with 'tool_calls' must be followed by tool messages responding to "
                          "each 'tool_call_id'. The following tool_call_ids did not have response messages: "
                          f"{', '.join(missing)}", f"messages.[{asking}].role")


def _is_call(value: Any) -> bool:
    return isinstance(value, dict) and isinstance(value.get("name"), str) and \
        isinstance(value.get("arguments", ""), str)


def _content_parts(parts: list, role: str, where: str) -> None:
    for j, part in enumerate(parts):
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise bad_request(f"'{where}[{j}]' must be a content part object with a 'type'.", f"{where}[{j}]")
        kind = part["type"]
        if kind == "text" or (kind == "refusal" and role == "assistant"):
            key = "text" if kind == "text" else "refusal"
            if not isinstance(part.get(key), str):
                raise bad_request(f"'{where}[{j}].{key}' must be a string.", f"{where}[{j}].{key}")
        elif kind in ("image_url", "input_audio", "file"):
            if role != "user":
                raise bad_request(f"'{where}[{j}]': {kind} parts are only allowed in user messages.",
                                  f"{where}[{j}].type")
        else:
            raise bad_request(f"'{where}[{j}].type' {kind!r} is not a known content part type.",
                              f"{where}[{j}].type")


def _tool_calls(value: Any, where: str) -> None:
    if not isinstance(value, list):
        raise bad_request(f"'{where}' must be an array.", where)
    for k, call in enumerate(value):
        fn = call.get("function") if isinstance(call, dict) else None
        if not _is_call(fn) or not isinstance(call.get("id", ""), str):
            raise bad_request(
                f"'{where}[{k}]' must be an object with 'id' and 'function' {{'name', 'arguments'}} strings.",
                f"{where}[{k}]")
        _tool_name(fn["name"], f"{where}[{k}].function.name")


def _opt_bool(body: dict, key: str, param: Optional[str] = None) -> Optional[bool]:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise bad_request(f"'{param or key}' must be a boolean.", param or key)
    return value


def _opt_number(body: dict, key: str, low: Optional[float], high: Optional[float]) -> Optional[float]:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, Number):
        raise bad_request(f"'{key}' must be a number.", key)
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"between {low:g} and {high:g}" if high is not None else f"at least {low:g}"
        raise bad_request(f"'{key}' must be {bounds}; got {value}.", key, "invalid_value")
    return float(value)


def _opt_int(body: dict, key: str, low: Optional[int], high: Optional[int] = None) -> Optional[int]:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_request(f"'{key}' must be an integer.", key)
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise bad_request(f"'{key}' must be {bounds}; got {value}.", key, "invalid_value")
    return value


def _stop(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        if len(value) > MAX_STOP:
            raise bad_request(f"'stop' may hold at most {MAX_STOP} sequences.", "stop")
        longest = max(map(len, value), default=0)
        if longest > MAX_STOP_CHARS:
            raise bad_request(f"A 'stop' sequence may be at most {MAX_STOP_CHARS} characters long; got {longest}.",
                              "stop")
        return [s for s in value if s]
    raise bad_request("'stop' must be a string or an array of strings.", "stop")


def _logit_bias(value: Any) -> Optional[dict[int, float]]:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise bad_request("'logit_bias' must be an object mapping token ids to biases.", "logit_bias")
    if len(value) > MAX_LOGIT_BIAS:
        raise bad_request(f"'logit_bias' may hold at most {MAX_LOGIT_BIAS} entries; got {len(value)}.", "logit_bias")
    out = {}
    for token, bias in value.items():
        if not (token.isascii() and token.isdigit() and len(token) <= 10 and int(token) <= MAX_TOKEN_ID):
            raise bad_request(f"'logit_bias' key {token[:20]!r} is not a token id.", "logit_bias")
        token_id = int(token)
        if isinstance(bias, bool) or not isinstance(bias, Number) or not -100 <= bias <= 100:
            raise bad_request(f"'logit_bias' value for token {token} must be a number from -100 to 100.",
                              "logit_bias")
        out[token_id] = float(bias)
    return out


def _response_format(value: Any) -> Optional[dict]:
    if value is None:
        return None
    if not isinstance(value, dict) or value.get("type") not in ("text", "json_object", "json_schema"):
        raise bad_request("'response_format.type' must be 'text', 'json_object' or 'json_schema'.",
                          "response_format")
    if value["type"] == "json_schema":
        spec = value.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise bad_request("'response_format.json_schema' must be an object with a 'name'.",
                              "response_format.json_schema")
        if "schema" in spec and not isinstance(spec["schema"], dict):
            raise bad_request("'response_format.json_schema.schema' must be an object.",
                              "response_format.json_schema.schema")
    return value


def _tools(value: Any, key: str, where) -> Optional[list[dict]]:
    """``tools`` validated (``where(i)`` is the param of tool i's function)."""
    if value is None:
        return None
    if not isinstance(value, list):
        raise bad_request(f"'{key}' must be an array.", key)
    if len(value) > MAX_TOOLS:
        raise bad_request(f"Invalid '{key}': array too long. Expected an array with maximum length {MAX_TOOLS}, "
                          f"but got an array with length {len(value)} instead.", key, "array_above_max_length")
    for i, tool in enumerate(value):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(fn, dict) \
                or not isinstance(fn.get("name"), str):
            raise bad_request(f"'{key}[{i}]' must be {{'type': 'function', 'function': {{'name': ...}}}}.",
                              f"{key}[{i}]")
        _tool_name(fn["name"], f"{where(i)}.name")
        parameters = fn.get("parameters")
        if parameters is not None and (not isinstance(parameters, dict) or parameters.get("type", "object") != "object"):
            got = parameters.get("type") if isinstance(parameters, dict) else type(parameters).__name__
            raise bad_request(f"Invalid schema for function '{fn['name']}': schema must be a JSON Schema of "
                              f"'type: \"object\"', got 'type: \"{got}\"'.", f"{where(i)}.parameters",
                              "invalid_function_parameters")
    return value or None


def _tool_name(name: str, param: str) -> None:
    if len(name) > MAX_TOOL_NAME:
        raise bad_request(f"Invalid '{param}': string too long. Expected a string with maximum length "
                          f"{MAX_TOOL_NAME}, but got a string with length {len(name)} instead.", param,
                          "string_above_max_length")
    if not TOOL_NAME.fullmatch(name):
        raise bad_request(f"Invalid '{param}': string does not match pattern. Expected a string that matches the "
                          "pattern '^[a-zA-Z0-9_-]+$'.", param, "invalid_value")


def _tool_choice(value: Any, tools: Optional[list[dict]], key: str) -> Union[str, dict, None]:
    if value is None:
        return None
    if isinstance(value, str):
        if value not in ("none", "auto", "required"):
            raise bad_request(f"'{key}' must be 'none', 'auto', 'required' or a function object.", key)
        if value == "required" and not tools:
            raise bad_request(f"'{key}' is 'required' but no 'tools' were given.", key)
        return value
    function = value.get("function") if isinstance(value, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str):
        raise bad_request(f"'{key}' must be 'none', 'auto', 'required' or "
                          "{'type': 'function', 'function': {'name': ...}}.", key)
    if not any(t["function"]["name"] == name for t in tools or []):
        raise bad_request(f"'{key}' names function {name!r}, which is not in 'tools'.", key)
    return value
