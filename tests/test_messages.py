"""Anthropic's Messages API over the local backend (the tiny test model), over real sockets: the
official ``anthropic`` client unmodified, and raw HTTP where the exact bytes matter. Every message,
event and error is validated against the SDK's own types, strictly (no unknown or missing field)."""

from __future__ import annotations

import json

import anthropic
import pytest
from anthropic.types import (
    ErrorResponse,
    Message,
    MessageTokensCount,
    RawMessageStreamEvent,
)

from tests.conftest import local_server
from tests.support.apis import named_events, post_json, validate_anthropic
from tests.support.rawhttp import Client, build_server, running

WEATHER = {"name": "get_weather", "description": "Weather for a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}},
                            "required": ["city"], "additionalProperties": False}}
HELLO = [{"role": "user", "content": "hello world"}]
GREEDY = {"temperature": 0}  # the API's sampling fields, which this SDK version no longer declares


@pytest.fixture(scope="module")
def server(tiny_model_path):
    with local_server(tiny_model_path) as server:
        yield server


@pytest.fixture(scope="module")
def client(server):
    return anthropic.Anthropic(base_url=f"http://127.0.0.1:{server.port}", api_key="unused", max_retries=0,
                               timeout=60)


def post(port: int, body, path: str = "/v1/messages", headers=()):
    return post_json(port, path, body, headers)


def message_of(port: int, body: dict) -> dict:
    answer = post(port, body)
    assert answer.status == 200, answer.body
    message = answer.json()
    validate_anthropic(Message, message)
    assert message["stop_reason"] is not None and "stop_sequence" in message
    return message


def events_of(port: int, body: dict) -> list:
    """The validated events of a streamed answer, ``ping`` included."""
    answer = post(port, {**body, "stream": True})
    assert answer.status == 200, answer.body
    assert answer.header("content-type") == "text/event-stream"
    events = named_events(answer.body)
    for name, data in events:
        if name == "ping":
            assert data == {"type": "ping"}
        else:
            validate_anthropic(RawMessageStreamEvent, data)
    return events


def error_of(answer, status: int, kind: str) -> str:
    assert answer.status == status, answer.body
    validate_anthropic(ErrorResponse, answer.json())
    assert answer.json()["error"]["type"] == kind, answer.json()
    return answer.json()["error"]["message"]


# -- text -----------------------------------------------------------------------------------------


def test_text_answer_cut_by_max_tokens(server, client) -> None:
    message = message_of(server.port, {"model": "tiny", "max_tokens": 8, "messages": HELLO, "temperature": 0})
    assert message["type"] == "message" and message["role"] == "assistant" and message["id"].startswith("msg_")
    assert message["stop_reason"] == "max_tokens" and message["stop_sequence"] is None
    (block,) = message["content"]
    assert block["type"] == "text" and block["text"]
    assert message["usage"]["output_tokens"] == 8 and message["usage"]["input_tokens"] > 0

    sdk = client.messages.create(model="tiny", max_tokens=8, messages=HELLO, extra_body=GREEDY)
    assert sdk.content[0].text == block["text"] and sdk.stop_reason == "max_tokens"  # greedy: same text


def test_system_blocks_with_cache_marks_reach_the_model(server) -> None:
    plain = message_of(server.port, {"model": "tiny", "max_tokens": 1, "messages": HELLO})
    framed = message_of(server.port, {
        "model": "tiny", "max_tokens": 1, "messages": [
            {"role": "user", "content": [{"type": "text", "text": "hello", "cache_control": {"type": "ephemeral"}}]},
            {"role": "assistant", "content": "hi"}, {"role": "user", "content": "hello world"}],
        "system": [{"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}}]})
    assert framed["usage"]["input_tokens"] > plain["usage"]["input_tokens"] + 10


def test_streamed_events_in_anthropics_order(server, client) -> None:
    body = {"model": "tiny", "max_tokens": 6, "messages": HELLO, "temperature": 0}
    events = events_of(server.port, body)
    names = [name for name, _ in events]
    deltas = [data["delta"]["text"] for name, data in events if name == "content_block_delta"]
    assert names == (["message_start", "ping", "content_block_start"] + ["content_block_delta"] * len(deltas)
                     + ["content_block_stop", "message_delta", "message_stop"])
    assert 1 <= len(deltas) <= 6
    start = events[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None and start["usage"]["output_tokens"] == 0
    assert events[2][1] == {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    delta = events[-2][1]
    assert delta["delta"] == {"stop_reason": "max_tokens", "stop_sequence": None}
    assert delta["usage"]["output_tokens"] == 6 and delta["usage"]["input_tokens"] > 0

    with client.messages.stream(model="tiny", max_tokens=6, messages=HELLO, extra_body=GREEDY) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "".join(deltas) == final.content[0].text
    assert final.stop_reason == "max_tokens" and final.usage.input_tokens == delta["usage"]["input_tokens"]


def test_stop_sequences_end_the_answer_where_they_begin(server, client) -> None:
    full = client.messages.create(model="tiny", max_tokens=30, messages=HELLO, extra_body=GREEDY).content[0].text
    stop = full[len(full) // 2:len(full) // 2 + 3]
    cut = client.messages.create(model="tiny", max_tokens=30, messages=HELLO, extra_body=GREEDY, stop_sequences=[stop])
    assert cut.content[0].text == full[:full.index(stop)]
    assert cut.stop_reason != "max_tokens" and cut.usage.output_tokens < 30
    with client.messages.stream(model="tiny", max_tokens=30, messages=HELLO,
                                stop_sequences=[stop], extra_body=GREEDY) as stream:
        assert "".join(stream.text_stream) == full[:full.index(stop)]
        assert stream.get_final_message().stop_reason == cut.stop_reason


# -- tools ----------------------------------------------------------------------------------------


def test_forced_tool_use_round_trip_with_tool_result(server, client) -> None:
    question = {"role": "user", "content": "What's the weather in Paris?"}
    first = client.messages.create(model="tiny", max_tokens=200, tools=[WEATHER], messages=[question],
                                   tool_choice={"type": "tool", "name": "get_weather"})
    validate_anthropic(Message, first.model_dump(mode="json", exclude_unset=True))
    assert first.stop_reason == "tool_use"
    (use,) = first.content
    assert use.type == "tool_use" and use.name == "get_weather" and use.input["city"] in ("Paris", "Rome")

    second = client.messages.create(model="tiny", max_tokens=4, tools=[WEATHER], messages=[
        question, {"role": "assistant", "content": [use.model_dump(exclude_unset=True)]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "18 and sunny"},
                                     {"type": "text", "text": "Thanks."}]}])
    assert second.stop_reason == "max_tokens" and second.content[0].type == "text"
    assert second.usage.input_tokens > first.usage.input_tokens  # the call and its result were read

    events = events_of(server.port, {"model": "tiny", "max_tokens": 200, "tools": [WEATHER], "messages": [question],
                                     "tool_choice": {"type": "any"}})
    names = [name for name, _ in events]
    assert names[:3] == ["message_start", "ping", "content_block_start"] and names[-3:] == [
        "content_block_stop", "message_delta", "message_stop"]
    block = events[2][1]["content_block"]
    assert block["type"] == "tool_use" and block["name"] == "get_weather" and block["input"] == {}
    partial = "".join(d["delta"]["partial_json"] for n, d in events if n == "content_block_delta")
    assert json.loads(partial)["city"] in ("Paris", "Rome")
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"

    with client.messages.stream(model="tiny", max_tokens=200, tools=[WEATHER], messages=[question],
                                tool_choice={"type": "any"}) as stream:
        final = stream.get_final_message()
    assert final.content[0].type == "tool_use" and final.content[0].input == json.loads(partial)


def test_output_config_format_is_enforced(server, client) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string", "enum": ["Oslo", "Lima"]}},
              "required": ["city"], "additionalProperties": False}
    message = client.messages.create(model="tiny", max_tokens=60, messages=HELLO,
                                     output_config={"format": {"type": "json_schema", "schema": schema}})
    assert message.stop_reason == "end_turn" and json.loads(message.content[0].text)["city"] in ("Oslo", "Lima")


def test_count_tokens_counts_what_the_model_reads(server, client) -> None:
    for params in ({"messages": HELLO}, {"messages": HELLO, "system": "Be brief.", "tools": [WEATHER]}):
        counted = client.messages.count_tokens(model="tiny", **params)
        validate_anthropic(MessageTokensCount, counted.model_dump(exclude_unset=True))
        answered = client.messages.create(model="tiny", max_tokens=1, **params)
        assert counted.input_tokens == answered.usage.input_tokens > 0


# -- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("fields, word", [
    ({"max_tokens": None}, "max_tokens"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": {
        "type": "base64", "media_type": "image/png", "data": "AA=="}}]}]}, "image"),
    ({"thinking": {"type": "enabled", "budget_tokens": 1024}}, "thinking"),
    ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "web_search_20250305"),
    ({"temperature": 1.5}, "temperature"),
    ({"stop_sequences": ["a", "b", "c", "d", "e"]}, "stop_sequences"),
    ({"tool_choice": {"type": "tool", "name": "nope"}, "tools": [WEATHER]}, "tool_choice"),
    ({"unknown_field": 1}, "unknown_field"),
    ({"output_config": {"effort": "high"}}, "effort"),
    ({"speed": "fast"}, "speed"),
])
def test_invalid_requests_are_anthropic_400s(server, fields, word) -> None:
    body = {"model": "tiny", "max_tokens": 5, "messages": HELLO, **fields}
    assert word in error_of(post(server.port, {k: v for k, v in body.items() if v is not None}), 400,
                            "invalid_request_error")


def test_routing_and_key_errors_have_anthropics_shape(tiny_model_path) -> None:
    from helios_raw.backends.local import LocalBackend
    from helios_raw.config import LocalConfig

    backend = LocalBackend(LocalConfig(model_path=str(tiny_model_path), model_name="tiny"))
    with running(build_server(api_key="sk-right", backend=backend, access_log=False)) as keyed:
        keyed.call(backend.wait_ready(), 60)
        body = {"model": "tiny", "max_tokens": 2, "messages": HELLO}
        error_of(post(keyed.port, body), 401, "authentication_error")
        error_of(post(keyed.port, body, headers=[("x-api-key", "sk-wrong")]), 401, "authentication_error")
        assert post(keyed.port, body, headers=[("x-api-key", "sk-right")]).status == 200
        good = [("x-api-key", "sk-right")]
        error_of(post(keyed.port, body, "/v1/messages/batches", good), 404, "not_found_error")
        error_of(post(keyed.port, b"{nope", headers=good), 400, "invalid_request_error")
        with Client(keyed.port) as http:
            http.request("GET", "/v1/messages", good)
            answer = http.read_response()
        error_of(answer, 405, "invalid_request_error")
        assert "POST" in answer.header("allow")
        # The OpenAI routes keep OpenAI's shape.
        with Client(keyed.port) as http:
            http.request("GET", "/v1/models")
            assert http.read_response().json()["error"]["code"] == "invalid_api_key"

        sdk = anthropic.Anthropic(base_url=f"http://127.0.0.1:{keyed.port}", api_key="sk-wrong", max_retries=0)
        with pytest.raises(anthropic.AuthenticationError):
            sdk.messages.create(model="tiny", max_tokens=2, messages=HELLO)
        sdk = anthropic.Anthropic(base_url=f"http://127.0.0.1:{keyed.port}", api_key="sk-right", max_retries=0)
        with pytest.raises(anthropic.BadRequestError) as caught:
            sdk.messages.create(model="tiny", max_tokens=2, messages=HELLO, extra_body={"temperature": 3})
        assert caught.value.body["error"]["type"] == "invalid_request_error"
