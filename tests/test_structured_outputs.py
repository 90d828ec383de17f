"""Structured outputs on the local model: whatever the (random-weight) tiny model samples, at several
seeds and temperatures, a finished answer is JSON valid against the schema (checked with
jsonschema, formats included): integer and number ranges, formats such as ``email``, recursion
through ``$ref: "#"``, patterns. What a grammar can't enforce is still refused, and a forced tool
without parameters gets ``{}``."""

from __future__ import annotations

import json

import jsonschema
import pytest

from tests.conftest import chat_body, completion_of, error_of, post_chat

SAMPLES = [(0.0, 1), (0.7, 2), (0.7, 3), (1.0, 4), (1.5, 5), (1.5, 6)]
TREE = {"type": "object", "additionalProperties": False, "required": ["name"],
        "properties": {"name": {"type": "string", "maxLength": 6},
                       "children": {"type": "array", "maxItems": 2, "items": {"$ref": "#"}}}}

SCHEMAS = {
    "integer ranges": {"type": "object", "additionalProperties": False, "required": ["n", "m", "k"], "properties": {
        "n": {"type": "integer", "minimum": -20, "maximum": 300},
        "m": {"type": "integer", "exclusiveMinimum": 5, "exclusiveMaximum": 9},
        "k": {"type": "integer", "minimum": 1000}}},
    "number ranges": {"type": "array", "minItems": 3, "maxItems": 3, "items": {
        "type": "number", "minimum": -2.5, "exclusiveMaximum": 3.5}},
    "email": {"type": "object", "required": ["to"], "properties": {"to": {"type": "string", "format": "email"}}},
    "formats": {"type": "array", "prefixItems": [{"type": "string", "format": f} for f in
                                                 ("date", "date-time", "time", "uuid", "ipv4", "hostname")],
                "items": False},
    "recursion through #": TREE,
    "recursion through $defs": {"$ref": "#/$defs/list", "$defs": {"list": {
        "anyOf": [{"type": "null"}, {"type": "object", "required": ["head", "tail"], "additionalProperties": False,
                                     "properties": {"head": {"type": "boolean"}, "tail": {"$ref": "#/$defs/list"}}}]}}},
    "pattern": {"type": "string", "pattern": "^[A-Z]{2}-\\d{3}(-[a-z]+)?$"},
    "optional and extra keys": {"type": "object", "properties": {"a": {"type": "integer", "maximum": 5},
                                                                 "b": {"enum": ["x", "y"]}},
                                "additionalProperties": {"type": "boolean"}},
}


def answers(port: int, schema: dict, max_tokens: int = 600) -> list:
    """The (content, finish_reason) of the answers at each sampling setting."""
    out = []
    for temperature, seed in SAMPLES:
        body = chat_body("Give me JSON.", max_tokens=max_tokens, temperature=temperature, seed=seed, top_k=0,
                         response_format={"type": "json_schema", "json_schema": {"name": "t", "schema": schema}})
        choice = completion_of(port, body)["choices"][0]
        out.append((choice["message"]["content"], choice["finish_reason"]))
    return out


@pytest.mark.parametrize("schema", SCHEMAS.values(), ids=SCHEMAS.keys())
def test_answers_are_valid_against_the_schema(tiny_server, schema) -> None:
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    results = answers(tiny_server.port, schema)
    finished = [content for content, reason in results if reason == "stop"]
    assert len(finished) >= len(results) // 2, results
    for content in finished:
        validator.validate(json.loads(content))
        assert content == content.strip()  # no whitespace around the value


def test_integer_bounds_are_met_exactly(tiny_server) -> None:
    schema = {"type": "array", "minItems": 6, "maxItems": 6, "items": {"type": "integer", "minimum": 98,
                                                                       "maximum": 101}}
    seen = set()
    for content, reason in answers(tiny_server.port, schema):
        assert reason == "stop"
        values = json.loads(content)
        assert all(98 <= v <= 101 for v in values)
        seen.update(values)
    assert len(seen) >= 2  # the whole range is open to the model, not a single value


@pytest.mark.parametrize("schema, words", [
    ({"anyOf": [{"$ref": "#"}, {"type": "string"}]}, "left-recursive"),
    ({"type": "object", "properties": {"again": {"$ref": "#"}}, "required": ["again"]}, "no finite value"),
    ({"type": "number", "minimum": 0.1, "maximum": 0.9}, "whole number"),
    ({"type": "integer", "minimum": 5, "maximum": 4}, "no integer"),
    ({"type": "string", "pattern": "^(?=a)b$"}, "lookaround"),
    ({"type": "string", "pattern": "^(a)\\1$"}, "\\1"),
    ({"type": "integer", "multipleOf": 2}, "multipleOf"),
    ({"type": "string", "format": "ipv6"}, "ipv6"),
    ({"type": "string", "format": "email", "maxLength": 10}, "format"),
])
def test_what_a_grammar_cant_enforce_is_refused_saying_why(tiny_server, schema, words) -> None:
    body = chat_body(response_format={"type": "json_schema", "json_schema": {"name": "t", "schema": schema}})
    error = error_of(post_chat(tiny_server.port, body), 400, "response_format.json_schema.schema")
    assert words in error["message"] and error["code"] == "unsupported_schema", error


def test_reference_chains_are_bounded(tiny_server) -> None:
    defs = {f"d{i}": {"$ref": f"#/$defs/d{i + 1}"} for i in range(200)}
    defs["d200"] = {"type": "string"}
    body = chat_body(response_format={"type": "json_schema", "json_schema": {
        "name": "t", "schema": {"$defs": defs, "$ref": "#/$defs/d0"}}})
    error = error_of(post_chat(tiny_server.port, body), 400, "response_format.json_schema.schema")
    assert error["code"] == "schema_too_large" and "nests deeper" in error["message"]


def forced_call(port: int, function: dict) -> dict:
    body = chat_body(max_tokens=200, tools=[{"type": "function", "function": function}],
                     tool_choice={"type": "function", "function": {"name": function["name"]}})
    choice = completion_of(port, body)["choices"][0]
    assert choice["finish_reason"] == "tool_calls", choice
    (call,) = choice["message"]["tool_calls"]
    return call["function"]


def test_a_forced_tool_without_parameters_gets_empty_arguments(tiny_server) -> None:
    for temperature, seed in SAMPLES:
        assert forced_call(tiny_server.port, {"name": "ping"})["arguments"] == "{}"
    empty = {"name": "ping", "parameters": {"type": "object", "properties": {}}}
    assert forced_call(tiny_server.port, empty)["arguments"] == "{}"


def test_forced_tool_parameters_are_enforced_and_unenforceable_keywords_dropped(tiny_server) -> None:
    function = {"name": "book", "parameters": {"type": "object", "required": ["day", "seats"], "properties": {
        "day": {"type": "string", "format": "date"}, "seats": {"type": "integer", "minimum": 1, "maximum": 4,
                                                             "multipleOf": 1}}}}
    arguments = json.loads(forced_call(tiny_server.port, function)["arguments"])
    jsonschema.validate(arguments, function["parameters"], format_checker=jsonschema.FormatChecker())
