"""Requests that used to kill the server, sent to the real server run as a subprocess (so that a
crash shows as a dead process, not a dead test run): a ~200-byte schema whose grammar overflowed
llama.cpp's parser (SIGSEGV), the same in a forced tool's parameters, counts that made the grammar
text grow to gigabytes, and bodies nested deep enough to exhaust Python's stack. Each gets a 400
that names the keyword or field, and the process goes on serving; it exits 0 on SIGTERM."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from benchmarks.load import ServerProcess
from tests.conftest import chat_body, completion_of, error_of, post_chat
from tests.support.rawhttp import get

ROOT = str(Path(__file__).resolve().parent.parent)
SCHEMA_PARAM = "response_format.json_schema.schema"


@pytest.fixture(scope="module")
def served(tiny_model_path):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), HELIOS_API_KEY="")
    server = ServerProcess([sys.executable, "-m", "helios_raw", "--model", str(tiny_model_path), "--model-name",
                            "tiny", "--bind", "127.0.0.1:0", "--no-access-log"], env=env, cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while get(server.port).json().get("status") != "ok":
            assert time.monotonic() < deadline, "the model never loaded"
            time.sleep(0.05)
        yield server
        assert server.process.poll() is None, "".join(server.output[-30:])
    finally:
        code = server.stop()
    assert code == 0, "".join(server.output[-30:])


def still_serving(server) -> None:
    assert server.process.poll() is None, "".join(server.output[-30:])
    assert completion_of(server.port, chat_body(max_tokens=3))["usage"]["completion_tokens"] == 3


def schema_body(schema: dict) -> dict:
    return chat_body(max_tokens=20, response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": schema}})


def forced_tool_body(parameters: dict, required: bool = False) -> dict:
    tool = {"type": "function", "function": {"name": "f", "parameters": parameters}}
    choice = "required" if required else {"type": "function", "function": {"name": "f"}}
    return chat_body(max_tokens=20, tools=[tool], tool_choice=choice)


STRING_20000 = {"type": "string", "maxLength": 20000}
ARRAY_20000 = {"type": "array", "items": {"type": "integer"}, "maxItems": 20000}


@pytest.mark.parametrize("schema, keyword", [
    (STRING_20000, "maxLength"),
    (ARRAY_20000, "maxItems"),
    ({"type": "array", "items": {"type": "integer"}, "maxItems": 1e9}, "maxItems"),
    ({"type": "array", "items": {"type": "string"}, "minItems": 10 ** 12}, "minItems"),
    ({"type": "string", "minLength": 50000}, "minLength"),
    ({"type": "object", "properties": {"deep": {"type": "object", "properties": {"s": STRING_20000}}}}, "maxLength"),
])
def test_schemas_that_crashed_the_process_are_400s_naming_the_keyword(served, schema, keyword) -> None:
    error = error_of(post_chat(served.port, schema_body(schema)), 400, SCHEMA_PARAM)
    assert keyword in error["message"] and error["code"] == "schema_too_large", error
    still_serving(served)


@pytest.mark.parametrize("required", [False, True])
@pytest.mark.parametrize("parameters, keyword", [
    ({"type": "object", "properties": {"s": STRING_20000}}, "maxLength"),
    ({"type": "object", "properties": {"a": ARRAY_20000}, "required": ["a"]}, "maxItems"),
])
def test_the_same_in_a_forced_tools_parameters(served, parameters, keyword, required) -> None:
    error = error_of(post_chat(served.port, forced_tool_body(parameters, required)), 400,
                     "tools[0].function.parameters")
    assert keyword in error["message"], error
    still_serving(served)


@pytest.mark.parametrize("pattern", ["^a{1000000000}$", "^(a{9000}b{9000}){9000}c{9000}d{9000}e{9000}f{9000}$",
                                     "^" + "(" * 40 + "a" + ")" * 40 + "$"])
def test_patterns_whose_grammar_would_be_huge_or_deep_are_400s(served, pattern) -> None:
    error = error_of(post_chat(served.port, schema_body({"type": "string", "pattern": pattern})), 400, SCHEMA_PARAM)
    assert error["code"] in ("schema_too_large", "unsupported_schema"), error
    still_serving(served)


def test_grammars_at_the_limits_are_served(served) -> None:
    # The largest counts allowed give grammars llama.cpp parses (as a chain of rules, not nesting).
    for schema in ({"type": "string", "maxLength": 10000}, {"type": "array", "items": {"type": "integer"},
                                                             "minItems": 1, "maxItems": 10000}):
        assert completion_of(served.port, schema_body(schema))["usage"]["completion_tokens"] > 0
    still_serving(served)


@pytest.mark.parametrize("opening, closing, levels", [
    ('{"anyOf": [', ', {"type": "null"}]}', 500),
    ('{"type": "array", "items": ', "}", 1000),
    ('{"type": "object", "properties": {"x": ', "}}", 500),
])
def test_schemas_nested_1000_deep_are_400s_not_500s(served, opening, closing, levels) -> None:
    # ~1,000 levels of JSON (what the JSON parser accepts), written as text: Python's own json
    # module can't serialise this deep.
    schema = opening * levels + '{"type": "string"}' + closing * levels
    body = json.dumps(schema_body({})).replace('"schema": {}', '"schema": ' + schema)
    error = error_of(post_chat(served.port, body.encode()), 400, "response_format")
    assert "levels deep" in error["message"]
    still_serving(served)


def test_any_field_nested_too_deep_is_a_400_naming_it(served) -> None:
    deep: object = "x"
    for _ in range(300):
        deep = {"a": deep}
    error = error_of(post_chat(served.port, chat_body(metadata=deep)), 400, "metadata")
    assert "64 levels" in error["message"]
    error_of(post_chat(served.port, {**chat_body(), "messages": [{"role": "user", "content": "hi", "x": deep}]}),
             400, "messages")
    # 64 levels are fine (the body itself is the first)
    fine: object = "x"
    for _ in range(62):
        fine = [fine]
    assert completion_of(served.port, chat_body(max_tokens=2, metadata={"a": fine}))["usage"]["completion_tokens"] == 2
    still_serving(served)


def test_deep_fields_are_refused_in_proxy_mode_too() -> None:
    from helios_raw import Config, RemoteConfig, ServerBuilder
    from helios_raw.backends.remote import RemoteBackend
    from tests.support.rawhttp import running

    config = Config()
    config.server.access_log = False
    # An upstream that is never reached: the request is refused while it is parsed.
    backend = RemoteBackend(RemoteConfig(base_url="http://127.0.0.1:9/v1", model_name="m"))
    deep: object = 1
    for _ in range(300):
        deep = [deep]
    with running(ServerBuilder(config).address("127.0.0.1:0").backend(backend).build()) as server:
        error = error_of(post_chat(server.port, chat_body(extra=deep)), 400, "extra")
        assert "levels deep" in error["message"]
        assert json.dumps(error)  # a plain, small error object
