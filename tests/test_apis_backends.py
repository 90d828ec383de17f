"""The Responses and Messages routes over the agent and the remote backend, over real sockets with
the official ``openai`` and ``anthropic`` clients.

- The agent answers over :class:`~tests.test_agent.ReplayUpstream` (it stands for the OpenAI API:
  recorded tool calls and answers, streamed as OpenAI streams them), so its tool loop is
  deterministic.
- The remote backend proxies to a second helios_raw *process* serving the tiny model (a real
  server that serves ``/v1/responses`` itself), seen through its access log, and, for what only
  vLLM does (naming the stop string that ended an answer), to a helios_raw server with a custom
  endpoint answering as vLLM answers.
"""

from __future__ import annotations

import asyncio
import json

import anthropic
import openai
import pytest
from anthropic.types import Message, RawMessageStreamEvent

from helios_raw import Agent, Config, EndpointBuilder, RemoteConfig, ServerBuilder
from helios_raw.backends.remote import RemoteBackend
from helios_raw.http.sse import sse_response
from tests.support.apis import named_events, validate_anthropic, validate_openai
from tests.support.apis import post_json as post
from tests.support.rawhttp import running
from tests.test_agent import (
    PARIS,
    PARIS_ANSWER,
    ReplayUpstream,
    UpstreamError,
    get_weather,
    recorded_answer,
    recorded_tool_calls,
)
from tests.test_remote import Upstream

JSON = [("Content-Type", "application/json")]


# -- the agent ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def agent_port():
    """An agent with a weather tool over the replayed OpenAI API, on a server thread."""
    upstream = ReplayUpstream({
        PARIS: [recorded_tool_calls(("get_weather", '{"city": "Paris"}'), prompt_tokens=90, completion_tokens=18),
                recorded_answer(PARIS_ANSWER, prompt_tokens=130, completion_tokens=11)],
        "Book it": [recorded_tool_calls(("book", '{"nights": 2}'), prompt_tokens=50, completion_tokens=9)],
        "Break": [recorded_tool_calls(("get_weather", '{"city": "Oslo"}')),
                  UpstreamError(400, "This model's maximum context length is 8 tokens.")],
    })
    agent = Agent("weather", system_prompt="You are WeatherBot.", tools=[get_weather])
    with running(upstream.server):
        server = ServerBuilder.with_agent(agent, "weather-agent", upstream.config()).address("127.0.0.1:0").build()
        with running(server) as thread:
            yield thread.port


def test_agent_answers_responses_after_running_its_tools(agent_port) -> None:
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{agent_port}/v1", api_key="unused", max_retries=0)
    response = client.responses.create(model="weather-agent", input=PARIS)
    validate_openai(response.model_dump(mode="json", by_alias=True, exclude_unset=True), "Response")
    assert response.status == "completed" and response.output_text == PARIS_ANSWER
    assert (response.usage.input_tokens, response.usage.output_tokens) == (220, 29)

    events = named_events(post(agent_port, "/v1/responses", {"model": "weather-agent", "input": PARIS,
                                                             "stream": True}).body)
    for _, data in events:
        validate_openai(data, "ResponseStreamEvent")
    deltas = [d["delta"] for n, d in events if n == "response.output_text.delta"]
    assert len(deltas) > 3 and "".join(deltas) == PARIS_ANSWER  # the final answer, piece by piece
    assert events[-1][0] == "response.completed" and events[-1][1]["response"]["usage"]["total_tokens"] == 249


def test_agent_hands_client_tools_back_as_function_calls(agent_port) -> None:
    book = {"type": "function", "name": "book", "parameters": {"type": "object", "properties": {
        "nights": {"type": "integer"}}}}
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{agent_port}/v1", api_key="unused", max_retries=0)
    response = client.responses.create(model="weather-agent", input="Book it", tools=[book])
    (call,) = response.output
    assert call.type == "function_call" and call.name == "book" and json.loads(call.arguments) == {"nights": 2}

    anthropic_client = anthropic.Anthropic(base_url=f"http://127.0.0.1:{agent_port}", api_key="x", max_retries=0)
    message = anthropic_client.messages.create(model="weather-agent", max_tokens=100, messages=[
        {"role": "user", "content": "Book it"}], tools=[{"name": "book", "input_schema": book["parameters"]}])
    validate_anthropic(Message, message.model_dump(mode="json", exclude_unset=True))
    assert message.stop_reason == "tool_use" and message.content[0].input == {"nights": 2}


def test_agent_answers_messages_streamed_and_not(agent_port) -> None:
    client = anthropic.Anthropic(base_url=f"http://127.0.0.1:{agent_port}", api_key="unused", max_retries=0)
    message = client.messages.create(model="weather-agent", max_tokens=100, messages=[{"role": "user",
                                                                                      "content": PARIS}])
    assert message.content[0].text == PARIS_ANSWER and message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (220, 29)
    with client.messages.stream(model="weather-agent", max_tokens=100,
                                messages=[{"role": "user", "content": PARIS}]) as stream:
        assert "".join(stream.text_stream) == PARIS_ANSWER
        assert stream.get_final_message().usage.output_tokens == 29


def test_an_upstream_error_mid_stream_fails_the_response(agent_port) -> None:
    events = named_events(post(agent_port, "/v1/responses", {"model": "weather-agent", "input": "Break",
                                                             "stream": True}).body)
    names = [name for name, _ in events]
    assert names[:2] == ["response.created", "response.in_progress"] and names[-2:] == ["error", "response.failed"]
    for _, data in events:
        validate_openai(data, "ResponseStreamEvent")
    failed = events[-1][1]["response"]
    assert failed["status"] == "failed" and "maximum context length" in failed["error"]["message"]

    answer = post(agent_port, "/v1/messages", {"model": "weather-agent", "max_tokens": 10, "stream": True,
                                               "messages": [{"role": "user", "content": "Break"}]})
    events = named_events(answer.body)
    assert events[-1][0] == "error" and "maximum context length" in events[-1][1]["error"]["message"]
    client = anthropic.Anthropic(base_url=f"http://127.0.0.1:{agent_port}", api_key="unused", max_retries=0)
    with pytest.raises(anthropic.APIStatusError):
        with client.messages.stream(model="weather-agent", max_tokens=10,
                                    messages=[{"role": "user", "content": "Break"}]) as stream:
            list(stream.text_stream)
    # Before the stream starts, the same error keeps its status, in each API's own shape.
    answer = post(agent_port, "/v1/messages", {"model": "weather-agent", "max_tokens": 10,
                                               "messages": [{"role": "user", "content": "Break"}]})
    assert answer.status == 400 and answer.json()["type"] == "error"


# -- the remote backend ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    server = Upstream(tmp_path_factory.mktemp("upstream"))
    yield server
    server.process.stop()


def proxy(base_url: str, **llm):
    config = Config()
    config.server.access_log = False
    backend = RemoteBackend(RemoteConfig(base_url=base_url, model_name="tiny", **llm))
    return ServerBuilder(config).address("127.0.0.1:0").backend(backend).build()


def test_responses_pass_straight_through_to_an_upstream_that_serves_them(upstream) -> None:
    before = len(upstream.access("/v1/responses"))
    with running(proxy(upstream.base_url)) as thread:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{thread.port}/v1", api_key="unused", max_retries=0)
        response = client.responses.create(model="anything", input="hello world", max_output_tokens=5)
        assert response.status == "incomplete" and response.model == "tiny"
        # The upstream stored it: retrieval and deletion go there too.
        assert client.responses.retrieve(response.id).output_text == response.output_text
        events = named_events(post(thread.port, "/v1/responses", {"model": "x", "input": "hello",
                                                                  "max_output_tokens": 3, "stream": True}).body)
        assert [d["sequence_number"] for _, d in events] == list(range(len(events)))
        assert events[-1][0] == "response.incomplete"
        client.responses.delete(response.id)
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve(response.id)
    upstream.logged_so_far()
    assert len(upstream.access("/v1/responses")) - before == 2
    targets = [entry["target"] for entry in upstream.access(f"/v1/responses/{response.id}")]
    assert len(targets) == 3


def test_responses_are_translated_to_chat_without_pass_through(upstream) -> None:
    before = upstream.logged_so_far()
    with running(proxy(upstream.base_url, responses_passthrough=False)) as thread:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{thread.port}/v1", api_key="unused", max_retries=0)
        response = client.responses.create(model="anything", input="hello world", max_output_tokens=5)
        validate_openai(response.model_dump(mode="json", by_alias=True, exclude_unset=True), "Response")
        assert response.status == "incomplete" and response.usage.output_tokens == 5
        assert client.responses.retrieve(response.id).id == response.id  # stored here
        events = named_events(post(thread.port, "/v1/responses", {"model": "x", "input": "hello",
                                                                  "max_output_tokens": 3, "stream": True}).body)
        assert events[-1][0] == "response.incomplete"
        assert events[-1][1]["response"]["usage"]["output_tokens"] == 3
    assert upstream.logged_so_far() - before == 2  # two chat completions, no /v1/responses


def test_messages_over_the_remote_backend(upstream) -> None:
    with running(proxy(upstream.base_url)) as thread:
        client = anthropic.Anthropic(base_url=f"http://127.0.0.1:{thread.port}", api_key="x", max_retries=0)
        message = client.messages.create(model="claude-anything", max_tokens=4, messages=[
            {"role": "user", "content": "hello"}])
        validate_anthropic(Message, message.model_dump(mode="json", exclude_unset=True))
        assert message.stop_reason == "max_tokens" and message.usage.output_tokens == 4
        events = named_events(post(thread.port, "/v1/messages", {"model": "m", "max_tokens": 3, "stream": True,
                                                                 "messages": [{"role": "user", "content": "hi"}]}).body)
        for name, data in events:
            if name != "ping":
                validate_anthropic(RawMessageStreamEvent, data)
        assert events[-2][1]["usage"]["output_tokens"] == 3
        counted = client.messages.count_tokens(model="m", messages=[{"role": "user", "content": "hello"}])
        assert counted.input_tokens == message.usage.input_tokens


class VLLMStandIn:
    """A helios_raw server with a custom ``POST /v1/chat/completions`` answering as vLLM does when
    a stop string ends the answer: ``finish_reason: "stop"`` with ``stop_reason`` naming the string
    (and the text without it)."""

    def __init__(self) -> None:
        endpoint = EndpointBuilder.post("/v1/chat/completions").handle(self.answer).build()
        config = Config()
        config.server.access_log = False
        self.server = ServerBuilder(config).address("127.0.0.1:0").endpoint(endpoint).build()

    async def answer(self, request):
        stop = request.body["stop"][-1]
        base = {"id": "chatcmpl-vllm", "created": 1, "model": "tiny"}
        usage = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
        if not request.body.get("stream"):
            return {**base, "object": "chat.completion", "usage": usage, "choices": [{
                "index": 0, "message": {"role": "assistant", "content": "Hello"}, "logprobs": None,
                "finish_reason": "stop", "stop_reason": stop}]}

        async def produce(events):
            chunk = {**base, "object": "chat.completion.chunk"}
            for delta in ({"role": "assistant", "content": ""}, {"content": "Hel"}, {"content": "lo"}):
                events.send({**chunk, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
                await asyncio.sleep(0)
            events.send({**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop",
                                               "stop_reason": stop}]})
            events.send({**chunk, "choices": [], "usage": usage})
            events.done()

        return sse_response(produce)


def test_a_stop_sequence_named_by_the_upstream_is_the_stop_reason() -> None:
    vllm = VLLMStandIn()
    with running(vllm.server) as upstream, running(proxy(f"http://127.0.0.1:{upstream.port}/v1")) as thread:
        client = anthropic.Anthropic(base_url=f"http://127.0.0.1:{thread.port}", api_key="x", max_retries=0)
        params = {"model": "m", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}],
                  "stop_sequences": ["\n\n", " world"]}
        message = client.messages.create(**params)
        assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", " world")
        with client.messages.stream(**params) as stream:
            assert "".join(stream.text_stream) == "Hello"
            final = stream.get_final_message()
        assert (final.stop_reason, final.stop_sequence) == ("stop_sequence", " world")
