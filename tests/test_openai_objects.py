"""Every OpenAI object the server sends, from every backend, judged by OpenAI's JSON schemas and
read by the official ``openai`` SDK with its strict response validation on.

- the agent backend over the replayed OpenAI API (``ReplayUpstream`` of test_agent, reached
  through the real RemoteBackend): completions, each kind of chunk (role, content, tool calls,
  finish, usage), tool calls handed back to the client, errors before and inside a stream;
- the remote backend over a second helios_raw process serving the tiny model: relayed
  completions, chunks, tool calls and errors; and over the replayed OpenAI API, whose tool calls
  stream in many pieces;
- the agent backend over the local model: its answers and the client's tool calls handed back;
- the local backend's tool calls, streamed and not;
- the HTTP layer's errors (whatever the backend) and the model objects.

A stream is checked whole as well as chunk by chunk: one id, ``created`` and ``model`` throughout,
the role first, exactly one ``finish_reason``, the usage chunk last when asked for, ``[DONE]`` once
at the end, and tool-call pieces a client can assemble (the first piece of each call carrying its
id, type and name).
"""

from __future__ import annotations

import asyncio
import json
import time

import openai
import pytest

from helios_raw import Agent, Config, LocalConfig, RemoteConfig, ServerBuilder
from helios_raw.backends.remote import RemoteBackend
from helios_raw.http.limits import Limits
from helios_raw.http.sse import sse_frame
from tests.conftest import (
    chat_body,
    error_of,
    post_chat,
    sse_events,
    stream_of,
    validate,
)
from tests.support.rawhttp import Answer, Client, build_server, get, running
from tests.test_agent import (
    PARIS,
    PARIS_ANSWER,
    ReplayUpstream,
    Serving,
    UpstreamError,
    agent_server,
    chat,
    exchange,
    get_weather,
    recorded_answer,
    recorded_tool_calls,
    stream_chat,
)
from tests.test_remote import (
    HELLO,
    Exchange,
    FakeUpstream,
    Recorder,
    Upstream,
    chunk_event,
    free_port,
    proxy_server,
)

TIMEOUT = 30.0
JSON = [("Content-Type", "application/json")]
DOOR = {"type": "function", "function": {"name": "open_door", "description": "Open a door.",
                                         "parameters": {"type": "object", "properties": {}}}}
LOOKUP = {"type": "function", "function": {"name": "lookup", "parameters": {
    "type": "object", "properties": {"q": {"type": "string", "maxLength": 8}}, "required": ["q"]}}}


# -- what every answer must be -------------------------------------------------------------------


def checked_completion(data: dict) -> dict:
    """``data``, validated as a ``chat.completion`` with one choice, its usage and tool calls."""
    validate(data, "CreateChatCompletionResponse")
    assert [c["index"] for c in data["choices"]] == [0]
    validate(data["usage"], "CompletionUsage")
    message = data["choices"][0]["message"]
    if "tool_calls" in message:
        validate(message["tool_calls"], "ChatCompletionMessageToolCalls")
        assert message["tool_calls"] and data["choices"][0]["finish_reason"] == "tool_calls"
    return data


def checked_stream(events: list, include_usage: bool) -> list:
    """The chunks of a complete streamed answer (its SSE events, ``[DONE]`` included), each
    validated, after checking the stream as a whole (see the module docstring)."""
    assert events[-1] == "[DONE]" and "[DONE]" not in events[:-1], events[-3:]
    chunks = events[:-1]
    for chunk in chunks:
        validate(chunk, "CreateChatCompletionStreamResponse")
    assert len({(c["id"], c["created"], c["model"]) for c in chunks}) == 1
    answer = chunks
    if include_usage:
        *answer, usage_chunk = chunks
        assert usage_chunk["choices"] == [] and usage_chunk["usage"] is not None
        validate(usage_chunk["usage"], "CompletionUsage")
    assert all("usage" not in c or c["usage"] is None for c in answer)
    assert all([choice["index"] for choice in c["choices"]] == [0] for c in answer)
    assert answer[0]["choices"][0]["delta"].get("role") == "assistant"
    finishing = [i for i, c in enumerate(answer) if c["choices"][0]["finish_reason"] is not None]
    assert finishing == [len(answer) - 1]
    assembled_tool_calls(chunks)
    return chunks


def assembled_tool_calls(chunks: list) -> list:
    """The tool calls a client assembles from the chunks' ``delta.tool_calls`` pieces, each piece
    validated; the result is validated as a message's ``tool_calls``."""
    calls: dict = {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            for piece in choice["delta"].get("tool_calls") or []:
                validate(piece, "ChatCompletionMessageToolCallChunk")
                function = piece.get("function") or {}
                if piece["index"] not in calls:
                    assert piece["id"] and piece["type"] == "function" and function["name"], piece
                    calls[piece["index"]] = {"id": piece["id"], "type": "function",
                                             "function": {"name": function["name"], "arguments": ""}}
                else:
                    assert "name" not in function and piece.get("id") in (None, calls[piece["index"]]["id"])
                calls[piece["index"]]["function"]["arguments"] += function.get("arguments") or ""
    assert sorted(calls) == list(range(len(calls)))
    result = [calls[i] for i in sorted(calls)]
    validate(result, "ChatCompletionMessageToolCalls")
    return result


def streamed_text(chunks: list) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


def finish_reason(chunks: list) -> str:
    return next(c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"])


def error_event(events: list) -> dict:
    """The error a stream ended with: the event before ``[DONE]``, validated, after the chunks
    sent before it (each validated, none finishing the answer)."""
    assert events[-1] == "[DONE]" and "[DONE]" not in events[:-1]
    *chunks, error = events[:-1]
    validate(error, "ErrorResponse")
    for chunk in chunks:
        validate(chunk, "CreateChatCompletionStreamResponse")
        assert all(choice["finish_reason"] is None for choice in chunk["choices"])
    return error["error"]


def without_ids(calls: list) -> list:
    return [{**call, "id": None} for call in calls]


# ================================================================================================
# The agent backend over the replayed OpenAI API
# ================================================================================================


def run(scenario) -> None:
    asyncio.run(asyncio.wait_for(scenario, TIMEOUT))


async def stream_events(port: int, body: dict) -> list:
    return [event async for event in stream_chat(port, body)]


def weather_upstream() -> ReplayUpstream:
    return ReplayUpstream({
        PARIS: [recorded_tool_calls(("get_weather", '{"city": "Paris"}'), prompt_tokens=90, completion_tokens=18),
                recorded_answer(PARIS_ANSWER, prompt_tokens=130, completion_tokens=11)],
        "Open the door": [recorded_tool_calls(("open_door", "{}"), ("get_weather", '{"city": "Oslo"}'))],
        "Loop forever": [recorded_tool_calls(("get_weather", '{"city": "Rome"}'))],
        "Too long": [recorded_tool_calls(("get_weather", '{"city": "Oslo"}')),
                     UpstreamError(400, "This model's maximum context length is 128000 tokens.")],
    })


def weather_agent() -> Agent:
    return Agent("weather", system_prompt="You are WeatherBot.", tools=[get_weather], max_iterations=2)


def test_agent_answers_are_openai_objects() -> None:
    upstream = weather_upstream()

    async def scenario() -> None:
        async with Serving(upstream.server), Serving(agent_server(weather_agent(), upstream)) as port:
            status, body = await exchange(port, "POST", "/v1/chat/completions", chat(PARIS))
            assert status == 200, body
            checked_completion(body)
            assert body["choices"][0]["message"]["content"] == PARIS_ANSWER
            assert body["choices"][0]["finish_reason"] == "stop" and "tool_calls" not in body["choices"][0]["message"]

            for include_usage in (True, False):
                options = {"stream_options": {"include_usage": True}} if include_usage else {}
                chunks = checked_stream(await stream_events(port, chat(PARIS, stream=True, **options)), include_usage)
                assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
                assert streamed_text(chunks) == PARIS_ANSWER and finish_reason(chunks) == "stop"
                assert chunks[-1]["usage" if include_usage else "choices"] == (
                    {"prompt_tokens": 220, "completion_tokens": 29, "total_tokens": 249} if include_usage
                    else [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}])

            # The agent's own limit: the answer says so and finishes with "length".
            status, body = await exchange(port, "POST", "/v1/chat/completions", chat("Loop forever"))
            assert status == 200 and checked_completion(body)["choices"][0]["finish_reason"] == "length"
            chunks = checked_stream(await stream_events(port, chat("Loop forever", stream=True)), False)
            assert finish_reason(chunks) == "length" and "max_iterations" in streamed_text(chunks)

    run(scenario())


def test_agent_hands_client_tool_calls_back_as_openai_objects() -> None:
    upstream = weather_upstream()

    async def scenario() -> None:
        async with Serving(upstream.server), Serving(agent_server(weather_agent(), upstream)) as port:
            status, body = await exchange(port, "POST", "/v1/chat/completions", chat("Open the door", tools=[DOOR]))
            assert status == 200, body
            message = checked_completion(body)["choices"][0]["message"]
            assert [c["function"] for c in message["tool_calls"]] == [{"name": "open_door", "arguments": "{}"}]
            assert message["content"] is None  # the model said nothing, as OpenAI reports it

            events = await stream_events(port, chat("Open the door", tools=[DOOR], stream=True,
                                                    stream_options={"include_usage": True}))
            chunks = checked_stream(events, include_usage=True)
            assert finish_reason(chunks) == "tool_calls"
            assert without_ids(assembled_tool_calls(chunks)) == without_ids(message["tool_calls"])

    run(scenario())


def test_agent_errors_are_openai_error_objects() -> None:
    upstream = weather_upstream()

    async def scenario() -> None:
        async with Serving(upstream.server), Serving(agent_server(weather_agent(), upstream)) as port:
            # The upstream refuses the second model call: its 400, before or inside the stream.
            status, body = await exchange(port, "POST", "/v1/chat/completions", chat("Too long"))
            assert status == 400
            validate(body, "ErrorResponse")
            assert body["error"]["code"] == "context_length_exceeded"
            error = error_event(await stream_events(port, chat("Too long", stream=True)))
            assert error == body["error"]

            # A client tool named like one of the agent's own, and a parameter out of range.
            clash = {"type": "function", "function": {"name": "get_weather"}}
            for request, param in ((chat(PARIS, tools=[clash]), "tools"), (chat(PARIS, temperature=7), "temperature"),
                                   (chat(PARIS, stream=True, temperature=7), "temperature")):
                status, body = await exchange(port, "POST", "/v1/chat/completions", request)
                assert status == 400
                validate(body, "ErrorResponse")
                assert body["error"]["param"] == param

    run(scenario())


def test_agent_model_objects() -> None:
    upstream = weather_upstream()

    async def scenario() -> None:
        async with Serving(upstream.server), Serving(agent_server(weather_agent(), upstream)) as port:
            status, listing = await exchange(port, "GET", "/v1/models")
            assert status == 200
            validate(listing, "ListModelsResponse")
            assert [m["id"] for m in listing["data"]] == ["weather-agent"]
            status, model = await exchange(port, "GET", "/v1/models/weather-agent")
            assert status == 200 and model == listing["data"][0]
            validate(model, "Model")
            status, missing = await exchange(port, "GET", "/v1/models/gpt-9")
            assert status == 404 and missing["error"]["code"] == "model_not_found"
            validate(missing, "ErrorResponse")

    run(scenario())


def async_sdk(port: int) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0,
                              timeout=TIMEOUT, _strict_response_validation=True)


def test_sdk_reads_the_agents_answers() -> None:
    upstream = weather_upstream()
    ask = [{"role": "user", "content": PARIS}]

    async def scenario() -> None:
        async with Serving(upstream.server), Serving(agent_server(weather_agent(), upstream)) as port:
            async with async_sdk(port) as client:
                response = await client.chat.completions.create(model="weather-agent", messages=ask)
                assert response.object == "chat.completion" and response.model == "weather-agent"
                assert response.choices[0].message.content == PARIS_ANSWER
                assert response.choices[0].finish_reason == "stop" and response.usage.total_tokens == 249

                stream = await client.chat.completions.create(model="weather-agent", messages=ask, stream=True,
                                                              stream_options={"include_usage": True})
                chunks = [chunk async for chunk in stream]
                assert chunks[0].choices[0].delta.role == "assistant"
                assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == PARIS_ANSWER
                assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
                assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 29

                models = await client.models.list()
                assert [m.id for m in models.data] == ["weather-agent"]
                assert (await client.models.retrieve("weather-agent")).owned_by

    run(scenario())


def test_sdk_reads_tool_calls_the_agent_hands_back() -> None:
    upstream = weather_upstream()
    ask = [{"role": "user", "content": "Open the door"}]

    async def scenario() -> None:
        async with Serving(upstream.server), Serving(agent_server(weather_agent(), upstream)) as port:
            async with async_sdk(port) as client:
                response = await client.chat.completions.create(model="weather-agent", messages=ask, tools=[DOOR])
                choice = response.choices[0]
                assert choice.finish_reason == "tool_calls" and choice.message.content is None
                (call,) = choice.message.tool_calls
                assert call.type == "function" and call.id.startswith("call_")
                assert (call.function.name, call.function.arguments) == ("open_door", "{}")

                # The SDK's streaming helper assembles the calls from the delta.tool_calls pieces (some
                # releases of it accept only strict tools there).
                strict = {"type": "function", "function": {**DOOR["function"], "strict": True, "parameters": {
                    "type": "object", "properties": {}, "required": [], "additionalProperties": False}}}
                async with client.chat.completions.stream(model="weather-agent", messages=ask, tools=[strict]) as stream:
                    kinds = [event.type async for event in stream]
                    final = await stream.get_final_completion()
                assert "tool_calls.function.arguments.done" in kinds
                choice = final.choices[0]
                assert choice.finish_reason == "tool_calls"
                (call,) = choice.message.tool_calls
                assert call.type == "function" and call.id.startswith("call_")
                assert (call.function.name, call.function.arguments) == ("open_door", "{}")

    run(scenario())


def test_sdk_raises_the_agents_errors() -> None:
    upstream = weather_upstream()
    ask = [{"role": "user", "content": "Too long"}]

    async def scenario() -> None:
        async with Serving(upstream.server), Serving(agent_server(weather_agent(), upstream)) as port:
            async with async_sdk(port) as client:
                with pytest.raises(openai.BadRequestError) as caught:
                    await client.chat.completions.create(model="weather-agent", messages=ask)
                assert caught.value.code == "context_length_exceeded"
                stream = await client.chat.completions.create(model="weather-agent", messages=ask, stream=True)
                with pytest.raises(openai.APIError) as caught:
                    async for _ in stream:
                        pass
                assert caught.value.code == "context_length_exceeded"
                with pytest.raises(openai.NotFoundError):
                    await client.models.retrieve("gpt-9")

    run(scenario())


# ================================================================================================
# The remote backend over a helios_raw process serving the tiny model
# ================================================================================================


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    server = Upstream(tmp_path_factory.mktemp("upstream"))
    yield server
    server.process.stop()


@pytest.fixture(scope="module")
def proxy(upstream):
    with running(proxy_server(upstream.base_url)) as server:
        yield server


def post(port: int, body: dict) -> Answer:
    with Client(port, timeout=TIMEOUT) as client:
        client.request("POST", "/v1/chat/completions", JSON, json.dumps(body).encode())
        return client.read_response("POST")


def relayed_stream(port: int, body: dict) -> list:
    answer = post(port, {**body, "stream": True})
    assert answer.status == 200 and answer.header("content-type") == "text/event-stream", answer.body
    return sse_events(answer.body)


def test_remote_answers_are_openai_objects(proxy) -> None:
    body = {"model": "tiny", "messages": HELLO, "max_tokens": 9, "temperature": 0}
    answer = post(proxy.port, body)
    assert answer.status == 200, answer.body
    completion = checked_completion(answer.json())
    assert completion["choices"][0]["finish_reason"] == "length"
    for include_usage in (True, False):
        options = {"stream_options": {"include_usage": True}} if include_usage else {}
        chunks = checked_stream(relayed_stream(proxy.port, {**body, **options}), include_usage)
        assert streamed_text(chunks) == completion["choices"][0]["message"]["content"]
        assert finish_reason(chunks) == "length"

    listing = get(proxy.port, "/v1/models")
    validate(listing.json(), "ListModelsResponse")
    model = get(proxy.port, "/v1/models/tiny")
    assert model.status == 200 and model.json() == listing.json()["data"][0]
    validate(model.json(), "Model")


def test_remote_tool_calls_are_openai_objects(proxy) -> None:
    body = {"model": "tiny", "messages": HELLO, "max_tokens": 100, "temperature": 0, "tools": [LOOKUP],
            "tool_choice": "required"}
    answer = post(proxy.port, body)
    assert answer.status == 200, answer.body
    message = checked_completion(answer.json())["choices"][0]["message"]
    assert [c["function"]["name"] for c in message["tool_calls"]] == ["lookup"]
    chunks = checked_stream(relayed_stream(proxy.port, {**body, "stream_options": {"include_usage": True}}), True)
    assert finish_reason(chunks) == "tool_calls"
    assert without_ids(assembled_tool_calls(chunks)) == without_ids(message["tool_calls"])


def test_remote_errors_are_openai_error_objects(upstream, proxy) -> None:
    # Refused here (a parameter out of range) and refused by the upstream (a model it lacks).
    for stream in (False, True):
        error_of(post(proxy.port, {"model": "tiny", "messages": HELLO, "temperature": 9, "stream": stream}),
                 400, "temperature")
    with running(proxy_server(upstream.base_url, model_name="no-such-model")) as strict:
        for stream in (False, True):
            error = error_of(post(strict.port, {"model": "x", "messages": HELLO, "stream": stream}), 404, "model")
            assert error["code"] == "model_not_found"

    # No upstream at all.
    with running(proxy_server(f"http://127.0.0.1:{free_port()}/v1")) as orphan:
        for stream in (False, True):
            assert error_of(post(orphan.port, {"model": "tiny", "messages": HELLO, "stream": stream}),
                            502)["code"] == "bad_gateway"


def test_remote_error_inside_a_stream_is_an_error_object() -> None:
    """Stands for OpenAI reporting a failure inside a stream it has started, with a numeric code
    (as some OpenAI-compatible servers send)."""
    async def fail_midway(exchange: Exchange) -> None:
        await exchange.send_sse_head()
        await exchange.send_chunk(chunk_event("Once"))
        await exchange.send_chunk(sse_frame({"error": {"message": "Overloaded.", "type": None, "code": 529}}))
        await exchange.send_chunk(b"data: [DONE]\n\n")
        await exchange.send(b"0\r\n\r\n")

    with running(FakeUpstream(fail_midway)) as up, running(proxy_server(f"http://127.0.0.1:{up.port}/v1")) as proxy:
        events = relayed_stream(proxy.port, {"model": "tiny", "messages": HELLO})
    assert error_event(events) == {"message": "Overloaded.", "type": "server_error", "param": None, "code": "529"}


def test_remote_relays_openai_tool_call_streams_a_client_can_assemble() -> None:
    """The replayed OpenAI API as the upstream: its tool calls, streamed as OpenAI streams them
    (each call's head, then its arguments a few characters per chunk), relayed and assembled by a
    client and by the SDK's streaming helper into the calls of the non-streamed answer."""
    question = "Weather and door"
    recorded = recorded_tool_calls(("get_weather", '{"city": "Paris", "unit": "celsius"}'), ("open_door", "{}"))
    replay = ReplayUpstream({question: [recorded]})
    calls = recorded["choices"][0]["message"]["tool_calls"]
    ask = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": question}], "tools": [DOOR]}
    with running(replay.server) as up, running(proxy_server(f"http://127.0.0.1:{up.port}/v1",
                                                             model_name="gpt-4o-mini")) as proxy:
        answer = post(proxy.port, ask)
        assert answer.status == 200, answer.body
        assert checked_completion(answer.json())["choices"][0]["message"]["tool_calls"] == calls
        chunks = checked_stream(relayed_stream(proxy.port, {**ask, "stream_options": {"include_usage": True}}), True)
        assert len(chunks) > 10 and finish_reason(chunks) == "tool_calls"
        assert assembled_tool_calls(chunks) == calls

        with sdk(proxy.port).chat.completions.stream(**ask) as stream:
            final = stream.get_final_completion()
        choice = final.choices[0]
        assert choice.finish_reason == "tool_calls"
        assert [(c.id, c.type, c.function.name, c.function.arguments) for c in choice.message.tool_calls] == [
            (c["id"], c["type"], c["function"]["name"], c["function"]["arguments"]) for c in calls]


def sdk(port: int, **options) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0,
                         timeout=TIMEOUT, _strict_response_validation=True, **options)


def test_sdk_reads_the_remote_backends_answers(proxy) -> None:
    client = sdk(proxy.port)
    response = client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=9, temperature=0)
    assert response.object == "chat.completion" and response.choices[0].finish_reason == "length"
    assert response.usage.completion_tokens == 9

    chunks = list(client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=9, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == response.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == response.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == response.usage.prompt_tokens

    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="tiny", messages=HELLO, temperature=9)
    assert caught.value.param == "temperature"


def test_sdk_reads_the_remote_backends_tool_calls(proxy) -> None:
    client = sdk(proxy.port)
    params = dict(model="tiny", messages=HELLO, max_tokens=100, temperature=0, tools=[LOOKUP],
                  tool_choice="required")
    response = client.chat.completions.create(**params)
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "lookup" and set(json.loads(call.function.arguments)) == {"q"}

    with client.chat.completions.stream(**params) as stream:
        done = [event for event in stream if event.type == "tool_calls.function.arguments.done"]
        final = stream.get_final_completion()
    assert [(e.name, e.arguments) for e in done] == [("lookup", call.function.arguments)]
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert [(c.type, c.function.name, c.function.arguments) for c in choice.message.tool_calls] == [
        ("function", "lookup", call.function.arguments)]


# ================================================================================================
# The local backend's tool calls
# ================================================================================================


def test_local_tool_calls_are_openai_objects(tiny_server) -> None:
    body = chat_body(max_tokens=100, tools=[LOOKUP], tool_choice="required")
    answer = post_chat(tiny_server.port, body)
    assert answer.status == 200, answer.body
    message = checked_completion(answer.json())["choices"][0]["message"]
    assert message["content"] is None and [c["function"]["name"] for c in message["tool_calls"]] == ["lookup"]
    chunks = checked_stream(stream_of(tiny_server.port, {**body, "stream_options": {"include_usage": True}}), True)
    assert finish_reason(chunks) == "tool_calls" and streamed_text(chunks) == ""
    assert without_ids(assembled_tool_calls(chunks)) == without_ids(message["tool_calls"])


def test_agent_over_the_local_model_answers_are_openai_objects(tiny_model_path) -> None:
    config = Config(local=LocalConfig(model_path=str(tiny_model_path), model_name="tiny", n_threads=1, seed=7))
    config.server.host, config.server.port, config.server.access_log = "127.0.0.1", 0, False
    agent = Agent("local", system_prompt="You are a weather assistant.", tools=[get_weather])
    with running(ServerBuilder.with_agent(agent, "local-agent", config).build()) as server:
        server.call(server.server.backend.wait_ready(), 60)
        body = chat_body("Hello world", model="local-agent", max_tokens=12)
        answer = post_chat(server.port, body)
        assert answer.status == 200, answer.body
        completion = checked_completion(answer.json())
        assert completion["model"] == "local-agent" and completion["choices"][0]["finish_reason"] == "length"
        chunks = checked_stream(stream_of(server.port, {**body, "stream_options": {"include_usage": True}}), True)
        assert streamed_text(chunks) == completion["choices"][0]["message"]["content"]

        # The model made to call the client's tool: the call is handed back to the client.
        body = chat_body("Hello world", model="local-agent", max_tokens=100, tools=[LOOKUP],
                         tool_choice={"type": "function", "function": {"name": "lookup"}})
        answer = post_chat(server.port, body)
        assert answer.status == 200, answer.body
        message = checked_completion(answer.json())["choices"][0]["message"]
        assert [c["function"]["name"] for c in message["tool_calls"]] == ["lookup"]
        chunks = checked_stream(stream_of(server.port, body), False)
        assert finish_reason(chunks) == "tool_calls"
        assert without_ids(assembled_tool_calls(chunks)) == without_ids(message["tool_calls"])


# ================================================================================================
# The HTTP layer's errors, and the model objects
# ================================================================================================

KEY = [("Authorization", "Bearer sk-local")]


@pytest.fixture(scope="module")
def keyed_proxy():
    """A server with an API key, a 4 KiB body limit and room for two connections, whose model is
    an upstream that answers every chat request 429 (a rate limit)."""
    with running(Recorder()) as recorder:
        backend = RemoteBackend(RemoteConfig(model_name="tiny", base_url=f"http://127.0.0.1:{recorder.port}/v1/fail"))
        server = build_server(backend=backend, api_key="sk-local", access_log=False,
                              limits=Limits(max_body_bytes=4096, max_connections=2))
        with running(server) as thread:
            yield thread


def ask(port: int, method: str, target: str, headers: list = KEY, body: bytes = b"") -> Answer:
    with Client(port) as client:
        client.request(method, target, headers, body)
        return client.read_response(method)


CHAT = json.dumps(chat_body(model="tiny")).encode()


@pytest.mark.parametrize("method, target, headers, body, status, code", [
    ("GET", "/v1/models", [], b"", 401, "invalid_api_key"),
    ("POST", "/v1/chat/completions", [("Authorization", "Bearer sk-wrong")] + JSON, CHAT, 401, "invalid_api_key"),
    ("GET", "/v1/nowhere", KEY, b"", 404, "unknown_url"),
    ("GET", "/v1/models/gpt-9", KEY, b"", 404, "model_not_found"),
    ("GET", "/v1/chat/completions", KEY, b"", 405, None),
    ("DELETE", "/v1/models", KEY, b"", 405, None),
    ("POST", "/v1/chat/completions", KEY + JSON, b"{" + b" " * 5000 + b"}", 413, None),
    ("POST", "/v1/chat/completions", KEY + [("Content-Type", "text/plain")], b"hello", 415, "unsupported_media_type"),
    ("POST", "/v1/chat/completions", KEY + JSON, b'{"model": "tiny", "messages": [', 400, None),
    ("POST", "/v1/chat/completions", KEY + JSON, b"[1, 2]", 400, None),
    ("POST", "/v1/chat/completions", KEY + JSON, CHAT, 429, "rate_limit_exceeded"),
    ("POST", "/v1/chat/completions", KEY + JSON, CHAT.replace(b'"max_tokens"', b'"stream": true, "max_tokens"'),
     429, "rate_limit_exceeded"),
], ids=["no-key", "wrong-key", "unknown-url", "unknown-model", "get-chat", "delete-models", "too-large",
        "not-json-type", "malformed-json", "json-not-object", "rate-limited", "rate-limited-stream"])
def test_http_errors_are_openai_error_objects(keyed_proxy, method, target, headers, body, status, code) -> None:
    error = error_of(ask(keyed_proxy.port, method, target, headers, body), status)
    if code is not None:
        assert error["code"] == code


@pytest.mark.parametrize("raw, status", [
    (b"GET /v1/models HTTP/1.1\r\nHost: x\r\n" + b"X-Filler: y\r\n" * 200 + b"\r\n", 431),
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    (b"GET /v1/models HTTP/2.0\r\nHost: x\r\n\r\n", 505),
    (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
    (b"GET /v1/models HTTP/1.1\r\nHost x\r\n\r\n", 400),
], ids=["head-too-large", "target-too-long", "http-2", "gzip-body", "bad-header-line"])
def test_malformed_http_is_answered_with_openai_error_objects(keyed_proxy, raw, status) -> None:
    with Client(keyed_proxy.port) as client:
        client.send(raw)
        error_of(client.read_response(), status)


def test_a_request_displaced_at_the_connection_cap_gets_a_408_error_object(keyed_proxy) -> None:
    # Two connections that have begun a request hold both places; a third takes the place of the
    # slower of them, which is answered 408. (The 503 when every connection is answering a
    # request is in test_http_limits.py.)
    holders = [Client(keyed_proxy.port), Client(keyed_proxy.port)]
    try:
        for holder in holders:
            holder.send(b"GET /v1/models HTTP/1.1\r\n")
        for _ in range(200):
            if sum(not c.idle for c in keyed_proxy.connections()) == 2:
                break
            time.sleep(0.01)
        with Client(keyed_proxy.port) as newcomer:
            newcomer.request("GET", "/health")
            assert newcomer.read_response().status == 200
        registered = {c.client for c in keyed_proxy.connections()}
        (displaced,) = [h for h in holders if h.sock.getsockname() not in registered]
        error = error_of(displaced.read_response(), 408)
        assert error["code"] == "request_timeout"
    finally:
        for holder in holders:
            holder.close()


def test_model_objects_behind_an_api_key(keyed_proxy) -> None:
    listing = ask(keyed_proxy.port, "GET", "/v1/models")
    assert listing.status == 200
    validate(listing.json(), "ListModelsResponse")
    model = ask(keyed_proxy.port, "GET", "/v1/models/tiny")
    assert model.status == 200 and model.json() == listing.json()["data"][0]
    validate(model.json(), "Model")
