"""``POST /v1/embeddings``: the request, validated into an :class:`EmbeddingRequest`, and the
``list`` object of embeddings that answers it.

Validation follows OpenAI's ``CreateEmbeddingRequest``: ``input`` a non-empty string, up to 2048
non-empty strings, an array of token ids or up to 2048 such arrays; ``encoding_format``
``"float"`` (the default) or ``"base64"`` (each vector's float32 values, little-endian, in
base64, as OpenAI sends them); ``dimensions`` a positive integer, which the backend may refuse.
"""

from __future__ import annotations

import base64
import struct
from dataclasses import dataclass
from typing import Any, Optional

from ..errors import bad_request
from .fields import is_tokens, model_of, user_of
from .schema import _opt_int

#: Inputs one request may hold (OpenAI's bound).
MAX_INPUTS = 2048
ENCODINGS = ("float", "base64")


@dataclass
class EmbeddingRequest:
    """A validated embeddings request: ``inputs`` holds one entry per input, each a string or a
    list of token ids; the answer has one vector per input, in this order."""

    model: str
    inputs: list
    raw: dict
    encoding_format: str = "float"
    dimensions: Optional[int] = None
    user: Optional[str] = None


def parse_embedding_request(body: Any) -> EmbeddingRequest:
    """Validate ``body`` (parsed JSON) or raise a 400 :class:`APIError` naming the bad param."""
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.")
    req = EmbeddingRequest(model=model_of(body), inputs=_inputs(body.get("input")), raw=body)
    encoding = body.get("encoding_format")
    if encoding is not None:
        if encoding not in ENCODINGS:
            raise bad_request("'encoding_format' must be 'float' or 'base64'.", "encoding_format")
        req.encoding_format = encoding
    req.dimensions = _opt_int(body, "dimensions", 1)
    req.user = user_of(body)
    return req


def _inputs(value: Any) -> list:
    if isinstance(value, str):
        if not value:
            raise bad_request("'input' must not be an empty string.", "input")
        return [value]
    if not isinstance(value, list) or not value:
        raise bad_request("'input' is required: a string, an array of strings, or token ids.", "input")
    if len(value) > MAX_INPUTS:
        raise bad_request(f"'input' may hold at most {MAX_INPUTS} items; got {len(value)}.", "input")
    if all(isinstance(i, str) for i in value):
        if not all(value):
            raise bad_request("'input' must not contain an empty string.", "input")
        return list(value)
    if is_tokens(value):
        return [list(value)]
    if all(is_tokens(i) for i in value):
        return [list(i) for i in value]
    raise bad_request("'input' must be a string, an array of strings, an array of token ids or an array of such "
                      "arrays (token ids are integers from 0).", "input")


def encode_base64(vector: list) -> str:
    """``vector`` as OpenAI's base64 encoding: float32 values, little-endian."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


def embedding_list(model: str, vectors: list, prompt_tokens: int, encoding_format: str = "float") -> dict:
    """The ``list`` object answering an embeddings request: one ``embedding`` per vector, in
    order, encoded as ``encoding_format`` asks, and the input tokens counted as usage."""
    encode = encode_base64 if encoding_format == "base64" else list
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": encode(v)} for i, v in enumerate(vectors)],
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }
