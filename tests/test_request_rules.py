"""What OpenAI refuses in a chat request, refused the same way (over real sockets, on the tiny model):
tool messages out of order, bad tool names, both token limits, empty content arrays; the bounds on
everything a request can ask of the server; and legacy ``functions`` / ``function_call``, mapped to
tools on the way in and back to the legacy shape by :mod:`helios_raw.openai.legacy`."""

from __future__ import annotations

import json

import pytest

from helios_raw.errors import APIError
from helios_raw.openai.legacy import legacy_chunk, legacy_completion
from helios_raw.openai.limits import MAX_MESSAGES, MAX_PROMPT_BYTES
from helios_raw.openai.objects import ChunkFactory, assistant_message, completion, usage
from helios_raw.openai.schema import parse_chat_request
from tests.conftest import (
    chat_body,
    completion_of,
    error_of,
    post_chat,
    stream_of,
    validate,
)

ADD = {"name": "add", "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}}
CALL = {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": "{\"a\": 1}"}}
CALL_2 = {"id": "call_2", "type": "function", "function": {"name": "add", "arguments": "{\"a\": 2}"}}


def with_messages(*messages) -> dict:
    return {**chat_body(max_tokens=2), "messages": list(messages)}


USER = {"role": "user", "content": "add"}


def asking(*calls) -> dict:
    return {"role": "assistant", "content": None, "tool_calls": list(calls)}


def reply(call_id: str) -> dict:
    return {"role": "tool", "tool_call_id": call_id, "content": "3"}


# -- message order -------------------------------------------------------------------------------


def test_a_tool_message_must_answer_a_tool_call_just_before_it(tiny_server) -> None:
    error = error_of(post_chat(tiny_server.port, with_messages(USER, reply("call_1"))), 400, "messages.[1].role")
    assert "messages with role 'tool' must be a response to a preceding message with 'tool_calls'" in error["message"]
    late = with_messages(USER, asking(CALL), reply("call_1"), {"role": "user", "content": "again"}, reply("call_1"))
    error_of(post_chat(tiny_server.port, late), 400, "messages.[4].role")


def test_a_tool_call_id_must_match_a_call(tiny_server) -> None:
    error = error_of(post_chat(tiny_server.port, with_messages(USER, asking(CALL), reply("call_9"))), 400,
                     "messages.[2].tool_call_id")
    assert "'tool_call_id' of 'call_9' not found in 'tool_calls' of previous message" in error["message"]


def test_every_tool_call_must_be_answered(tiny_server) -> None:
    unanswered = with_messages(USER, asking(CALL, CALL_2), reply("call_2"), {"role": "user", "content": "and?"})
    error = error_of(post_chat(tiny_server.port, unanswered), 400, "messages.[1].role")
    assert "did not have response messages: call_1" in error["message"]
    error_of(post_chat(tiny_server.port, with_messages(USER, asking(CALL))), 400, "messages.[1].role")


def test_answered_tool_calls_in_any_order_are_accepted(tiny_server) -> None:
    body = with_messages(USER, asking(CALL, CALL_2), reply("call_2"), reply("call_1"), USER)
    assert completion_of(tiny_server.port, body)["usage"]["completion_tokens"] == 2


# -- names, token limits, content ----------------------------------------------------------------


@pytest.mark.parametrize("name, code", [("get weather", "invalid_value"), ("météo", "invalid_value"),
                                        ("", "invalid_value"), ("f" * 65, "string_above_max_length")])
def test_tool_names_must_match_openais_pattern(tiny_server, name, code) -> None:
    body = chat_body(tools=[{"type": "function", "function": {"name": name}}])
    error = error_of(post_chat(tiny_server.port, body), 400, "tools[0].function.name")
    assert error["code"] == code
    history = with_messages(USER, asking({**CALL, "function": {"name": name, "arguments": "{}"}}), reply("call_1"))
    error_of(post_chat(tiny_server.port, history), 400, "messages[1].tool_calls[0].function.name")
    ok = chat_body(max_tokens=2, tools=[{"type": "function", "function": {"name": "a-Z_0" + "9" * 59}}])
    assert completion_of(tiny_server.port, ok)["usage"]["completion_tokens"] == 2


def test_parameters_must_describe_an_object(tiny_server) -> None:
    body = chat_body(tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}])
    error = error_of(post_chat(tiny_server.port, body), 400, "tools[0].function.parameters")
    assert error["code"] == "invalid_function_parameters"


@pytest.mark.parametrize("choice", [{"type": "function", "function": 1}, {"type": "function", "function": "add"},
                                    {"type": "function", "function": {"name": 7}}, ["auto"], 3])
def test_a_tool_choice_that_is_no_function_object_is_refused(tiny_server, choice) -> None:
    body = chat_body(tools=[{"type": "function", "function": ADD}], tool_choice=choice)
    assert "'none', 'auto', 'required' or" in error_of(post_chat(tiny_server.port, body), 400, "tool_choice")["message"]


def test_max_tokens_and_max_completion_tokens_together_are_refused(tiny_server) -> None:
    error = error_of(post_chat(tiny_server.port, chat_body(max_tokens=5, max_completion_tokens=5)), 400, "max_tokens")
    assert error["code"] == "invalid_parameter_combination"
    assert "at the same time" in error["message"]


@pytest.mark.parametrize("role", ["user", "system", "tool"])
def test_an_empty_content_array_is_refused(tiny_server, role) -> None:
    messages = [{"role": "user", "content": []}] if role == "user" else \
        [{"role": role, "content": []}, USER] if role == "system" else [USER, asking(CALL), {**reply("call_1"),
                                                                                              "content": []}]
    index = 2 if role == "tool" else 0
    error = error_of(post_chat(tiny_server.port, with_messages(*messages)), 400, f"messages[{index}].content")
    assert error["code"] == "empty_array"


# -- bounds --------------------------------------------------------------------------------------


@pytest.mark.parametrize("fields, param", [
    ({"logit_bias": {"-1": 1}}, "logit_bias"),
    ({"logit_bias": {"1e3": 1}}, "logit_bias"),
    ({"logit_bias": {"9" * 5000: 1}}, "logit_bias"),
    ({"stop": ["x" * 513]}, "stop"),
    ({"stop": "y" * 513}, "stop"),
    ({"top_k": 2 ** 31}, "top_k"),
    ({"seed": 2 ** 63}, "seed"),
    ({"seed": -(2 ** 64)}, "seed"),
    ({"tools": [{"type": "function", "function": {"name": f"f{i}"}} for i in range(129)]}, "tools"),
])
def test_what_reaches_native_code_is_bounded(tiny_server, fields, param) -> None:
    error_of(post_chat(tiny_server.port, chat_body(**fields)), 400, param)


def test_logit_bias_entries_are_counted_before_anything_else() -> None:
    with pytest.raises(APIError, match="at most 1024 entries"):
        parse_chat_request(chat_body(logit_bias={str(i): 1 for i in range(1025)}))


def test_bounds_leave_room_for_real_use(tiny_server) -> None:
    body = chat_body(max_tokens=2, seed=2 ** 63 - 1, stop=["z" * 512], logit_bias={str(i): 0 for i in range(600)},
                     tools=[{"type": "function", "function": {"name": f"f{i}"}} for i in range(128)], tool_choice="none")
    assert completion_of(tiny_server.port, body)["usage"]["completion_tokens"] == 2


def test_message_count_and_prompt_size_are_bounded_before_tokenising(tiny_server) -> None:
    many = with_messages(*[USER] * (MAX_MESSAGES + 1))
    error = error_of(post_chat(tiny_server.port, many), 400, "messages")
    assert error["code"] == "array_above_max_length"
    huge = chat_body("é" * (MAX_PROMPT_BYTES // 2 + 1))
    error = error_of(post_chat(tiny_server.port, huge), 400, "messages")
    assert error["code"] == "context_length_exceeded" and f"{MAX_PROMPT_BYTES:,}" in error["message"]


# -- legacy functions ----------------------------------------------------------------------------


def test_functions_become_tools_and_the_answer_must_be_legacy() -> None:
    request = parse_chat_request(chat_body(functions=[ADD], function_call={"name": "add"}))
    assert request.tools == [{"type": "function", "function": ADD}]
    assert request.tool_choice == {"type": "function", "function": {"name": "add"}}
    assert request.legacy_functions and request.parallel_tool_calls is False
    for choice in ("auto", "none"):
        assert parse_chat_request(chat_body(functions=[ADD], function_call=choice)).tool_choice == choice
    assert not parse_chat_request(chat_body(tools=[{"type": "function", "function": ADD}])).legacy_functions


@pytest.mark.parametrize("fields, param", [
    ({"functions": [ADD], "tools": [{"type": "function", "function": ADD}]}, "functions"),
    ({"function_call": "auto"}, "function_call"),
    ({"functions": [ADD], "function_call": {"name": "sub"}}, "function_call"),
    ({"functions": [{"name": "bad name"}]}, "functions[0].name"),
    ({"functions": []}, "functions"),
])
def test_malformed_legacy_requests_are_refused(tiny_server, fields, param) -> None:
    error_of(post_chat(tiny_server.port, chat_body(**fields)), 400, param)


def test_a_forced_legacy_function_call_calls_it(tiny_server) -> None:
    body = chat_body(max_tokens=200, functions=[ADD], function_call={"name": "add"})
    data = completion_of(tiny_server.port, body)
    message = data["choices"][0]["message"]
    assert "tool_calls" not in message and data["choices"][0]["finish_reason"] == "function_call"
    call = message["function_call"]
    assert call["name"] == "add" and isinstance(json.loads(call["arguments"])["a"], int)
    # streamed: the name in the first fragment, the arguments in pieces, then function_call
    events = stream_of(tiny_server.port, body)
    deltas = [e["choices"][0]["delta"] for e in events[:-1] if e["choices"]]
    calls = [d["function_call"] for d in deltas if "function_call" in d]
    assert calls[0]["name"] == "add" and not any("tool_calls" in d for d in deltas)
    assert isinstance(json.loads("".join(c.get("arguments", "") for c in calls))["a"], int)
    assert events[-2]["choices"][0]["finish_reason"] == "function_call"


def test_legacy_history_is_read_as_tool_calls(tiny_server) -> None:
    history = [USER, {"role": "assistant", "content": None, "function_call": {"name": "add", "arguments": "{}"}},
               {"role": "function", "name": "add", "content": "3"}, USER]
    request = parse_chat_request(with_messages(*history))
    assert request.messages[1]["tool_calls"][0]["function"] == {"name": "add", "arguments": "{}"}
    assert request.messages[2]["role"] == "tool"
    assert request.messages[2]["tool_call_id"] == request.messages[1]["tool_calls"][0]["id"]
    short = completion_of(tiny_server.port, with_messages(USER))
    long = completion_of(tiny_server.port, with_messages(*history))
    assert long["usage"]["prompt_tokens"] > short["usage"]["prompt_tokens"] + 10
    with pytest.raises(APIError):
        parse_chat_request(with_messages(USER, {"role": "user", "content": "x", "function_call": {"name": "f"}}))


def test_legacy_completion_shape() -> None:
    calls = [{"id": "call_a", "type": "function", "function": {"name": "add", "arguments": "{\"a\": 1}"}},
             {"id": "call_b", "type": "function", "function": {"name": "add", "arguments": "{\"a\": 2}"}}]
    original = completion("m", assistant_message(None, calls), "tool_calls", usage(3, 4))
    legacy = legacy_completion(original)
    validate(legacy, "CreateChatCompletionResponse")
    message = legacy["choices"][0]["message"]
    assert message["function_call"] == {"name": "add", "arguments": "{\"a\": 1}"} and "tool_calls" not in message
    assert legacy["choices"][0]["finish_reason"] == "function_call"
    assert original["choices"][0]["message"]["tool_calls"] == calls  # the input is left alone
    text = completion("m", assistant_message("hi"), "stop", usage(3, 1))
    assert legacy_completion(text) == text


def test_legacy_chunk_shape() -> None:
    factory = ChunkFactory("m")
    stream = [
        factory.role(),
        factory.chunk({"tool_calls": [{"index": 0, "id": "call_a", "type": "function",
                                       "function": {"name": "add", "arguments": ""}}]}),
        factory.chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{\"a\": "}}]}),
        factory.chunk({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}),
        factory.chunk({"tool_calls": [{"index": 1, "id": "call_b", "type": "function",
                                       "function": {"name": "add", "arguments": "{}"}}]}),
        factory.finish("tool_calls"),
        factory.usage(usage(3, 4)),
    ]
    legacy = [legacy_chunk(chunk) for chunk in stream]
    assert legacy[4] is None  # only a second call: nothing left
    kept = [chunk for chunk in legacy if chunk is not None]
    for chunk in kept:
        validate(chunk, "CreateChatCompletionStreamResponse")
    deltas = [chunk["choices"][0]["delta"] for chunk in kept if chunk["choices"]]
    assert deltas[1]["function_call"] == {"name": "add", "arguments": ""}
    assert "".join(d.get("function_call", {}).get("arguments", "") for d in deltas) == "{\"a\": 1}"
    assert all("tool_calls" not in d for d in deltas)
    assert kept[-2]["choices"][0]["finish_reason"] == "function_call" and kept[-1]["usage"]["total_tokens"] == 7
    assert stream[1]["choices"][0]["delta"]["tool_calls"][0]["id"] == "call_a"  # the input is left alone


def test_an_unanswered_legacy_function_call_is_left_out() -> None:
    history = [USER, {"role": "assistant", "content": None, "function_call": {"name": "add", "arguments": "{}"}},
               USER]
    request = parse_chat_request(with_messages(*history))
    assert "tool_calls" not in request.messages[1] and "function_call" not in request.messages[1]
    answered_late = history[:2] + [USER, {"role": "function", "name": "add", "content": "3"}]
    assert parse_chat_request(with_messages(*answered_late)).messages[3]["role"] == "function"
