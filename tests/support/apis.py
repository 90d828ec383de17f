"""Test support for the Responses and Messages routes: the named-event streams both write, OpenAI's
Responses schemas (``tests/openai_responses_schemas.json``) and the ``anthropic`` SDK's own types
as judges, checked strictly (an unknown or missing field fails)."""

from __future__ import annotations

import json
import pathlib
from functools import lru_cache

import pydantic

from tests.support.rawhttp import Answer, Client

RESPONSES_SCHEMAS = pathlib.Path(__file__).resolve().parent.parent / "openai_responses_schemas.json"


def post_json(port: int, path: str, body, headers=()) -> Answer:
    """POST ``body`` (a dict, or raw bytes) as JSON to ``path`` on a fresh connection."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    with Client(port, timeout=60) as http:
        http.request("POST", path, [("Content-Type", "application/json"), *headers], data)
        return http.read_response("POST")


def named_events(body: bytes) -> list:
    """``(name, data)`` of every event of a named-event SSE body, each exactly
    ``event: <name>\\ndata: <json>\\n\\n`` with the name repeated as the data's ``type``."""
    text = body.decode("utf-8")
    assert text.endswith("\n\n"), text[-300:]
    events = []
    for block in text.split("\n\n")[:-1]:
        head, data = block.split("\n")
        assert head.startswith("event: ") and data.startswith("data: "), block
        name, obj = head[len("event: "):], json.loads(data[len("data: "):])
        assert obj["type"] == name, block
        events.append((name, obj))
    return events


@lru_cache(maxsize=None)
def _validator(name: str):
    import jsonschema

    document = json.loads(RESPONSES_SCHEMAS.read_text())
    schema = {"$defs": document["$defs"], "$ref": f"#/$defs/{name}"}
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


def validate_openai(obj, name: str) -> None:
    """Raise ``jsonschema.ValidationError`` unless ``obj`` is a valid OpenAI ``name`` object."""
    _validator(name).validate(obj)


def validate_anthropic(kind, obj: dict):
    """``obj`` parsed as the ``anthropic`` SDK type ``kind`` (a model class or a union) in strict
    mode; fails on a field the type doesn't declare, anywhere inside, and on a missing one."""
    value = pydantic.TypeAdapter(kind).validate_python(obj, strict=True)
    _no_extras(value, obj, kind.__name__ if hasattr(kind, "__name__") else "event")
    return value


def _no_extras(value, raw, where: str) -> None:
    if isinstance(value, pydantic.BaseModel):
        assert not value.model_extra, f"{where}: fields the SDK's types don't know: {sorted(value.model_extra)}"
        assert set(raw) == value.model_fields_set, (where, set(raw), value.model_fields_set)
        for name in value.model_fields_set:
            _no_extras(getattr(value, name), raw[name], f"{where}.{name}")
    elif isinstance(value, list):
        for i, (item, raw_item) in enumerate(zip(value, raw)):
            _no_extras(item, raw_item, f"{where}[{i}]")
