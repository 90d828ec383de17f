"""Parse and validate a ``POST /v1/chat/completions`` body into a :class:`ChatRequest`.

Unknown fields are ignored (and kept in ``raw`` for upstreams that know them); a known field of the
wrong type or out of range is a 400 whose ``param`` names it, as OpenAI does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Union

from ..errors import bad_request

ROLES = ("system", "developer", "user", "assistant", "tool", "function")
Number = (int, float)


@dataclass
class ChatRequest:
    """A validated chat completion request.

    ``messages`` are normalised dicts: ``role``, ``content`` (a string, or None on an assistant
    message that only calls tools), and where given ``name``, ``tool_calls``, ``tool_call_id``.
    ``max_tokens`` merges ``max_completion_tokens``. ``raw`` is the body as the client sent it.
    """

    model: str
    messages: list[dict]
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
    n: int = 1
    response_format: Optional[dict] = None
    tools: Optional[list[dict]] = None
    tool_choice: Union[str, dict, None] = None
    parallel_tool_calls: Optional[bool] = None
    logprobs: bool = False
    top_logprobs: Optional[int] = None
    user: Optional[str] = None
    top_k: Optional[int] = None
    min_p: Optional[float] = None
    repeat_penalty: Optional[float] = None


def parse_chat_request(body: Any) -> ChatRequest:
    """Validate ``body`` (parsed JSON) or raise a 400 :class:`APIError` naming the bad param."""
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("'model' is required and must be a non-empty string.", "model")
    messages = _messages(body.get("messages"))
    req = ChatRequest(model=model, messages=messages, raw=body)

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
    req.top_k = _opt_int(body, "top_k", 0)
    req.seed = _opt_int(body, "seed", None)
    max_tokens = _opt_int(body, "max_completion_tokens", 1)
    legacy_max = _opt_int(body, "max_tokens", 1)
    req.max_tokens = max_tokens if max_tokens is not None else legacy_max
    n = _opt_int(body, "n", 1)
    req.n = 1 if n is None else n
    if req.n > 1:
        raise bad_request("Only n=1 is supported by this server.", "n", "unsupported_value")
    req.stop = _stop(body.get("stop"))
    req.logit_bias = _logit_bias(body.get("logit_bias"))
    req.logprobs = _opt_bool(body, "logprobs") or False
    req.top_logprobs = _opt_int(body, "top_logprobs", 0, 20)
    if req.top_logprobs is not None and not req.logprobs:
        raise bad_request("'top_logprobs' requires 'logprobs' to be true.", "top_logprobs")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise bad_request("'user' must be a string.", "user")
    req.user = user
    req.response_format = _response_format(body.get("response_format"))
    req.tools = _tools(body.get("tools"))
    req.tool_choice = _tool_choice(body.get("tool_choice"), req.tools)
    req.parallel_tool_calls = _opt_bool(body, "parallel_tool_calls")
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
        if content is None:
            if not (role == "assistant" and (tool_calls or message.get("function_call"))):
                raise bad_request(f"'{where}.content' is required.", f"{where}.content")
        elif isinstance(content, list):
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
        out.append(clean)
    return out


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
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not isinstance(
                fn.get("arguments", ""), str) or not isinstance(call.get("id", ""), str):
            raise bad_request(
                f"'{where}[{k}]' must be an object with 'id' and 'function' {{'name', 'arguments'}} strings.",
                f"{where}[{k}]")


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
        return [value] if value else []
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        if len(value) > 4:
            raise bad_request("'stop' may hold at most 4 sequences.", "stop")
        return [s for s in value if s]
    raise bad_request("'stop' must be a string or an array of strings.", "stop")


def _logit_bias(value: Any) -> Optional[dict[int, float]]:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise bad_request("'logit_bias' must be an object mapping token ids to biases.", "logit_bias")
    out = {}
    for token, bias in value.items():
        try:
            token_id = int(token)
        except (TypeError, ValueError):
            raise bad_request(f"'logit_bias' key {token!r} is not a token id.", "logit_bias") from None
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


def _tools(value: Any) -> Optional[list[dict]]:
    if value is None:
        return None
    if not isinstance(value, list):
        raise bad_request("'tools' must be an array.", "tools")
    for i, tool in enumerate(value):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(fn, dict) \
                or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise bad_request(f"'tools[{i}]' must be {{'type': 'function', 'function': {{'name': ...}}}}.",
                              f"tools[{i}]")
        if "parameters" in fn and not isinstance(fn["parameters"], dict):
            raise bad_request(f"'tools[{i}].function.parameters' must be a JSON schema object.",
                              f"tools[{i}].function.parameters")
    return value or None


def _tool_choice(value: Any, tools: Optional[list[dict]]) -> Union[str, dict, None]:
    if value is None:
        return None
    if isinstance(value, str):
        if value not in ("none", "auto", "required"):
            raise bad_request("'tool_choice' must be 'none', 'auto', 'required' or a function object.",
                              "tool_choice")
        if value == "required" and not tools:
            raise bad_request("'tool_choice' is 'required' but no 'tools' were given.", "tool_choice")
        return value
    name = value.get("function", {}).get("name") if isinstance(value, dict) else None
    if not isinstance(name, str):
        raise bad_request("'tool_choice' must be 'none', 'auto', 'required' or "
                          "{'type': 'function', 'function': {'name': ...}}.", "tool_choice")
    if not any(t["function"]["name"] == name for t in tools or []):
        raise bad_request(f"'tool_choice' names function {name!r}, which is not in 'tools'.", "tool_choice")
    return value
