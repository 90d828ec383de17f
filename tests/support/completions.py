"""Test support for ``/v1/completions`` and ``/v1/embeddings``: requests over real sockets and the
judges of what comes back, OpenAI's schemas (``tests/openai_schemas.json``).

OpenAI streams a text completion as ``text_completion`` objects whose ``finish_reason`` is null
until a choice's last chunk; its published schema has no stream variant and requires a
``finish_reason`` value, so a chunk is judged by ``CreateCompletionResponse`` with that one field
also allowed null. An embedding in base64 is judged by ``Embedding`` with ``embedding`` also
allowed a string (the schema knows only the float form). An echoed prompt's first token has no
log-probability: OpenAI (and llama-cpp-python's server) answer null there, which the schema does
not allow; such an answer is judged with that first entry left out.
"""

from __future__ import annotations

import base64
import copy
import json
import struct
from functools import lru_cache

from tests.conftest import SCHEMAS_PATH, sse_events, validate
from tests.support.apis import post_json


@lru_cache(maxsize=None)
def _variant(name: str):
    import jsonschema

    document = json.loads(SCHEMAS_PATH.read_text())
    defs = copy.deepcopy(document["$defs"])
    if name == "text chunk":
        reason = defs["CreateCompletionResponse"]["properties"]["choices"]["items"]["properties"]["finish_reason"]
        reason["anyOf"] = [{"type": reason.pop("type"), "enum": reason.pop("enum")}, {"type": "null"}]
        root = "CreateCompletionResponse"
    else:
        vector = defs["Embedding"]["properties"]["embedding"]
        defs["Embedding"]["properties"]["embedding"] = {"anyOf": [vector, {"type": "string"}]}
        root = "CreateEmbeddingResponse"
    return jsonschema.Draft202012Validator({"$defs": defs, "$ref": f"#/$defs/{root}"})


def validate_text_chunk(obj: dict) -> None:
    _variant("text chunk").validate(obj)


def validate_embeddings(obj: dict) -> None:
    """A ``list`` of embeddings, float or base64."""
    if all(isinstance(item.get("embedding"), list) for item in obj.get("data", [])):
        validate(obj, "CreateEmbeddingResponse")
    _variant("embeddings").validate(obj)


def text_completion(port: int, body: dict) -> dict:
    """The validated ``text_completion`` answering ``body``."""
    answer = post_json(port, "/v1/completions", body)
    assert answer.status == 200, answer.body
    validate(_without_unscored_first_token(answer.json()), "CreateCompletionResponse")
    return answer.json()


def _without_unscored_first_token(obj: dict) -> dict:
    obj = copy.deepcopy(obj)
    for choice in obj.get("choices") or []:
        logprobs = choice.get("logprobs")
        if logprobs and logprobs["token_logprobs"][:1] == [None] and logprobs["top_logprobs"][:1] == [None]:
            for key in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
                logprobs[key] = logprobs[key][1:]
    return obj


def text_stream(port: int, body: dict) -> list:
    """The chunks of a streamed text completion (``[DONE]`` checked last and once, dropped)."""
    answer = post_json(port, "/v1/completions", {**body, "stream": True})
    assert answer.status == 200, answer.body
    assert answer.header("content-type") == "text/event-stream"
    events = sse_events(answer.body)
    assert events[-1] == "[DONE]" and "[DONE]" not in events[:-1], events
    for event in events[:-1]:
        assert "error" not in event, event
        validate_text_chunk(event)
    return events[:-1]


def streamed_text(chunks: list, index: int = 0) -> str:
    return "".join(c["text"] for chunk in chunks for c in chunk["choices"] if c["index"] == index)


def embeddings(port: int, body: dict) -> dict:
    answer = post_json(port, "/v1/embeddings", body)
    assert answer.status == 200, answer.body
    validate_embeddings(answer.json())
    return answer.json()


def floats(embedding) -> list:
    """An embedding as floats, whether it came as floats or base64."""
    if isinstance(embedding, list):
        return embedding
    raw = base64.b64decode(embedding)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))
