"""OpenAI's Responses API over the local backend (the tiny test model), over real sockets: the
official ``openai`` client unmodified, and raw HTTP where the exact bytes matter. Every response
and event is validated against OpenAI's published schemas (``tests/openai_responses_schemas.json``)."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest

from helios_raw import Config, LocalConfig, Server
from helios_raw.backends.local import LocalBackend
from helios_raw.responses import ResponseStore
from tests.conftest import local_server
from tests.support.apis import named_events, post_json, validate_openai
from tests.support.rawhttp import Client, running

WEATHER = {"type": "function", "name": "get_weather", "description": "Weather for a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}},
                          "required": ["city"], "additionalProperties": False}}
CITY_FORMAT = {"format": {"type": "json_schema", "name": "city", "strict": True, "schema": {
    "type": "object", "properties": {"city": {"type": "string", "enum": ["Oslo", "Lima"]}},
    "required": ["city"], "additionalProperties": False}}}


@pytest.fixture(scope="module")
def server(tiny_model_path):
    with local_server(tiny_model_path) as server:
        yield server


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key="unused", max_retries=0, timeout=60)


def post(port: int, body):
    return post_json(port, "/v1/responses", body)


def created(port: int, body: dict) -> dict:
    """The validated response object answering ``body``."""
    answer = post(port, body)
    assert answer.status == 200, answer.body
    response = answer.json()
    validate_openai(response, "Response")
    return response


def streamed(port: int, body: dict) -> list:
    """The validated events of a streamed answer to ``body``, numbered 0, 1, 2 ..."""
    answer = post(port, {**body, "stream": True})
    assert answer.status == 200, answer.body
    assert answer.header("content-type") == "text/event-stream"
    events = named_events(answer.body)
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    for name, data in events:
        validate_openai(data, "ResponseStreamEvent")
    return events


def error_of(answer, status: int, param: str) -> dict:
    assert answer.status == status, answer.body
    validate_openai(answer.json(), "ErrorResponse")
    assert answer.json()["error"]["param"] == param, answer.json()
    return answer.json()["error"]


# -- answers --------------------------------------------------------------------------------------


def test_a_text_answer_cut_by_max_output_tokens_is_incomplete(server, client) -> None:
    response = created(server.port, {"model": "tiny", "input": "hello world", "max_output_tokens": 8,
                                     "temperature": 0, "metadata": {"run": "1"}})
    assert response["object"] == "response" and response["id"].startswith("resp_")
    assert response["status"] == "incomplete"
    assert response["incomplete_details"] == {"reason": "max_output_tokens"}
    (message,) = response["output"]
    assert message["type"] == "message" and message["role"] == "assistant" and message["status"] == "incomplete"
    assert message["content"][0]["type"] == "output_text" and message["content"][0]["text"]
    usage = response["usage"]
    assert usage["output_tokens"] == 8 and usage["input_tokens"] > 0
    assert usage["total_tokens"] == usage["input_tokens"] + 8
    assert usage["input_tokens_details"]["cached_tokens"] == 0
    assert response["metadata"] == {"run": "1"} and response["max_output_tokens"] == 8

    sdk = client.responses.create(model="tiny", input="hello world", max_output_tokens=8, temperature=0)
    assert sdk.status == "incomplete" and sdk.incomplete_details.reason == "max_output_tokens"
    assert sdk.output_text == message["content"][0]["text"]  # greedy: the same text both times
    validate_openai(sdk.model_dump(mode="json", by_alias=True, exclude_unset=True), "Response")


def test_instructions_and_message_items_reach_the_model(server) -> None:
    plain = created(server.port, {"model": "tiny", "input": "hello", "max_output_tokens": 1})
    framed = created(server.port, {
        "model": "tiny", "instructions": "You are terse.", "max_output_tokens": 1,
        "input": [{"type": "message", "role": "developer", "content": "Answer in English."},
                  {"role": "user", "content": [{"type": "input_text", "text": "hello"}]},
                  {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "hi"}]},
                  {"role": "user", "content": "hello"}]})
    assert framed["instructions"] == "You are terse."
    assert framed["usage"]["input_tokens"] > plain["usage"]["input_tokens"] + 10


def test_streamed_text_events_come_in_openais_order(server, client) -> None:
    events = streamed(server.port, {"model": "tiny", "input": "hello world", "max_output_tokens": 6, "temperature": 0})
    names = [name for name, _ in events]
    deltas = [data for name, data in events if name == "response.output_text.delta"]
    assert names == (["response.created", "response.in_progress", "response.output_item.added",
                      "response.content_part.added"] + ["response.output_text.delta"] * len(deltas)
                     + ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                        "response.incomplete"])
    assert 1 <= len(deltas) <= 6  # a delta per token, bar characters split across tokens
    created_, final = events[0][1]["response"], events[-1][1]["response"]
    assert created_["status"] == "in_progress" and created_["output"] == [] and created_["id"] == final["id"]
    text = "".join(d["delta"] for d in deltas)
    item_id = events[2][1]["item"]["id"]
    assert all(d["item_id"] == item_id and d["output_index"] == 0 for d in deltas)
    assert events[-4][1]["text"] == text and events[-3][1]["part"]["text"] == text
    assert final["status"] == "incomplete" and final["output"][0]["content"][0]["text"] == text
    assert final["usage"]["output_tokens"] == 6
    validate_openai(events[-1][1], "ResponseIncompleteEvent")

    sdk_events = list(client.responses.create(model="tiny", input="hello world", max_output_tokens=6,
                                              temperature=0, stream=True))
    assert [e.type for e in sdk_events] == names[:2] + names[2:2 + len(sdk_events) - 2]
    assert "".join(e.delta for e in sdk_events if e.type == "response.output_text.delta") == text


# -- tools ----------------------------------------------------------------------------------------


def test_forced_function_call_round_trip_by_previous_response_id(server, client) -> None:
    first = client.responses.create(model="tiny", input="What's the weather in Paris?", tools=[WEATHER],
                                    tool_choice={"type": "function", "name": "get_weather"}, max_output_tokens=200)
    validate_openai(first.model_dump(mode="json", by_alias=True, exclude_unset=True), "Response")
    assert first.status == "completed"
    (call,) = first.output
    assert call.type == "function_call" and call.name == "get_weather" and call.status == "completed"
    assert call.call_id.startswith("call_") and call.id.startswith("fc_")
    assert json.loads(call.arguments)["city"] in ("Paris", "Rome")
    assert first.tools[0].name == "get_weather" and first.tool_choice.name == "get_weather"

    second = client.responses.create(model="tiny", previous_response_id=first.id, max_output_tokens=4, tools=[WEATHER],
                                     input=[{"type": "function_call_output", "call_id": call.call_id,
                                             "output": "18 degrees and sunny"}])
    validate_openai(second.model_dump(mode="json", by_alias=True, exclude_unset=True), "Response")
    assert second.previous_response_id == first.id and second.output[0].type == "message"
    # The model read the first turn (question, tool definitions, its call) and the tool's output.
    assert second.usage.input_tokens > first.usage.input_tokens

    # The same conversation sent whole, without the store, reads the same prompt.
    whole = client.responses.create(model="tiny", store=False, tools=[WEATHER], max_output_tokens=4, input=[
        {"role": "user", "content": "What's the weather in Paris?"},
        {"type": "function_call", "call_id": call.call_id, "name": "get_weather", "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "18 degrees and sunny"}])
    assert whole.usage.input_tokens == second.usage.input_tokens
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(whole.id)  # store: false keeps nothing


def test_streamed_function_call_events(server, client) -> None:
    events = streamed(server.port, {"model": "tiny", "input": "Weather?", "tools": [WEATHER],
                                    "tool_choice": "required", "max_output_tokens": 200})
    names = [name for name, _ in events]
    assert names[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert names[-3:] == ["response.function_call_arguments.done", "response.output_item.done",
                          "response.completed"]
    assert set(names[3:-3]) == {"response.function_call_arguments.delta"}
    added, done = events[2][1]["item"], events[-2][1]["item"]
    assert added["type"] == "function_call" and added["status"] == "in_progress" and added["arguments"] == ""
    arguments = "".join(data["delta"] for name, data in events if name.endswith("arguments.delta"))
    assert events[-3][1]["arguments"] == arguments == done["arguments"]
    assert events[-3][1]["name"] == "get_weather" and done["call_id"] == added["call_id"]
    assert json.loads(arguments)["city"] in ("Paris", "Rome")

    with client.responses.stream(model="tiny", input="Weather?", tools=[WEATHER], tool_choice="required",
                                 max_output_tokens=200) as stream:
        for _ in stream:
            pass
        final = stream.get_final_response()
    assert final.status == "completed" and final.output[0].type == "function_call"


def test_json_schema_text_format_is_enforced(server, client) -> None:
    response = client.responses.create(model="tiny", input="Pick a city.", text=CITY_FORMAT, max_output_tokens=60)
    validate_openai(response.model_dump(mode="json", by_alias=True, exclude_unset=True), "Response")
    assert response.status == "completed"
    assert json.loads(response.output_text)["city"] in ("Oslo", "Lima")
    assert response.text.format.type == "json_schema" and response.text.format.name == "city"
    as_object = created(server.port, {"model": "tiny", "input": "JSON please", "max_output_tokens": 60,
                                      "text": {"format": {"type": "json_object"}}})
    assert as_object["text"]["format"] == {"type": "json_object"}


# -- the store ------------------------------------------------------------------------------------


def test_stored_responses_can_be_retrieved_and_deleted(server, client) -> None:
    response = created(server.port, {"model": "tiny", "input": "hello", "max_output_tokens": 3})
    fetched = client.responses.retrieve(response["id"])
    assert fetched.model_dump(mode="json", by_alias=True, exclude_unset=True) == response
    client.responses.delete(response["id"])
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response["id"])
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(response["id"])
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="tiny", input="hi", previous_response_id=response["id"])
    assert caught.value.body["param"] == "previous_response_id"


def test_streamed_responses_are_stored_too(server, client) -> None:
    events = streamed(server.port, {"model": "tiny", "input": "hello", "max_output_tokens": 2})
    final = events[-1][1]["response"]
    assert client.responses.retrieve(final["id"]).model_dump(mode="json", by_alias=True, exclude_unset=True) == final


def test_store_is_bounded_by_size_and_age() -> None:
    now = [0.0]
    store = ResponseStore(max_entries=2, ttl=10.0, clock=lambda: now[0])
    for n in range(3):
        store.put({"id": f"resp_{n}"}, [])
        now[0] += 1
    assert store.get("resp_0") is None and len(store) == 2  # the oldest went first
    now[0] = 11.5
    assert store.get("resp_1") is None and store.get("resp_2") is not None
    now[0] = 12.0
    assert len(store) == 0


def test_store_size_is_a_setting(tiny_model_path) -> None:
    config = Config()
    config.server.port, config.server.access_log, config.server.responses_store_size = 0, False, 1
    backend = LocalBackend(LocalConfig(model_path=str(tiny_model_path), model_name="tiny"))
    with running(Server(config, backend)) as one:
        one.call(backend.wait_ready(), 60)
        first = created(one.port, {"model": "tiny", "input": "a", "max_output_tokens": 1})
        second = created(one.port, {"model": "tiny", "input": "b", "max_output_tokens": 1})
        with Client(one.port) as http:
            http.request("GET", f"/v1/responses/{first['id']}")
            assert http.read_response().status == 404
            http.request("GET", f"/v1/responses/{second['id']}")
            assert http.read_response().json() == second


# -- what is refused ------------------------------------------------------------------------------


@pytest.mark.parametrize("fields, param", [
    ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"tools": [{"type": "file_search", "vector_store_ids": ["vs_1"]}]}, "tools[0].type"),
    ({"tools": [{"type": "computer_use_preview", "display_width": 1, "display_height": 1,
                 "environment": "linux"}]}, "tools[0].type"),
    ({"background": True}, "background"),
    ({"include": ["file_search_call.results"]}, "include"),
    ({"reasoning": {"effort": "high"}}, "reasoning"),
    ({"truncation": "auto"}, "truncation"),
    ({"tool_choice": {"type": "web_search_preview"}}, "tool_choice"),
    ({"frequency": 1}, "frequency"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "data:image/png;base64,AA=="}]}]},
     "input[0].content[0].type"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
    ({"max_output_tokens": 0}, "max_output_tokens"),
    ({"temperature": 3}, "temperature"),
    ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format"),
    ({"tool_choice": {"type": "function", "name": "nope"}, "tools": [WEATHER]}, "tool_choice"),
    ({"metadata": {"n": 1}}, "metadata"),
])
def test_what_cannot_be_honoured_is_a_400_naming_it(server, fields, param) -> None:
    body = {"model": "tiny", "input": "hello", **fields}
    error = error_of(post(server.port, body), 400, param)
    assert param.split("[")[0].split(".")[0] in error["message"]


def test_bad_bodies_and_unknown_ids(server) -> None:
    error_of(post(server.port, {"model": "tiny"}), 400, "input")
    assert post(server.port, [1, 2]).status == 400
    with Client(server.port) as http:
        http.request("GET", "/v1/responses/resp_nothing")
        answer = http.read_response()
    error_of(answer, 404, "response_id")


def test_schema_validator_catches_a_broken_response(server) -> None:
    good = created(server.port, {"model": "tiny", "input": "hello", "max_output_tokens": 2})
    for broken in ({**good, "status": "done"}, {k: v for k, v in good.items() if k != "tools"},
                   {**good, "usage": {**good["usage"], "output_tokens_details": {}}}):
        with pytest.raises(jsonschema.ValidationError):
            validate_openai(broken, "Response")
