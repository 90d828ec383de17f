"""``POST /v1/completions``: validation, the agent's refusal, the remote backend passing requests
through to a real engine (llama-cpp-python's server on a tiny GGUF), and the official ``openai``
SDK and LlamaIndex's ``OpenAILike`` (default settings) as clients; every object judged by
OpenAI's schema. The local backend's own completions are tested against the same contract under
the ``needs_local_completions`` marker."""

from __future__ import annotations

import json

import openai
import pytest

from helios_raw import Agent, Config, RemoteConfig, Server, ServerBuilder
from helios_raw.backends.remote import RemoteBackend
from tests.conftest import counts, error_of, local_server
from tests.support.apis import post_json
from tests.support.completions import (
    streamed_text,
    text_completion,
    text_stream,
    validate_text_chunk,
)
from tests.support.rawhttp import running
from tests.support.upstreams import llama_cpp_server
from tests.test_remote import Exchange, FakeUpstream


@pytest.fixture(scope="module")
def engine(pooled_model_path):
    """llama-cpp-python's server on the pooled tiny model: a real engine as the upstream."""
    process = llama_cpp_server(pooled_model_path, pooled_model_path.parent)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def proxy(engine):
    """helios_raw in front of ``engine`` (``[remote]``: it serves the upstream's model list)."""
    config = Config()
    config.server.port, config.server.access_log = 0, False
    config.remote = RemoteConfig(base_url=engine.base_url)
    server = Server(config)
    with running(server) as thread:
        thread.model = engine.models()["data"][0]["id"]
        yield thread


def direct(engine, body: dict) -> dict:
    """``body`` answered by the engine itself."""
    import urllib.request

    request = urllib.request.Request(engine.base_url + "/completions", json.dumps(body).encode(),
                                     {"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as answer:
        return json.loads(answer.read())


# -- validation ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def untouched():
    """A server whose upstream must never be asked: every request here is refused before."""
    async def fail(exchange: Exchange) -> None:
        await exchange.send_json(500, {"error": {"message": "the upstream was asked"}})

    upstream = FakeUpstream(fail)
    with running(upstream) as up:
        backend = RemoteBackend(RemoteConfig(base_url=f"http://127.0.0.1:{up.port}/v1", model_name="m"))
        with running(ServerBuilder().address("127.0.0.1:0").backend(backend).build()) as server:
            server.upstream = upstream
            yield server


@pytest.mark.parametrize("fields, param", [
    ({"prompt": ...}, "prompt"),
    ({"prompt": 5}, "prompt"),
    ({"prompt": []}, "prompt"),
    ({"prompt": [1, "a"]}, "prompt"),
    ({"prompt": [[1], []]}, "prompt"),
    ({"prompt": [-1]}, "prompt"),
    ({"model": ""}, "model"),
    ({"suffix": "the end"}, "suffix"),
    ({"suffix": 3}, "suffix"),
    ({"best_of": 2}, "best_of"),
    ({"n": 2}, "n"),
    ({"logprobs": 6}, "logprobs"),
    ({"logprobs": True}, "logprobs"),
    ({"echo": "yes"}, "echo"),
    ({"max_tokens": -1}, "max_tokens"),
    ({"temperature": 3}, "temperature"),
    ({"top_p": 1.5}, "top_p"),
    ({"presence_penalty": -3}, "presence_penalty"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"logit_bias": {"x": 1}}, "logit_bias"),
    ({"seed": 1.5}, "seed"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),
    ({"user": 7}, "user"),
])
def test_bad_requests_are_400_naming_the_param(untouched, fields: dict, param: str) -> None:
    body = {"model": "m", "prompt": "hello", **fields}
    body = {key: value for key, value in body.items() if value is not ...}
    error = error_of(post_json(untouched.port, "/v1/completions", body), 400, param)
    assert error["type"] == "invalid_request_error"
    assert untouched.upstream.requests == []


def test_a_body_that_is_not_an_object_is_400(untouched) -> None:
    error_of(post_json(untouched.port, "/v1/completions", b"[1, 2]"), 400)
    error_of(post_json(untouched.port, "/v1/completions", b"{not json"), 400)
    assert untouched.upstream.requests == []


def test_an_agent_refuses_text_completions_clearly() -> None:
    agent = Agent("helper", system_prompt="Be brief.")
    config = Config()
    config.server.port, config.server.access_log = 0, False
    config.remote = RemoteConfig(base_url="http://127.0.0.1:9/v1")
    with running(ServerBuilder.with_agent(agent, "helper", config).build()) as server:
        for stream in (False, True):
            answer = post_json(server.port, "/v1/completions", {"model": "helper", "prompt": "hi", "stream": stream})
            error = error_of(answer, 400, "model")
            assert error["code"] == "unsupported_model" and "/v1/completions" in error["message"]


# -- through the remote backend ------------------------------------------------------------------


def test_a_completion_is_the_engines_answer_in_openais_shape(engine, proxy) -> None:
    body = {"model": proxy.model, "prompt": "hello world", "max_tokens": 6, "temperature": 0, "logprobs": 2}
    ours, theirs = text_completion(proxy.port, body), direct(engine, body)
    choice = ours["choices"][0]
    assert choice["text"] == theirs["choices"][0]["text"] and choice["finish_reason"] == "length"
    assert ours["usage"] == theirs["usage"] and ours["object"] == "text_completion"
    logprobs = choice["logprobs"]
    assert len(logprobs["tokens"]) == 6 and "".join(logprobs["tokens"]) == choice["text"]
    assert all(len(top) == 2 for top in logprobs["top_logprobs"])


def test_a_streamed_completion_has_one_id_and_usage_last_when_asked(engine, proxy) -> None:
    body = {"model": proxy.model, "prompt": "once upon a time", "max_tokens": 8, "temperature": 0}
    chunks = text_stream(proxy.port, {**body, "stream_options": {"include_usage": True}})
    assert len({c["id"] for c in chunks}) == 1 and len({c["created"] for c in chunks}) == 1
    assert streamed_text(chunks) == direct(engine, body)["choices"][0]["text"]
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] == "length" and set(finishes[:-1]) == {None}
    # llama-cpp-python's server sends no usage in a stream: there is none to relay.
    assert all("usage" not in c for c in chunks)


def test_the_openai_sdk_completes_streamed_and_not(proxy) -> None:
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{proxy.port}/v1", api_key="unused", max_retries=0)
    completion = client.completions.create(model=proxy.model, prompt="hello", max_tokens=5, temperature=0)
    assert completion.object == "text_completion" and completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 5
    pieces = list(client.completions.create(model=proxy.model, prompt="hello", max_tokens=5, temperature=0,
                                            stream=True))
    for piece in pieces:
        validate_text_chunk(piece.model_dump(exclude_unset=True))
    assert "".join(p.choices[0].text for p in pieces if p.choices) == completion.choices[0].text


def test_llamaindex_openailike_with_default_settings(proxy) -> None:
    from llama_index.core.llms import ChatMessage
    from llama_index.llms.openai_like import OpenAILike

    llm = OpenAILike(model=proxy.model, api_base=f"http://127.0.0.1:{proxy.port}/v1", api_key="unused")
    completed = llm.complete("hello world")
    assert isinstance(completed.text, str) and completed.text
    streamed = list(llm.stream_complete("hello world"))
    assert streamed and streamed[-1].text
    answer = llm.chat([ChatMessage(role="user", content="hello")])  # not a chat model: via /v1/completions
    assert answer.message.content


# -- the local backend (the contract, for its implementation) ------------------------------------


@pytest.fixture(scope="module")
def local(tiny_model_path):
    with local_server(tiny_model_path) as server:
        yield server


@pytest.mark.needs_local_completions
def test_local_completion_continues_the_raw_prompt(local) -> None:
    completion = text_completion(local.port, {"model": "tiny", "prompt": "hello world", "max_tokens": 8,
                                              "temperature": 0, "seed": 1})
    again = text_completion(local.port, {"model": "tiny", "prompt": "hello world", "max_tokens": 8,
                                         "temperature": 0, "seed": 1})
    assert completion["choices"][0]["text"] == again["choices"][0]["text"]
    assert completion["usage"]["prompt_tokens"] == 2  # "hello" and " world": no chat template, no BOS
    assert completion["usage"]["completion_tokens"] == 8 and completion["choices"][0]["finish_reason"] == "length"
    assert completion["model"] == "tiny"


@pytest.mark.needs_local_completions
def test_local_completion_default_length_echo_logprobs_and_stop(local) -> None:
    assert text_completion(local.port, {"model": "tiny", "prompt": "hi"})["usage"]["completion_tokens"] == 16
    echoed = text_completion(local.port, {"model": "tiny", "prompt": "hello world", "max_tokens": 3,
                                          "temperature": 0, "echo": True, "logprobs": 2})
    choice = echoed["choices"][0]
    assert choice["text"].startswith("hello world")
    logprobs = choice["logprobs"]
    assert "".join(logprobs["tokens"]) == choice["text"] and logprobs["token_logprobs"][0] is None
    assert logprobs["text_offset"][0] == 0 and all(len(t) <= 2 for t in logprobs["top_logprobs"][1:])
    plain = text_completion(local.port, {"model": "tiny", "prompt": "hello world", "max_tokens": 12,
                                         "temperature": 0})["choices"][0]["text"]
    stop = plain[3:5]
    stopped = text_completion(local.port, {"model": "tiny", "prompt": "hello world", "max_tokens": 12,
                                           "temperature": 0, "stop": stop})["choices"][0]
    assert stopped["text"] == plain[:plain.index(stop)] and stopped["finish_reason"] == "stop"


@pytest.mark.needs_local_completions
def test_local_completion_of_several_prompts_streamed(local) -> None:
    body = {"model": "tiny", "prompt": ["hello world", "tell me"], "max_tokens": 4, "temperature": 0}
    whole = text_completion(local.port, body)
    assert [c["index"] for c in whole["choices"]] == [0, 1]
    chunks = text_stream(local.port, {**body, "stream_options": {"include_usage": True}})
    assert [streamed_text(chunks, i) for i in (0, 1)] == [c["text"] for c in whole["choices"]]
    assert chunks[-1]["choices"] == [] and counts(chunks[-1]["usage"]) == counts(whole["usage"])
    assert len({c["id"] for c in chunks}) == 1


@pytest.mark.needs_local_completions
def test_local_completions_with_the_openai_sdk(local) -> None:
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{local.port}/v1", api_key="unused", max_retries=0)
    completion = client.completions.create(model="tiny", prompt="hello", max_tokens=5, temperature=0)
    streamed = "".join(p.choices[0].text for p in client.completions.create(
        model="tiny", prompt="hello", max_tokens=5, temperature=0, stream=True) if p.choices)
    assert streamed == completion.choices[0].text
