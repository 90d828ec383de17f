"""Builders of the OpenAI objects the server sends: completions, chunks, usage, models."""

from __future__ import annotations

import time
from typing import Optional

from ..ids import new_id

COMPLETION_ID_PREFIX = "chatcmpl-"
TOOL_CALL_ID_PREFIX = "call_"


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict:
    """OpenAI's ``usage``, details included; ``cached_tokens`` of the prompt came from a cache."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0, "accepted_prediction_tokens": 0,
                                      "rejected_prediction_tokens": 0},
    }


def completion(
    model: str,
    message: dict,
    finish_reason: str,
    usage_: dict,
    *,
    id: Optional[str] = None,
    created: Optional[int] = None,
    logprobs: Optional[dict] = None,
    fingerprint: Optional[str] = None,
) -> dict:
    """A ``chat.completion`` object with one choice."""
    result = {
        "id": id or new_id(COMPLETION_ID_PREFIX),
        "object": "chat.completion",
        "created": created or int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": logprobs, "finish_reason": finish_reason}],
        "usage": usage_,
    }
    if fingerprint is not None:  # OpenAI's schema allows it absent, not null
        result["system_fingerprint"] = fingerprint
    return result


def assistant_message(content: Optional[str], tool_calls: Optional[list] = None) -> dict:
    message: dict = {"role": "assistant", "content": content, "refusal": None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return message


class ChunkFactory:
    """Makes the ``chat.completion.chunk`` objects of one stream (one id, one ``created``).

    With ``include_usage`` every chunk carries ``"usage": null`` but the last, :meth:`usage`, as
    OpenAI sends them when ``stream_options.include_usage`` is set."""

    __slots__ = ("id", "created", "model", "fingerprint", "include_usage")

    def __init__(self, model: str, fingerprint: Optional[str] = None, id: Optional[str] = None,
                 include_usage: bool = False) -> None:
        self.id = id or new_id(COMPLETION_ID_PREFIX)
        self.created = int(time.time())
        self.model = model
        self.fingerprint = fingerprint
        self.include_usage = include_usage

    def chunk(self, delta: dict, finish_reason: Optional[str] = None, logprobs: Optional[dict] = None) -> dict:
        return self._envelope([{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}])

    def role(self) -> dict:
        """The first chunk: the assistant role, no content yet."""
        return self.chunk({"role": "assistant", "content": ""})

    def content(self, text: str, logprobs: Optional[dict] = None) -> dict:
        return self.chunk({"content": text}, logprobs=logprobs)

    def finish(self, reason: str) -> dict:
        return self.chunk({}, reason)

    def usage(self, usage_: dict) -> dict:
        """The ``include_usage`` chunk: empty ``choices`` and the usage of the whole request."""
        chunk = self._envelope([])
        chunk["usage"] = usage_
        return chunk

    def _envelope(self, choices: list) -> dict:
        chunk = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if self.fingerprint is not None:  # OpenAI's schema allows it absent, not null
            chunk["system_fingerprint"] = self.fingerprint
        if self.include_usage:
            chunk["usage"] = None
        return chunk


def model_object(model_id: str, created: int, owned_by: str) -> dict:
    return {"id": model_id, "object": "model", "created": created, "owned_by": owned_by}
