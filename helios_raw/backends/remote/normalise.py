"""What an upstream answers, made exactly OpenAI's shape whatever the engine behind it omitted.

Every object the remote backend returns satisfies OpenAI's published schema: required fields
are filled (null where unknown, a fresh id where one is missing), ``object`` values are exact,
``finish_reason`` is one of OpenAI's values, ``usage`` has its three counts, tool calls have an
id, type and string arguments. What an upstream adds beyond the schema (llama-server's
``timings``, vLLM's ``stop_reason`` ...) is kept. In a stream every chunk carries the first
chunk's ``id`` and ``created`` (llama-server stamps each with the current second), and usage
comes as OpenAI sends it: alone in a last chunk with empty ``choices``, only when asked for.

Text split inside a character between events is reassembled (see :mod:`.text`); streams are
normalised chunk by chunk (see :mod:`.chunks`).

Errors: an upstream error body in any dialect (OpenAI's, llama-server's and vLLM's whose ``code``
is the HTTP status as a number, vLLM's flat object, plain text) becomes OpenAI's four fields,
``code`` a string (a number written as one) or null; llama-server's ``exceed_context_size_error``
becomes OpenAI's ``invalid_request_error`` with code ``context_length_exceeded``.
"""

from __future__ import annotations

import base64
import struct
import time
from typing import Any, Optional

import orjson

from ...errors import APIError
from ...ids import new_id
from ...openai.embeddings import encode_base64
from .text import decode_json, mend, mend_all

FINISH_REASONS = {
    "chat": ("stop", "length", "tool_calls", "content_filter", "function_call"),
    "text": ("stop", "length", "content_filter"),
}
#: Other engines' names for OpenAI's finish reasons.
_FINISH_SYNONYMS = {"eos": "stop", "stop_sequence": "stop", "end_turn": "stop", "max_tokens": "length",
                    "tool_use": "tool_calls", "abort": "stop"}
SERVICE_TIERS = ("auto", "default", "flex", "scale", "priority", "fast")
OBJECTS = {"chat": "chat.completion", "text": "text_completion"}
ID_PREFIXES = {"chat": "chatcmpl-", "text": "cmpl-"}


class MalformedStream(Exception):
    """The upstream's event stream cannot be decoded."""


# -- decoding ------------------------------------------------------------------------------------


def parse_event(name: str, data: bytes) -> tuple[dict, bool]:
    """``(object, lossy)`` of an event (see :func:`~.text.decode_json`); an event that is not a JSON
    object is a :class:`MalformedStream`, or for an ``error`` event a 502 with its text."""
    try:
        obj, lossy = decode_json(data)
    except ValueError:
        if name == "error":
            raise APIError(502, f"The upstream reported an error: {data[:500].decode('utf-8', 'replace')}",
                           type="server_error", code="upstream_error") from None
        raise MalformedStream("The upstream sent an event that is not JSON.") from None
    if not isinstance(obj, dict):
        raise MalformedStream("The upstream sent an event that is not a JSON object.")
    return obj, lossy


# -- errors --------------------------------------------------------------------------------------


def parse_error_body(body: bytes) -> tuple[Optional[str], Optional[str], Optional[str], Optional[str]]:
    """``(message, type, param, code)`` from an upstream error body, whatever its dialect:
    OpenAI's ``{"error": {...}}``, ``{"error": "text"}``, vLLM's flat ``{"message", "type", ...}``,
    ``{"detail": ...}``, or plain text."""
    try:
        obj = decode_json(body)[0] if body else None
    except ValueError:
        text = body[:500].decode("utf-8", "replace").strip()
        return (text or None), None, None, None
    if not isinstance(obj, dict):
        return None, None, None, None
    return error_fields(obj)


def error_fields(obj: dict) -> tuple[Optional[str], Optional[str], Optional[str], Optional[str]]:
    """``(message, type, param, code)`` of an error object (see :func:`parse_error_body`)."""
    error = obj.get("error", obj)
    if isinstance(error, str):
        return mend(error), None, None, None
    if not isinstance(error, dict):
        return None, None, None, None
    message = error.get("message", error.get("detail"))
    if message is not None and not isinstance(message, str):
        message = orjson.dumps(mend_all(message)).decode()
    type_, param, code = _text(error.get("type")), _text(error.get("param")), _text(error.get("code"))
    if type_ == "exceed_context_size_error":  # llama-server's name for OpenAI's error
        type_, code = "invalid_request_error", "context_length_exceeded"
    return (None if message is None else mend(message)), type_, param, code


def _text(value: Any) -> Optional[str]:
    return None if value is None else mend(value) if isinstance(value, str) else str(value)


# -- whole objects ---------------------------------------------------------------------------------


def completion(obj: dict, kind: str, model: str, lossy: bool = False) -> dict:
    """A ``chat.completion`` (``kind`` "chat") or ``text_completion`` ("text") object
    (``lossy``: see :func:`decode_json`)."""
    if lossy:
        obj = mend_all(obj)
    envelope(obj, model, OBJECTS[kind], str(obj.get("id") or new_id(ID_PREFIXES[kind])), created_of(obj))
    choices = [c for c in obj["choices"] if isinstance(c, dict)]
    for index, choice in enumerate(choices):
        fix_choice(choice, kind, index)
        if kind == "chat":
            choice["message"] = _message(choice.get("message"))
            if choice["message"].get("tool_calls") and choice["finish_reason"] == "stop":
                choice["finish_reason"] = "tool_calls"
        else:
            choice["text"] = choice["text"] if isinstance(choice["text"], str) else ""
            choice["logprobs"] = text_logprobs(choice.get("logprobs"), 0)
        choice["finish_reason"] = choice["finish_reason"] or "stop"
    obj["choices"] = choices
    if "usage" in obj:
        obj["usage"] = usage(obj["usage"])
        if obj["usage"] is None:
            del obj["usage"]
    return obj


def embeddings(obj: dict, model: str, encoding_format: str) -> dict:
    """An embeddings ``list`` object: ``object`` values, ``index`` per item, ``usage``, and each
    vector in ``encoding_format`` whichever the upstream sent (llama-cpp-python's server, for one,
    ignores the one asked for). One vector per token instead of per input (a model without
    pooling) is a 502."""
    data = obj.get("data")
    if not isinstance(data, list):
        raise APIError(502, "The upstream answered an embeddings request without a 'data' array.",
                       type="server_error", code="bad_gateway")
    obj["object"] = "list"
    obj["data"] = [item for item in data if isinstance(item, dict)]
    for index, item in enumerate(obj["data"]):
        item["object"] = "embedding"
        if not is_int(item.get("index")):
            item["index"] = index
        item["embedding"] = _vector(item.get("embedding"), encoding_format)
    if not isinstance(obj.get("model"), str):
        obj["model"] = model
    counted = usage(obj.get("usage"))
    prompt_tokens = counted["prompt_tokens"] if counted else 0
    obj["usage"] = {"prompt_tokens": prompt_tokens, "total_tokens": counted["total_tokens"] if counted else 0}
    return obj


def _vector(value: Any, encoding_format: str) -> Any:
    if isinstance(value, str):
        if encoding_format == "base64":
            return value
        try:
            raw = base64.b64decode(value, validate=True)
            return list(struct.unpack(f"<{len(raw) // 4}f", raw[:len(raw) // 4 * 4]))
        except (ValueError, struct.error):
            pass
    elif isinstance(value, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value):
        return encode_base64(value) if encoding_format == "base64" else value
    elif isinstance(value, list) and value and all(isinstance(x, list) for x in value):
        raise APIError(502, "The upstream answered with one vector per token instead of one per input: its model "
                            "pools no embeddings (use an embedding model, or one with a pooling type).",
                       type="server_error", code="bad_gateway")
    raise APIError(502, "The upstream answered with an embedding that is not a vector of numbers.",
                   type="server_error", code="bad_gateway")


def model_object(obj: dict, created: int, owned_by: str) -> Optional[dict]:
    """A ``model`` object of the upstream's list (None for an entry without an id), with its
    context length as ``context_length`` when the upstream says it (OpenRouter's
    ``context_length``, vLLM's ``max_model_len``, llama-server's ``meta.n_ctx``)."""
    model_id = obj.get("id")
    if not isinstance(model_id, str) or not model_id:
        return None
    obj["object"] = "model"
    if not is_int(obj.get("created")):
        obj["created"] = created
    if not isinstance(obj.get("owned_by"), str):
        obj["owned_by"] = owned_by
    meta = obj.get("meta")
    for length in (obj.get("context_length"), obj.get("max_model_len"),
                   meta.get("n_ctx") if isinstance(meta, dict) else None):
        if is_int(length) and length > 0:
            obj["context_length"] = length
            break
    else:
        obj["context_length"] = None
    return obj


def usage(value: Any) -> Optional[dict]:
    """A ``usage`` object with integer counts (the total computed where missing); None if
    ``value`` holds no counts."""
    if not isinstance(value, dict):
        return None
    prompt, completion_ = value.get("prompt_tokens"), value.get("completion_tokens")
    if not is_int(prompt) and not is_int(completion_):
        return None
    value["prompt_tokens"] = prompt if is_int(prompt) else 0
    value["completion_tokens"] = completion_ if is_int(completion_) else 0
    if not is_int(value.get("total_tokens")):
        value["total_tokens"] = value["prompt_tokens"] + value["completion_tokens"]
    for key in ("prompt_tokens_details", "completion_tokens_details"):
        if key in value:
            details = value[key]
            if isinstance(details, dict) and all(is_int(v) for v in details.values()):
                continue
            del value[key]
    return value


# -- parts ---------------------------------------------------------------------------------------


def envelope(obj: dict, model: str, object_: str, id_: str, created: int) -> None:
    obj["id"] = id_
    obj["object"] = object_
    obj["created"] = created
    if not isinstance(obj.get("model"), str) or not obj["model"]:
        obj["model"] = model
    if not isinstance(obj.get("choices"), list):
        obj["choices"] = []
    if "system_fingerprint" in obj and not isinstance(obj["system_fingerprint"], str):
        del obj["system_fingerprint"]
    if "service_tier" in obj and obj["service_tier"] not in SERVICE_TIERS and obj["service_tier"] is not None:
        del obj["service_tier"]


def created_of(obj: dict) -> int:
    created = obj.get("created")
    return created if is_int(created) else int(time.time())


def fix_choice(choice: dict, kind: str, position: int) -> None:
    if not is_int(choice.get("index")):
        choice["index"] = position
    reason = choice.get("finish_reason")
    if reason is not None:
        reason = _FINISH_SYNONYMS.get(reason, reason) if isinstance(reason, str) else "stop"
        if reason not in FINISH_REASONS[kind]:
            reason = "stop"
    choice["finish_reason"] = reason
    logprobs = choice.get("logprobs")
    if kind == "chat":
        if isinstance(logprobs, dict):
            logprobs.setdefault("content", None)
            logprobs.setdefault("refusal", None)
        else:
            choice["logprobs"] = None
    elif kind == "text" and "text" not in choice:
        choice["text"] = ""


def _message(message: Any) -> dict:
    message = message if isinstance(message, dict) else {}
    message["role"] = "assistant"
    content = message.get("content")
    if isinstance(content, list):  # content parts: their text
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    message["content"] = content if isinstance(content, str) else None
    if not isinstance(message.get("refusal"), str):
        message["refusal"] = None
    calls = message.get("tool_calls")
    if isinstance(calls, list):
        message["tool_calls"] = [_tool_call(call) for call in calls if isinstance(call, dict)]
        if not message["tool_calls"]:
            del message["tool_calls"]
        elif message["content"] == "":  # llama-server's empty text beside tool calls; OpenAI's is null
            message["content"] = None
    elif calls is not None:
        del message["tool_calls"]
    return message


def _tool_call(call: dict) -> dict:
    function = call.get("function") if isinstance(call.get("function"), dict) else {}
    call["function"] = function
    if not isinstance(call.get("id"), str) or not call["id"]:  # llama-server leaves it out
        call["id"] = new_id("call_")
    call["type"] = "function"
    if not isinstance(function.get("name"), str):
        function["name"] = ""
    function["arguments"] = _arguments(function.get("arguments"))
    return call


def tool_call_piece(call: dict, position: int) -> dict:
    if not is_int(call.get("index")):
        call["index"] = position
    if "type" in call:
        call["type"] = "function"
    if isinstance(call.get("function"), dict) and "arguments" in call["function"]:
        call["function"]["arguments"] = _arguments(call["function"]["arguments"])
    return call


def _arguments(value: Any) -> str:
    if isinstance(value, str):
        return value
    return "" if value is None else orjson.dumps(value).decode()


def text_logprobs(logprobs: Any, offset: int) -> Optional[dict]:
    """A text choice's ``logprobs`` in OpenAI's shape (``tokens``, ``token_logprobs``,
    ``top_logprobs``, ``text_offset``): llama-server sends the chat form (``content``, one entry
    per token), which is translated and kept."""
    if not isinstance(logprobs, dict):
        return None
    entries = logprobs.get("content")
    if "tokens" in logprobs or not isinstance(entries, list):
        return logprobs
    entries = [e for e in entries if isinstance(e, dict)]
    tokens = [e.get("token") if isinstance(e.get("token"), str) else "" for e in entries]
    offsets = []
    for token in tokens:
        offsets.append(offset)
        offset += len(token)
    logprobs.update(
        tokens=tokens,
        token_logprobs=[e.get("logprob") for e in entries],
        top_logprobs=[{t["token"]: t.get("logprob") for t in e.get("top_logprobs") or []
                       if isinstance(t, dict) and isinstance(t.get("token"), str)} for e in entries],
        text_offset=offsets,
    )
    return logprobs


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
