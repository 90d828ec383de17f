"""``POST /v1/completions``: the request, validated into a :class:`CompletionRequest`, and the
``text_completion`` objects that answer it.

Validation follows OpenAI's ``CreateCompletionRequest``: a wrong type or range is a 400 whose
``param`` names the field; unknown fields are ignored (and kept in ``raw`` for an upstream).
``suffix``, ``best_of`` above 1 and ``n`` above 1 are refused with a 400 naming them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Optional

from ..errors import bad_request
from ..ids import new_id
from .fields import is_tokens, model_of
from .schema import GenerationRequest, _opt_bool, _opt_int, checked_body, read_sampling

COMPLETION_ID_PREFIX = "cmpl-"
#: Tokens generated when the request sets no ``max_tokens`` (OpenAI's default for this route).
DEFAULT_MAX_TOKENS = 16
#: The most alternatives ``logprobs`` may ask for per token (OpenAI's bound).
MAX_LOGPROBS = 5


@dataclass
class CompletionRequest(GenerationRequest):
    """A validated text completion request.

    ``prompts`` holds one entry per prompt, each a string or a list of token ids; the answer has
    one choice per prompt, in this order. ``max_tokens`` None means :data:`DEFAULT_MAX_TOKENS`.
    ``logprobs`` None means none; else how many alternatives per token (0 to 5).
    """

    prompts: list = field(default_factory=list)
    logprobs: Optional[int] = None
    echo: bool = False


def parse_completion_request(body: Any) -> CompletionRequest:
    """Validate ``body`` (parsed JSON) or raise a 400 :class:`APIError` naming the bad param."""
    body = checked_body(body)
    req = CompletionRequest(model=model_of(body), prompts=_prompts(body.get("prompt", ...)), raw=body)
    read_sampling(req, body)
    req.max_tokens = _opt_int(body, "max_tokens", 0)
    req.logprobs = _opt_int(body, "logprobs", 0, MAX_LOGPROBS)
    req.echo = _opt_bool(body, "echo") or False
    if (_opt_int(body, "n", 1, 128) or 1) > 1:
        raise bad_request("Only n=1 is supported by this server.", "n", "unsupported_value")
    if (_opt_int(body, "best_of", 0, 20) or 1) > 1:
        raise bad_request("'best_of' above 1 is not supported by this server.", "best_of", "unsupported_value")
    suffix = body.get("suffix")
    if suffix is not None and not isinstance(suffix, str):
        raise bad_request("'suffix' must be a string.", "suffix")
    if suffix:
        raise bad_request("'suffix' (text to insert before) is not supported by this server.", "suffix",
                          "unsupported_value")
    return req


def _prompts(value: Any) -> list:
    if value is ...:
        raise bad_request("'prompt' is required: a string, an array of strings, or token ids.", "prompt")
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not value:
        raise bad_request("'prompt' must be a string, a non-empty array of strings, an array of token ids or an "
                          "array of such arrays.", "prompt")
    if all(isinstance(p, str) for p in value):
        return list(value)
    if is_tokens(value):
        return [list(value)]
    if all(is_tokens(p) for p in value):
        return [list(p) for p in value]
    raise bad_request("'prompt' must be a string, a non-empty array of strings, an array of token ids or an "
                      "array of such arrays (token ids are integers from 0).", "prompt")


# -- objects -------------------------------------------------------------------------------------


def text_choice(index: int, text: str, finish_reason: Optional[str], logprobs: Optional[dict] = None) -> dict:
    """One choice of a ``text_completion`` (``finish_reason`` None inside a stream)."""
    return {"text": text, "index": index, "logprobs": logprobs, "finish_reason": finish_reason}


def text_completion(model: str, choices: list, usage_: Optional[dict], *, id: Optional[str] = None,
                    created: Optional[int] = None, fingerprint: Optional[str] = None) -> dict:
    """A ``text_completion`` object (``choices`` made with :func:`text_choice`)."""
    result = {
        "id": id or new_id(COMPLETION_ID_PREFIX),
        "object": "text_completion",
        "created": created or int(time.time()),
        "model": model,
        "choices": choices,
    }
    if usage_ is not None:
        result["usage"] = usage_
    if fingerprint is not None:  # OpenAI's schema allows it absent, not null
        result["system_fingerprint"] = fingerprint
    return result


def text_logprobs(tokens: list, token_logprobs: list, top_logprobs: list, offset: int = 0) -> dict:
    """The ``logprobs`` of a text choice: per token its text, log-probability and alternatives
    (``{text: logprob}``), and where it starts in the choice's text (counting from ``offset``)."""
    offsets = []
    for token in tokens:
        offsets.append(offset)
        offset += len(token)
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top_logprobs, "text_offset": offsets}


class TextChunkFactory:
    """Makes the chunks of one streamed text completion (one id, one ``created``)."""

    __slots__ = ("id", "created", "model", "fingerprint")

    def __init__(self, model: str, fingerprint: Optional[str] = None) -> None:
        self.id = new_id(COMPLETION_ID_PREFIX)
        self.created = int(time.time())
        self.model = model
        self.fingerprint = fingerprint

    def chunk(self, index: int, text: str, finish_reason: Optional[str] = None,
              logprobs: Optional[dict] = None) -> dict:
        return text_completion(self.model, [text_choice(index, text, finish_reason, logprobs)], None, id=self.id,
                               created=self.created, fingerprint=self.fingerprint)

    def usage(self, usage_: dict) -> dict:
        """The ``include_usage`` chunk: empty ``choices`` and the usage of the whole request."""
        return text_completion(self.model, [], usage_, id=self.id, created=self.created,
                               fingerprint=self.fingerprint)
