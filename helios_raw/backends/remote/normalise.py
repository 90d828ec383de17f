"""What an upstream answers, made exactly OpenAI's shape whatever the engine behind it omitted.

Every object the remote backend returns satisfies OpenAI's published schema: required fields
are filled (null where unknown, a fresh id where one is missing), ``object`` values are exact,
``finish_reason`` is one of OpenAI's values, ``usage`` has its three counts, tool calls have an
id, type and string arguments. What an upstream adds beyond the schema (llama-server's
``timings``, vLLM's ``stop_reason`` ...) is kept. In a stream every chunk carries the first
chunk's ``id`` and ``created`` (llama-server stamps each with the current second), and usage
comes as OpenAI sends it: alone in a last chunk with empty ``choices``, only when asked for.

Text: an upstream that streams raw bytes split inside a UTF-8 character (or a UTF-16 surrogate
pair split between events) has the character reassembled from the two events; bytes that never
complete become U+FFFD. An upstream that already sent U+FFFD in place of split bytes (what
llama-server's JSON writer does with invalid UTF-8) leaves nothing to repair.

Errors: an upstream error body in any dialect (OpenAI's, llama-server's and vLLM's whose ``code``
is the HTTP status as a number, vLLM's flat object, plain text) becomes OpenAI's four fields,
``code`` a string (a number written as one) or null; llama-server's ``exceed_context_size_error``
becomes OpenAI's ``invalid_request_error`` with code ``context_length_exceeded``.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any, Optional

import orjson

from ...errors import APIError
from ...ids import new_id

FINISH_REASONS = {
    "chat": ("stop", "length", "tool_calls", "content_filter", "function_call"),
    "text": ("stop", "length", "content_filter"),
}
#: Other engines' names for OpenAI's finish reasons.
_FINISH_SYNONYMS = {"eos": "stop", "stop_sequence": "stop", "end_turn": "stop", "max_tokens": "length",
                    "tool_use": "tool_calls", "abort": "stop"}
SERVICE_TIERS = ("auto", "default", "flex", "scale", "priority", "fast")
_OBJECTS = {"chat": "chat.completion", "text": "text_completion"}
_ID_PREFIXES = {"chat": "chatcmpl-", "text": "cmpl-"}


class MalformedStream(Exception):
    """The upstream's event stream cannot be decoded."""


# -- decoding ------------------------------------------------------------------------------------


def decode_json(data: bytes) -> tuple[Any, bool]:
    """``(value, lossy)``: the JSON ``data`` holds (ValueError if none). Text that is not valid
    UTF-8 (raw bytes of a split character) or holds a lone surrogate escape is decoded keeping
    those pieces as lone surrogates, and ``lossy`` says so: :func:`mend` or
    :class:`ChunkNormaliser` then turn them into text."""
    try:
        return orjson.loads(data), False
    except orjson.JSONDecodeError:
        return json.loads(data.decode("utf-8", "surrogateescape")), True


def parse_event(name: str, data: bytes) -> tuple[dict, bool]:
    """``(object, lossy)`` of an event (see :func:`decode_json`); an event that is not a JSON
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


_SURROGATE = re.compile("[\ud800-\udfff]")
_ESCAPED_BYTES = re.compile("[\udc80-\udcff]+")
_ESCAPED_TAIL = re.compile("[\udc80-\udcff]{1,3}$")


def mend(text: str) -> str:
    """``text`` with surrogate pairs joined, raw bytes (kept as lone surrogates) decoded as
    UTF-8, and whatever is left over replaced by U+FFFD."""
    if not _SURROGATE.search(text):
        return text
    text = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")
    text = _ESCAPED_BYTES.sub(lambda m: m.group().encode("utf-8", "surrogateescape").decode("utf-8", "replace"), text)
    return _SURROGATE.sub("\ufffd", text)


def split_incomplete(text: str) -> tuple[str, str]:
    """``(head, tail)``: ``tail`` is the unfinished character at the end of ``text`` (the first
    bytes of a UTF-8 sequence, or a high surrogate), kept for the next piece."""
    if text and "\ud800" <= text[-1] <= "\udbff":
        return text[:-1], text[-1]
    found = _ESCAPED_TAIL.search(text)
    if found is None:
        return text, ""
    raw = found.group().encode("utf-8", "surrogateescape")
    for back in range(1, len(raw) + 1):
        byte = raw[-back]
        if byte >= 0xC0:  # a lead byte: does its sequence end past the text?
            need = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return (text[:-back], text[-back:]) if back < need else (text, "")
    return text, ""


def mend_all(node: Any) -> Any:
    """``node`` with :func:`mend` applied to every string in it."""
    if isinstance(node, str):
        return mend(node)
    if isinstance(node, list):
        return [mend_all(item) for item in node]
    if isinstance(node, dict):
        return {key: mend_all(value) for key, value in node.items()}
    return node


# -- errors --------------------------------------------------------------------------------------


def parse_error_body(body: bytes) -> tuple[Optional[str], Optional[str], Optional[str], Optional[str]]:
    """``(message, type, param, code)`` from an upstream error body, whatever its dialect:
    OpenAI's ``{"error": {...}}``, ``{"error": "text"}``, vLLM's flat ``{"message", "type", ...}``,
    ``{"detail": ...}``, or plain text."""
    try:
        obj = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
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
    _envelope(obj, kind, model, _OBJECTS[kind], str(obj.get("id") or new_id(_ID_PREFIXES[kind])), _created(obj))
    choices = [c for c in obj["choices"] if isinstance(c, dict)]
    for index, choice in enumerate(choices):
        _choice(choice, kind, index)
        if kind == "chat":
            choice["message"] = _message(choice.get("message"))
            if choice["message"].get("tool_calls") and choice["finish_reason"] == "stop":
                choice["finish_reason"] = "tool_calls"
        choice["finish_reason"] = choice["finish_reason"] or "stop"
    obj["choices"] = choices
    if "usage" in obj:
        obj["usage"] = usage(obj["usage"])
        if obj["usage"] is None:
            del obj["usage"]
    return obj


def embeddings(obj: dict, model: str) -> dict:
    """An embeddings ``list`` object: ``object`` values, ``index`` per item and ``usage``."""
    data = obj.get("data")
    if not isinstance(data, list):
        raise APIError(502, "The upstream answered an embeddings request without a 'data' array.",
                       type="server_error", code="bad_gateway")
    obj["object"] = "list"
    obj["data"] = [item for item in data if isinstance(item, dict)]
    for index, item in enumerate(obj["data"]):
        item["object"] = "embedding"
        if not _is_int(item.get("index")):
            item["index"] = index
    if not isinstance(obj.get("model"), str):
        obj["model"] = model
    counted = usage(obj.get("usage"))
    prompt_tokens = counted["prompt_tokens"] if counted else 0
    obj["usage"] = {"prompt_tokens": prompt_tokens, "total_tokens": counted["total_tokens"] if counted else 0}
    return obj


def model_object(obj: dict, created: int, owned_by: str) -> Optional[dict]:
    """A ``model`` object of the upstream's list (None for an entry without an id), with its
    context length as ``context_length`` when the upstream says it (OpenRouter's
    ``context_length``, vLLM's ``max_model_len``, llama-server's ``meta.n_ctx``)."""
    model_id = obj.get("id")
    if not isinstance(model_id, str) or not model_id:
        return None
    obj["object"] = "model"
    if not _is_int(obj.get("created")):
        obj["created"] = created
    if not isinstance(obj.get("owned_by"), str):
        obj["owned_by"] = owned_by
    meta = obj.get("meta")
    for length in (obj.get("context_length"), obj.get("max_model_len"),
                   meta.get("n_ctx") if isinstance(meta, dict) else None):
        if _is_int(length) and length > 0:
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
    if not _is_int(prompt) and not _is_int(completion_):
        return None
    value["prompt_tokens"] = prompt if _is_int(prompt) else 0
    value["completion_tokens"] = completion_ if _is_int(completion_) else 0
    if not _is_int(value.get("total_tokens")):
        value["total_tokens"] = value["prompt_tokens"] + value["completion_tokens"]
    for key in ("prompt_tokens_details", "completion_tokens_details"):
        if key in value:
            details = value[key]
            if isinstance(details, dict) and all(_is_int(v) for v in details.values()):
                continue
            del value[key]
    return value


# -- streams -------------------------------------------------------------------------------------


class ChunkNormaliser:
    """Normalises the chunks of one stream (``kind`` "chat" or "text"); see the module docstring.

    :meth:`chunk` takes each upstream chunk and returns the chunks to send (none, one, or two when
    a usage riding on a choice is moved to a chunk of its own); :meth:`finish` returns what the end
    of the stream still owes: text held back for an unfinished character, and the usage chunk.
    """

    def __init__(self, kind: str, model: str, include_usage: bool) -> None:
        self.kind = kind
        self.model = model
        self.include_usage = include_usage
        self.id: Optional[str] = None
        self.created = 0
        self.fingerprint: Optional[str] = None
        self.usage: Optional[dict] = None
        self.usage_sent = False
        self._held: dict[tuple, str] = {}  # (choice index, field) -> unfinished character
        self._offsets: dict[int, int] = {}  # choice index -> text length so far (text logprobs)
        self._lossy = False

    def chunk(self, obj: dict, lossy: bool = False) -> list:
        self._lossy = lossy
        if self.id is None:
            self.id = str(obj.get("id") or new_id(_ID_PREFIXES[self.kind]))
            self.created = _created(obj)
        _envelope(obj, self.kind, self.model, _OBJECTS[self.kind] + ("" if self.kind == "text" else ".chunk"),
                  self.id, self.created)
        self.fingerprint = obj.get("system_fingerprint", self.fingerprint)
        found = usage(obj.pop("usage", None))
        out = []
        choices = [c for c in obj["choices"] if isinstance(c, dict)]
        for position, choice in enumerate(choices):
            _choice(choice, self.kind, position)
            self._text_of(choice)
        obj["choices"] = choices
        if choices or found is None:
            out.append(self._clean(obj))
        if found is not None:
            self.usage = found
            if not choices:
                out.extend(self._usage_chunk(obj))
        return out

    def finish(self) -> list:
        """What the stream still owes at its end (called once, after the upstream's last chunk)."""
        out = []
        for (index, key), held in list(self._held.items()):
            if held:
                out.append(self._bare([self._tail_choice(index, key, mend(held))]))
        self._held.clear()
        if self.usage is not None and not self.usage_sent:
            out.extend(self._usage_chunk(self._bare([])))
        return out

    # -- helpers -------------------------------------------------------------------------------

    def _usage_chunk(self, obj: dict) -> list:
        if not self.include_usage or self.usage_sent or self.usage is None:
            return []
        self.usage_sent = True
        obj["choices"], obj["usage"] = [], self.usage
        return [self._clean(obj)]

    def _bare(self, choices: list) -> dict:
        chunk = {"id": self.id or new_id(_ID_PREFIXES[self.kind]), "created": self.created or int(time.time()),
                 "model": self.model, "choices": choices}
        _envelope(chunk, self.kind, self.model, _OBJECTS[self.kind] + ("" if self.kind == "text" else ".chunk"),
                  chunk["id"], chunk["created"])
        if isinstance(self.fingerprint, str):
            chunk["system_fingerprint"] = self.fingerprint
        return chunk

    def _tail_choice(self, index: int, key: str, text: str) -> dict:
        if self.kind == "text":
            return {"text": text, "index": index, "logprobs": None, "finish_reason": None}
        return {"index": index, "delta": {key: text}, "logprobs": None, "finish_reason": None}

    def _text_of(self, choice: dict) -> None:
        """Reassemble the choice's text across events; convert text logprobs; check the delta."""
        index = choice["index"]
        if self.kind == "text":
            choice["text"] = self._joined(index, "text", choice.get("text"))
            if choice["finish_reason"] is not None:
                choice["text"] += mend(self._held.pop((index, "text"), ""))
            choice["logprobs"] = _text_logprobs(choice.get("logprobs"), self._offsets.get(index, 0))
            self._offsets[index] = self._offsets.get(index, 0) + len(choice["text"])
            return
        delta = choice.get("delta")
        delta = choice["delta"] = delta if isinstance(delta, dict) else {}
        for key in ("content", "reasoning_content", "refusal"):
            if isinstance(delta.get(key), str) or self._held.get((index, key)):
                delta[key] = self._joined(index, key, delta.get(key))
        if delta.get("role") not in (None, "developer", "system", "user", "assistant", "tool"):
            delta.pop("role")
        if isinstance(delta.get("tool_calls"), list):
            delta["tool_calls"] = [_tool_call_piece(call, i) for i, call in enumerate(delta["tool_calls"])
                                   if isinstance(call, dict)]
        if choice["finish_reason"] is not None:
            self._flush(index, delta)

    def _joined(self, index: int, key: str, text: Any) -> str:
        text = text if isinstance(text, str) else ""
        held = self._held.pop((index, key), "")
        if not held and not _SURROGATE.search(text):
            return text
        head, tail = split_incomplete(held + text)
        if tail:
            self._held[(index, key)] = tail
        return mend(head)

    def _flush(self, index: int, delta: dict) -> None:
        for key in ("content", "reasoning_content", "refusal"):
            held = self._held.pop((index, key), "")
            if held:
                delta[key] = (delta.get(key) or "") + mend(held)

    def _clean(self, obj: dict) -> dict:
        """``obj`` without lone surrogates anywhere, when its event held some (its text fields
        are already reassembled)."""
        return mend_all(obj) if self._lossy else obj


# -- parts ---------------------------------------------------------------------------------------


def _envelope(obj: dict, kind: str, model: str, object_: str, id_: str, created: int) -> None:
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


def _created(obj: dict) -> int:
    created = obj.get("created")
    return created if _is_int(created) else int(time.time())


def _choice(choice: dict, kind: str, position: int) -> None:
    if not _is_int(choice.get("index")):
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


def _tool_call_piece(call: dict, position: int) -> dict:
    if not _is_int(call.get("index")):
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


def _text_logprobs(logprobs: Any, offset: int) -> Optional[dict]:
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


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
