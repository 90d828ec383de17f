"""The agent: tools (schemas from type hints and docstrings, invocation) and the tool-call loop,
served over real sockets.

Where the model's choice of tool must be deterministic, the model is :class:`ReplayUpstream`: a
helios_raw server whose ``POST /v1/chat/completions`` is a custom endpoint answering with
responses in the exact shape the OpenAI API returns (tool calls included, streamed as OpenAI
streams them when asked). It stands for the OpenAI API. The agent reaches it through the real
:class:`~helios_raw.backends.remote.RemoteBackend`, and every request it receives is recorded so
the tests can see what the agent sent the model.
"""

from __future__ import annotations

import asyncio
import enum
import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Annotated, Any, AsyncIterator, Literal, Optional, Union

import h11
import orjson
import pytest

from helios_raw import (
    Agent,
    Config,
    EndpointBuilder,
    RemoteConfig,
    ServerBuilder,
    Tool,
    get,
    tool,
)
from helios_raw.backends.remote import RemoteBackend
from helios_raw.endpoints import EndpointRequest
from helios_raw.http.sse import SSESink, sse_response

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 20.0


# -- tools and schemas (no sockets needed: pure functions of Python objects) ---------------------


class Unit(enum.Enum):
    CELSIUS = "celsius"
    FAHRENHEIT = "fahrenheit"


def test_schema_from_type_hints_and_google_docstring() -> None:
    @tool
    def forecast(city: str, days: int = 3, unit: Unit = Unit.CELSIUS, hourly: bool = False,
                 tags: list[str] = [], limits: Optional[dict[str, float]] = None,
                 mode: Literal["fast", "exact"] = "fast", note: Annotated[str, "Free text."] = "",
                 anything=None) -> str:
        """Forecast the weather
        for a city.

        Uses the national service.

        Args:
            city (str): The city's name,
                as spelled locally.
            days: How many days ahead.
        Returns:
            The forecast.
        """
        return ""

    assert isinstance(forecast, Tool) and forecast.name == "forecast"
    assert forecast.description == "Forecast the weather for a city."
    assert forecast.definition() == {"type": "function", "function": {
        "name": "forecast",
        "description": "Forecast the weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "The city's name, as spelled locally."},
                "days": {"type": "integer", "description": "How many days ahead.", "default": 3},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "default": "celsius"},
                "hourly": {"type": "boolean", "default": False},
                "tags": {"type": "array", "items": {"type": "string"}, "default": []},
                "limits": {"type": ["object", "null"], "additionalProperties": {"type": "number"},
                           "default": None},
                "mode": {"type": "string", "enum": ["fast", "exact"], "default": "fast"},
                "note": {"type": "string", "description": "Free text.", "default": ""},
                "anything": {"default": None},
            },
            "required": ["city"],
            "additionalProperties": False,
        },
    }}


def test_schema_from_sphinx_and_numpy_docstrings_and_unions() -> None:
    @tool(name="lookup", description="Look a thing up.")
    async def find(query: str, page: Union[int, str], *, exact: "bool | None" = None, **extra: Any) -> list:
        """Ignored summary.

        :param query: What to look for,
            in plain words.
        :param int page: Page number or cursor.
        :returns: hits
        """
        return []

    params = find.parameters
    assert find.name == "lookup" and find.description == "Look a thing up."
    assert params["properties"]["query"] == {"type": "string", "description": "What to look for, in plain words."}
    assert params["properties"]["page"] == {"anyOf": [{"type": "integer"}, {"type": "string"}],
                                            "description": "Page number or cursor."}
    assert params["properties"]["exact"] == {"type": ["boolean", "null"], "default": None}
    assert params["required"] == ["query", "page"]
    assert "additionalProperties" not in params  # **extra accepts more

    def numpy_style(x: float, ys: tuple[int, ...]) -> float:
        """Scale numbers.

        Parameters
        ----------
        x : float
            The factor.
        ys : tuple of int
            The numbers,
            all of them.
        """
        return x

    numpy_tool = tool(numpy_style)
    assert numpy_tool.description == "Scale numbers."
    assert numpy_tool.parameters["properties"] == {
        "x": {"type": "number", "description": "The factor."},
        "ys": {"type": "array", "items": {"type": "integer"}, "description": "The numbers, all of them."},
    }
    assert numpy_tool(2.0, (1,)) == 2.0  # a Tool still calls as its function


def test_explicit_tools_and_invalid_declarations() -> None:
    explicit = Tool("add", "Add two numbers.", {"type": "object", "properties": {
        "a": {"type": "number"}, "b": {"type": "number"}}, "required": ["a", "b"]}, lambda a, b: a + b)
    assert explicit.definition()["function"]["parameters"]["required"] == ["a", "b"]
    assert asyncio.run(explicit.invoke('{"a": 2, "b": 0.5}')) == "2.5"

    with pytest.raises(ValueError, match="tool name"):
        Tool("has space", "", None, print)
    with pytest.raises(ValueError, match="object"):
        Tool("x", "", {"type": "string"}, print)

    def takes_opaque(thing: Opaque) -> None:
        pass

    with pytest.raises(TypeError, match="explicit parameters schema"):
        tool(takes_opaque)
    with pytest.raises(ValueError, match="two tools are named"):
        Agent("a", tools=[explicit, explicit])
    with pytest.raises(ValueError, match="max_iterations"):
        Agent("a", max_iterations=0)
    agent = Agent("a", tools=[explicit, takes_nothing])  # a plain function becomes a tool
    assert [t.name for t in agent.tools] == ["add", "takes_nothing"]


class Opaque:
    """A type with no JSON schema."""


def takes_nothing() -> str:
    """Return a constant."""
    return "constant"


def test_invoke_reports_bad_arguments_and_failures_as_text() -> None:
    calls = []

    @tool
    def book(city: str, nights: int, unit: Unit = Unit.CELSIUS) -> dict:
        """Book a room."""
        calls.append((city, nights, unit))
        if nights > 30:
            raise ValueError("too many nights")
        return {"city": city, "nights": nights, "unit": unit}

    async def main() -> list[str]:
        return [await book.invoke(a) for a in (
            '{"city": "Oslo", "nights": 2, "unit": "fahrenheit"}',
            '{"city": "Oslo", "nights": 31}',
            '{"city": "Oslo"}',
            '{"city": "Oslo", "nights": "two"}',
            '{"city": "Oslo", "nights": 2, "pets": true}',
            '{"city": "Oslo", "nights": 2, "unit": "kelvin"}',
            '{"city": "Oslo", "nights": ',
            '["Oslo", 2]',
        )]

    results = asyncio.run(main())
    assert results[0] == '{"city":"Oslo","nights":2,"unit":"fahrenheit"}'
    assert calls[0] == ("Oslo", 2, Unit.FAHRENHEIT)  # enum values arrive as the Enum
    assert results[1] == "Error: book failed: ValueError: too many nights"
    assert results[2] == "Error: bad arguments to book: missing the required argument nights."
    assert results[3] == "Error: bad arguments to book: nights must be an integer, not a string."
    assert results[4].startswith("Error: bad arguments to book: unknown argument 'pets'")
    assert results[5].startswith("Error: bad arguments to book: unit must be one of 'celsius', 'fahrenheit'")
    assert results[6].startswith("Error: the arguments to book are not valid JSON")
    assert results[7] == "Error: the arguments to book must be a JSON object, not list."
    assert len(calls) == 2  # the function never ran on bad arguments


# -- the stand-in for the OpenAI API ---------------------------------------------------------------

UPSTREAM_MODEL = "gpt-4o-mini-2024-07-18"


def recorded_tool_calls(*calls: tuple[str, str], prompt_tokens: int = 90, completion_tokens: int = 18) -> dict:
    """A ``chat.completion`` as OpenAI returns it when the model calls tools; ``calls`` are
    ``(function name, arguments JSON)`` pairs."""
    return {
        "id": "chatcmpl-" + os.urandom(15).hex()[:29],
        "object": "chat.completion",
        "created": 1733130000,
        "model": UPSTREAM_MODEL,
        "choices": [{
            "index": 0,
            "message": {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "call_" + os.urandom(12).hex(), "type": "function",
                                "function": {"name": name, "arguments": arguments}} for name, arguments in calls],
                "refusal": None,
            },
            "logprobs": None,
            "finish_reason": "tool_calls",
        }],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens,
                  "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                  "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                                "accepted_prediction_tokens": 0,
                                                "rejected_prediction_tokens": 0}},
        "system_fingerprint": "fp_0705bf87c0",
    }


def recorded_answer(text: str, prompt_tokens: int = 130, completion_tokens: int = 11) -> dict:
    """A ``chat.completion`` as OpenAI returns it for a plain answer."""
    response = recorded_tool_calls(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
    response["choices"][0]["message"] = {"role": "assistant", "content": text, "refusal": None}
    response["choices"][0]["finish_reason"] = "stop"
    return response


def pieces_of(text: str) -> list[str]:
    """How the answer is cut into streamed content deltas (a word and its following space)."""
    return re.findall(r"\S+\s*|\s+", text)


class UpstreamError:
    """A scripted step answered with an error status, as OpenAI answers a refused request."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.body = {"error": {"message": message, "type": "invalid_request_error", "param": "messages",
                               "code": "context_length_exceeded"}}


class ReplayUpstream:
    """Stands for the OpenAI API: answers ``POST /v1/chat/completions`` from ``scripts``.

    A script is the list of responses for one conversation, chosen by the text of the request's
    first user message; which response is given by the number of assistant messages the request
    already holds (one per model call the agent made before), the last one repeating. That is
    stateless, so concurrent conversations replay independently. Streamed requests get the
    response as OpenAI streams it. ``gate``, when set, holds back the last content piece of a
    streamed answer until the event is set.
    """

    def __init__(self, scripts: dict[str, list]) -> None:
        self.scripts = scripts
        self.received: list[dict] = []
        self.gate: Optional[asyncio.Event] = None
        endpoint = EndpointBuilder.post("/v1/chat/completions").handle(self.answer).build()
        self.server = ServerBuilder().address("127.0.0.1:0").endpoint(endpoint).build()
        self.server.config.server.access_log = False

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.address[1]}/v1"

    def config(self) -> Config:
        """A config whose ``[llm]`` is this upstream."""
        config = Config(remote=RemoteConfig(model_name="gpt-4o-mini", base_url=self.base_url, api_key="sk-test"))
        config.server.access_log = False
        return config

    def bodies_for(self, question: str) -> list[dict]:
        return [body for body in self.received if first_user_text(body) == question]

    async def answer(self, request: EndpointRequest):
        body = request.body
        self.received.append(body)
        script = self.scripts[first_user_text(body)]
        calls_before = sum(1 for m in body["messages"] if m["role"] == "assistant")
        response = script[min(calls_before, len(script) - 1)]
        if isinstance(response, UpstreamError):
            from helios_raw import EndpointResponse

            return EndpointResponse.with_status(response.status, response.body)
        if not body.get("stream"):
            return response
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        async def produce(events: SSESink) -> None:
            chunks = stream_of(response, include_usage)
            for i, chunk in enumerate(chunks):
                if self.gate is not None and i == len(chunks) - (3 if include_usage else 2) \
                        and response["choices"][0]["message"].get("content"):
                    await asyncio.wait_for(self.gate.wait(), TIMEOUT)
                events.send(chunk)
                await events.drain()
                await asyncio.sleep(0)
            events.done()

        return sse_response(produce)


def first_user_text(body: dict) -> str:
    return next(m["content"] for m in body["messages"] if m["role"] == "user")


def stream_of(response: dict, include_usage: bool) -> list[dict]:
    """``response`` as the chunks OpenAI streams: the role (with the first tool call's head when it
    calls tools), content word by word or arguments a few characters at a time, the finish
    reason, and the usage chunk if asked for."""
    choice, message = response["choices"][0], response["choices"][0]["message"]

    def chunk(delta: dict, finish: Optional[str] = None) -> dict:
        return {"id": response["id"], "object": "chat.completion.chunk", "created": response["created"],
                "model": response["model"], "system_fingerprint": response["system_fingerprint"],
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

    chunks = []
    if message.get("tool_calls"):
        for index, call in enumerate(message["tool_calls"]):
            head = {"index": index, "id": call["id"], "type": "function",
                    "function": {"name": call["function"]["name"], "arguments": ""}}
            chunks.append(chunk({"role": "assistant", "content": None, "tool_calls": [head], "refusal": None}
                                if index == 0 else {"tool_calls": [head]}))
            arguments = call["function"]["arguments"]
            for start in range(0, len(arguments), 4):
                chunks.append(chunk({"tool_calls": [{"index": index,
                                                     "function": {"arguments": arguments[start:start + 4]}}]}))
    else:
        chunks.append(chunk({"role": "assistant", "content": "", "refusal": None}))
        chunks.extend(chunk({"content": piece}) for piece in pieces_of(message["content"]))
    chunks.append(chunk({}, choice["finish_reason"]))
    if include_usage:
        chunks.append({**chunk({}), "choices": [], "usage": response["usage"]})
    return chunks


# -- a client speaking HTTP/1.1 through h11 ------------------------------------------------------


async def exchange(port: int, method: str, path: str, body: Any = None, headers: tuple = ()) -> tuple[int, Any]:
    """One request on a fresh connection: the status and the JSON body."""
    status, chunks = None, []
    async for item in _request(port, method, path, body, headers):
        if isinstance(item, h11.Response):
            status = item.status_code
        else:
            chunks.append(item)
    return status, orjson.loads(b"".join(chunks))


async def stream_chat(port: int, body: dict) -> AsyncIterator[Any]:
    """POST a streamed chat request; yield each SSE event's data (parsed JSON, or "[DONE]") the
    moment its frame has arrived."""
    pending = b""
    async for item in _request(port, "POST", "/v1/chat/completions", body):
        if isinstance(item, h11.Response):
            assert item.status_code == 200, item
            assert dict(item.headers)[b"content-type"] == b"text/event-stream"
            continue
        pending += item
        *frames, pending = pending.split(b"\n\n")
        for frame in frames:
            assert frame.startswith(b"data: "), frame
            data = frame[6:]
            yield "[DONE]" if data == b"[DONE]" else orjson.loads(data)
    assert pending == b""


async def _request(port: int, method: str, path: str, body: Any, extra_headers: tuple = ()) -> AsyncIterator[Any]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    conn = h11.Connection(h11.CLIENT)
    data = orjson.dumps(body) if body is not None else b""
    headers = [("host", "test"), ("content-type", "application/json"), ("content-length", str(len(data))),
               *extra_headers]
    writer.write(conn.send(h11.Request(method=method, target=path, headers=headers))
                 + conn.send(h11.Data(data=data)) + conn.send(h11.EndOfMessage()))
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await reader.read(65536))
            elif isinstance(event, h11.Response):
                yield event
            elif isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                return
    finally:
        writer.close()


def chat(question: str, **params: Any) -> dict:
    return {"model": "weather-agent", "messages": [{"role": "user", "content": question}], **params}


def run(scenario) -> None:
    """Run ``scenario(upstream_port)`` in a fresh event loop, bounded in time."""
    asyncio.run(asyncio.wait_for(scenario, TIMEOUT))


class Serving:
    """``async with Serving(server) as port``: a started helios_raw server, stopped on exit."""

    def __init__(self, server) -> None:
        self.server = server

    async def __aenter__(self) -> int:
        return (await self.server.start())[1]

    async def __aexit__(self, *exc) -> None:
        await self.server.stop(1.0)


def agent_server(agent: Agent, upstream: ReplayUpstream, name: str = "weather-agent"):
    return ServerBuilder.with_agent(agent, name, upstream.config()).address("127.0.0.1:0").build()


# -- tools the agents below use --------------------------------------------------------------------

WEATHER_THREADS: list[int] = []


@tool
def get_weather(city: str, unit: Unit = Unit.CELSIUS) -> str:
    """The current weather in a city.

    Args:
        city: The city's name.
        unit: The temperature unit.
    """
    WEATHER_THREADS.append(threading.get_ident())
    return f"{city}: 18 degrees {unit.value}, sunny"


@tool
def explode() -> str:
    """A tool that always fails."""
    raise RuntimeError("the weather station is offline")


# -- the loop over real sockets ------------------------------------------------------------------

PARIS = "What's the weather in Paris?"
PARIS_ANSWER = "It is 18 degrees and sunny in Paris."


def test_tool_results_go_back_to_the_model_and_its_answer_comes_back() -> None:
    upstream = ReplayUpstream({PARIS: [
        recorded_tool_calls(("get_weather", '{"city": "Paris"}'), prompt_tokens=90, completion_tokens=18),
        recorded_answer(PARIS_ANSWER, prompt_tokens=130, completion_tokens=11),
    ]})
    agent = Agent("weather", system_prompt="You are WeatherBot.", tools=[get_weather])

    async def scenario() -> None:
        async with Serving(upstream.server):
            server = (ServerBuilder.with_agent(agent, "weather-agent", upstream.config()).address("127.0.0.1:0")
                      .endpoints([get("/about", {"agent": "weather"})]).build())
            async with Serving(server) as port:
                assert await exchange(port, "GET", "/about") == (200, {"agent": "weather"})
                loop_thread = threading.get_ident()
                request = {"model": "weather-agent", "temperature": 0.2, "max_tokens": 100, "user": "u-1",
                           "messages": [{"role": "system", "content": "Answer in English."},
                                        {"role": "user", "content": PARIS}]}
                status, body = await exchange(port, "POST", "/v1/chat/completions", request)
                assert status == 200, body
                assert body["object"] == "chat.completion" and body["model"] == "weather-agent"
                assert body["choices"][0]["message"]["content"] == PARIS_ANSWER
                assert body["choices"][0]["finish_reason"] == "stop"
                assert body["usage"] == {"prompt_tokens": 220, "completion_tokens": 29, "total_tokens": 249}

                first, second = upstream.received
                for sent in (first, second):
                    assert sent["model"] == "gpt-4o-mini" and sent["stream"] is False
                    assert (sent["temperature"], sent["max_tokens"], sent["user"]) == (0.2, 100, "u-1")
                    assert sent["tools"] == [get_weather.definition()]
                    # The agent's system prompt first, always; the client's own system message after it.
                    assert sent["messages"][:3] == [
                        {"role": "system", "content": "You are WeatherBot."},
                        {"role": "system", "content": "Answer in English."},
                        {"role": "user", "content": PARIS}]
                call = upstream.scripts[PARIS][0]["choices"][0]["message"]["tool_calls"][0]
                assert second["messages"][3] == {"role": "assistant", "content": None, "tool_calls": [call]}
                assert second["messages"][4] == {"role": "tool", "tool_call_id": call["id"],
                                                 "content": "Paris: 18 degrees celsius, sunny"}
                assert len(second["messages"]) == 5
                assert WEATHER_THREADS and WEATHER_THREADS[-1] != loop_thread  # a sync tool runs off the loop

                status, models = await exchange(port, "GET", "/v1/models")
                assert status == 200 and [m["id"] for m in models["data"]] == ["weather-agent"]
                status, health = await exchange(port, "GET", "/health")
                assert status == 200 and health["status"] == "ok"
                assert (health["model"], health["agent"], health["inner_model"]) == (
                    "weather-agent", "weather", "gpt-4o-mini")

    run(scenario())


def test_failing_tools_and_bad_arguments_are_reported_to_the_model() -> None:
    question = "Break everything"
    upstream = ReplayUpstream({question: [
        recorded_tool_calls(("explode", "{}"), ("get_weather", '{"city": 7}'), ("get_weather", '{"city": "Par'),
                            ("teleport", '{"to": "Mars"}'), ("get_weather", '{"city": "Rome", "unit": "kelvin"}')),
        recorded_answer("The tools failed, sorry."),
    ]})
    agent = Agent("weather", tools=[get_weather, explode])

    async def scenario() -> None:
        async with Serving(upstream.server):
            async with Serving(agent_server(agent, upstream)) as port:
                status, body = await exchange(port, "POST", "/v1/chat/completions", chat(question))
                assert status == 200, body
                assert body["choices"][0]["message"]["content"] == "The tools failed, sorry."
                sent = upstream.received[-1]["messages"]
                calls = sent[-6]["tool_calls"]
                results = sent[-5:]
                assert [r["tool_call_id"] for r in results] == [c["id"] for c in calls]
                texts = [r["content"] for r in results]
                assert texts[0] == "Error: explode failed: RuntimeError: the weather station is offline"
                assert texts[1] == "Error: bad arguments to get_weather: city must be a string, not an integer."
                assert texts[2].startswith("Error: the arguments to get_weather are not valid JSON")
                assert texts[3] == "Error: there is no tool named 'teleport' (available: get_weather, explode)."
                assert texts[4].startswith("Error: bad arguments to get_weather: unit must be one of")

    run(scenario())


def test_max_iterations_ends_the_answer_and_says_so() -> None:
    question = "Loop forever"
    upstream = ReplayUpstream({question: [recorded_tool_calls(("count", "{}"), prompt_tokens=10,
                                                              completion_tokens=2)]})
    runs = []

    @tool
    def count() -> int:
        """Count calls."""
        runs.append(1)
        return len(runs)

    agent = Agent("looper", tools=[count], max_iterations=3)

    async def scenario() -> None:
        async with Serving(upstream.server):
            async with Serving(agent_server(agent, upstream)) as port:
                status, body = await exchange(port, "POST", "/v1/chat/completions", chat(question))
                assert status == 200, body
                choice = body["choices"][0]
                assert choice["finish_reason"] == "length"
                assert "stopped after 3 model calls" in choice["message"]["content"]
                assert "max_iterations" in choice["message"]["content"]
                assert body["usage"] == {"prompt_tokens": 30, "completion_tokens": 6, "total_tokens": 36}
                assert len(upstream.received) == 3 and len(runs) == 2  # the last call's tools never run
                assert [m["content"] for m in upstream.received[-1]["messages"] if m["role"] == "tool"] == ["1", "2"]

                events = [e async for e in stream_chat(port, chat(question, stream=True))]
                assert events[-1] == "[DONE]"
                text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-1])
                assert "stopped after 3 model calls" in text
                assert events[-2]["choices"][0]["finish_reason"] == "length"
                assert len(upstream.received) == 6 and len(runs) == 4

    run(scenario())


def test_several_tool_calls_in_one_answer_run_concurrently() -> None:
    question = "Fetch and compute"
    upstream = ReplayUpstream({question: [
        recorded_tool_calls(("fetch", '{"key": "a"}'), ("fetch", '{"key": "b"}'),
                            ("compute", '{"x": 2}'), ("compute", '{"x": 3}')),
        recorded_answer("Done."),
    ]})
    # Each pair of calls meets at a barrier: a call waiting alone (the calls run one after the
    # other) times out, and its result is an error instead of a value.
    async_meeting = asyncio.Barrier(2)
    thread_meeting = threading.Barrier(2, timeout=TIMEOUT / 4)
    loop_threads: set[int] = set()

    @tool
    async def fetch(key: str) -> str:
        """Fetch a value (async)."""
        loop_threads.add(threading.get_ident())
        await asyncio.wait_for(async_meeting.wait(), TIMEOUT / 4)
        return f"value-{key}"

    @tool
    def compute(x: int) -> int:
        """Square a number (sync, in a worker thread)."""
        thread_meeting.wait()
        return x * x

    async def scenario() -> None:
        async with Serving(upstream.server):
            # This agent brings its own backend: the server's config (a local model) is not used.
            agent = Agent("parallel", tools=[fetch, compute], backend=RemoteBackend(upstream.config().remote))
            server = ServerBuilder.with_agent(agent, "parallel-agent").address("127.0.0.1:0").build()
            async with Serving(server) as port:
                status, body = await exchange(port, "POST", "/v1/chat/completions", chat(question))
                assert status == 200, body
                assert body["model"] == "parallel-agent"
                results = [m["content"] for m in upstream.received[-1]["messages"] if m["role"] == "tool"]
                assert results == ["value-a", "value-b", "4", "9"]
                assert loop_threads == {threading.get_ident()}  # async tools run on the event loop

    run(scenario())


def test_the_final_answer_streams_chunk_by_chunk() -> None:
    upstream = ReplayUpstream({PARIS: [
        recorded_tool_calls(("get_weather", '{"city": "Paris"}'), prompt_tokens=90, completion_tokens=18),
        recorded_answer(PARIS_ANSWER, prompt_tokens=130, completion_tokens=11),
    ]})
    agent = Agent("weather", system_prompt="You are WeatherBot.", tools=[get_weather])

    async def scenario() -> None:
        upstream.gate = asyncio.Event()
        async with Serving(upstream.server):
            async with Serving(agent_server(agent, upstream)) as port:
                events = []
                async for event in stream_chat(port, chat(PARIS, stream=True, stream_options={"include_usage": True})):
                    events.append(event)
                    if event != "[DONE]" and event["choices"] and event["choices"][0]["delta"].get("content"):
                        # The upstream holds back its last piece until the first one has reached
                        # us: an agent that buffered the answer would never get it.
                        upstream.gate.set()

                assert events[-1] == "[DONE]"
                chunks = events[:-1]
                assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
                assert {c["model"] for c in chunks} == {"weather-agent"} and len({c["id"] for c in chunks}) == 1
                assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
                contents = [c["choices"][0]["delta"]["content"] for c in chunks[1:-2]]
                assert contents == pieces_of(PARIS_ANSWER) and len(contents) > 1
                assert all("tool_calls" not in c["choices"][0]["delta"] for c in chunks if c["choices"])
                assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
                assert chunks[-1]["choices"] == []
                assert chunks[-1]["usage"] == {"prompt_tokens": 220, "completion_tokens": 29, "total_tokens": 249}

                first, second = upstream.received
                assert first["stream"] and second["stream"]
                assert first["stream_options"] == {"include_usage": True}
                assert second["messages"][-1]["content"] == "Paris: 18 degrees celsius, sunny"

    run(scenario())


def test_concurrent_requests_to_one_agent_are_not_serialised() -> None:
    question = "Meet me"
    upstream = ReplayUpstream({question: [recorded_tool_calls(("rendezvous", "{}")), recorded_answer("We met.")]})
    meeting = asyncio.Barrier(2)

    @tool
    async def rendezvous() -> str:
        """Wait for the other request."""
        await asyncio.wait_for(meeting.wait(), TIMEOUT / 4)
        return "met"

    agent = Agent("meeter", tools=[rendezvous])

    async def scenario() -> None:
        async with Serving(upstream.server):
            async with Serving(agent_server(agent, upstream)) as port:
                async def streamed() -> str:
                    events = [e async for e in stream_chat(port, chat(question, stream=True))]
                    return "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-1])

                plain, text = await asyncio.gather(
                    exchange(port, "POST", "/v1/chat/completions", chat(question)), streamed())
                assert plain[0] == 200 and plain[1]["choices"][0]["message"]["content"] == "We met."
                assert text == "We met."
                results = [m["content"] for body in upstream.received for m in body["messages"] if m["role"] == "tool"]
                assert results == ["met", "met"]  # each request's tool waited for the other's

    run(scenario())


def test_tools_the_client_declares_are_handed_back_to_the_client() -> None:
    question = "Open the door"
    door = {"type": "function", "function": {"name": "open_door", "description": "Open a door.",
                                             "parameters": {"type": "object", "properties": {}}}}
    upstream = ReplayUpstream({question: [recorded_tool_calls(("open_door", "{}"), ("get_weather", '{"city": "Oslo"}'))]})
    agent = Agent("house", tools=[get_weather])

    async def scenario() -> None:
        async with Serving(upstream.server):
            async with Serving(agent_server(agent, upstream)) as port:
                status, body = await exchange(port, "POST", "/v1/chat/completions", chat(question, tools=[door]))
                assert status == 200, body
                choice = body["choices"][0]
                assert choice["finish_reason"] == "tool_calls"
                assert [c["function"]["name"] for c in choice["message"]["tool_calls"]] == ["open_door"]
                assert upstream.received[0]["tools"] == [get_weather.definition(), door]

                events = [e async for e in stream_chat(port, chat(question, tools=[door], stream=True))]
                delta = events[-3]["choices"][0]["delta"]
                assert [c["function"]["name"] for c in delta["tool_calls"]] == ["open_door"]
                assert delta["tool_calls"][0]["index"] == 0 and delta["tool_calls"][0]["id"].startswith("call_")
                assert events[-2]["choices"][0]["finish_reason"] == "tool_calls"

                clash = {"type": "function", "function": {"name": "get_weather"}}
                status, body = await exchange(port, "POST", "/v1/chat/completions", chat(question, tools=[clash]))
                assert status == 400 and body["error"]["param"] == "tools"

    run(scenario())


def test_an_upstream_error_mid_conversation_reaches_the_client() -> None:
    question = "Too long"
    upstream = ReplayUpstream({question: [recorded_tool_calls(("get_weather", '{"city": "Oslo"}')),
                                          UpstreamError(400, "This model's maximum context length is 128000 tokens.")]})
    agent = Agent("weather", tools=[get_weather])

    async def scenario() -> None:
        async with Serving(upstream.server):
            async with Serving(agent_server(agent, upstream)) as port:
                status, body = await exchange(port, "POST", "/v1/chat/completions", chat(question))
                assert status == 400
                assert body["error"]["message"] == "This model's maximum context length is 128000 tokens."
                assert body["error"]["code"] == "context_length_exceeded"

                events = [e async for e in stream_chat(port, chat(question, stream=True))]
                assert events[0]["choices"][0]["delta"]["role"] == "assistant"
                assert events[-2]["error"]["message"] == "This model's maximum context length is 128000 tokens."
                assert events[-1] == "[DONE]"

    run(scenario())


def test_a_client_leaving_stops_the_running_tools_and_further_model_calls() -> None:
    question = "Take your time"
    upstream = ReplayUpstream({question: [recorded_tool_calls(("slow", "{}")), recorded_answer("Done.")]})
    started, stopped = asyncio.Event(), asyncio.Event()

    @tool
    async def slow() -> str:
        """Wait until cancelled."""
        started.set()
        try:
            await asyncio.sleep(TIMEOUT * 2)
        except asyncio.CancelledError:
            stopped.set()
            raise
        return "finished"

    agent = Agent("patient", tools=[slow])

    async def scenario() -> None:
        async with Serving(upstream.server):
            async with Serving(agent_server(agent, upstream)) as port:
                for streamed in (False, True):
                    started.clear(), stopped.clear()
                    body = orjson.dumps(chat(question, stream=streamed))
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\nContent-Type: "
                                 b"application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                    await started.wait()
                    writer.close()  # we leave while the tool runs
                    await stopped.wait()
                assert len(upstream.received) == 2  # one model call per request, none after the tool

    run(scenario())


# -- serving an agent from the command line ----------------------------------------------------------

AGENT_MODULE = '''
from helios_raw import Agent, tool


@tool
def get_weather(city: str) -> str:
    """The current weather in a city."""
    return f"{city}: 18 degrees, sunny"


def make_agent():
    return Agent("cli-weather", system_prompt="You are WeatherBot.", tools=[get_weather])


not_an_agent = 42


def needs_arguments(name):
    return Agent(name)


class NotAnAgent:
    pass
'''


def cli_env(module_dir: Path) -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(module_dir)])}


def test_cli_serves_an_agent_from_a_module_over_the_remote_backend(tmp_path: Path) -> None:
    (tmp_path / "weather_agent.py").write_text(AGENT_MODULE)
    upstream = ReplayUpstream({PARIS: [recorded_tool_calls(("get_weather", '{"city": "Paris"}')),
                                       recorded_answer(PARIS_ANSWER)]})

    async def scenario() -> None:
        async with Serving(upstream.server):
            config = tmp_path / "helios.toml"
            config.write_text(f'[llm]\nmodel_name = "gpt-4o-mini"\nbase_url = "{upstream.base_url}"\n')
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "helios_raw", "--agent", "weather_agent:make_agent", "--config", str(config),
                "--backend", "remote", "--bind", "127.0.0.1:0", "--no-access-log",
                cwd=tmp_path, env=cli_env(tmp_path), stderr=asyncio.subprocess.PIPE)
            try:
                port = None
                while port is None:
                    line = (await process.stderr.readline()).decode()
                    assert line, "the server exited before listening"
                    found = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
                    port = int(found.group(1)) if found else None
                drain = asyncio.ensure_future(process.stderr.read())

                status, models = await exchange(port, "GET", "/v1/models")
                assert status == 200 and [m["id"] for m in models["data"]] == ["cli-weather"]
                status, body = await exchange(port, "POST", "/v1/chat/completions",
                                              {"model": "cli-weather", "messages": [{"role": "user", "content": PARIS}]})
                assert status == 200, body
                assert body["model"] == "cli-weather"
                assert body["choices"][0]["message"]["content"] == PARIS_ANSWER
                first, second = upstream.received
                assert first["messages"][0] == {"role": "system", "content": "You are WeatherBot."}
                assert first["tools"][0]["function"]["name"] == "get_weather"
                assert second["messages"][-1]["content"] == "Paris: 18 degrees, sunny"
            finally:
                process.terminate()
                assert await process.wait() == 0
            await drain

    run(scenario())


def test_cli_rejects_an_object_that_is_not_an_agent(tmp_path: Path) -> None:
    (tmp_path / "weather_agent.py").write_text(AGENT_MODULE)
    for spec, expected in (("weather_agent:not_an_agent", "is not an Agent"),
                           ("weather_agent:needs_arguments", "calling it failed (TypeError"),
                           ("weather_agent:NotAnAgent", "but a NotAnAgent"),
                           ("weather_agent:missing", "has no attribute missing"),
                           ("no_such_module:agent", "Cannot import no_such_module")):
        result = subprocess.run([sys.executable, "-m", "helios_raw", "--agent", spec, "--backend", "remote"],
                                cwd=tmp_path, env=cli_env(tmp_path), capture_output=True, text=True, timeout=60)
        assert result.returncode == 1
        assert expected in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


# -- over the real local backend -------------------------------------------------------------------


def test_an_agent_over_the_local_model(tmp_path: Path) -> None:
    from helios_raw.config import LocalConfig
    from tests.support.tiny_model import build_tiny_gguf

    model = build_tiny_gguf(tmp_path / "tiny.gguf")

    def local_config() -> Config:
        config = Config(local=LocalConfig(model_path=str(model), max_tokens=12, seed=7, n_threads=1))
        config.server.access_log = False
        config.server.port = 0
        return config

    agent = Agent("local-agent", system_prompt="You are a weather assistant. Use the tools.", tools=[get_weather])
    agent_server = ServerBuilder.with_agent(agent, "local-agent", local_config()).build()
    plain_server = ServerBuilder(local_config()).build()
    question = {"messages": [{"role": "user", "content": "Hello world"}], "temperature": 0}

    async def scenario() -> None:
        async with Serving(agent_server) as port, Serving(plain_server) as plain_port:
            await agent_server.backend.wait_ready()
            await plain_server.backend.wait_ready()
            status, body = await exchange(port, "POST", "/v1/chat/completions", {"model": "local-agent", **question})
            assert status == 200, body
            assert body["object"] == "chat.completion" and body["model"] == "local-agent"
            choice = body["choices"][0]
            assert choice["finish_reason"] in ("stop", "length")
            assert isinstance(choice["message"]["content"], str) and choice["message"]["content"]
            assert body["usage"]["completion_tokens"] > 0

            status, direct = await exchange(plain_port, "POST", "/v1/chat/completions", {"model": "tiny", **question})
            assert status == 200, direct
            # The model read more than the user's message: the agent's system prompt and tool definitions.
            assert body["usage"]["prompt_tokens"] > direct["usage"]["prompt_tokens"]

            events = [e async for e in stream_chat(port, {"model": "local-agent", "stream": True, **question})]
            assert events[-1] == "[DONE]" and events[0]["choices"][0]["delta"]["role"] == "assistant"
            text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events[1:-1])
            assert text and events[-2]["choices"][0]["finish_reason"] in ("stop", "length")

    run(scenario())
