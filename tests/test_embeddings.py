"""``POST /v1/embeddings``: validation, the agent's refusal, the remote backend in front of a real
engine (llama-cpp-python's server on a tiny GGUF with mean pooling), and the official ``openai``
SDK as the client (which asks for base64 unless told otherwise); every answer judged by OpenAI's
schema. The local backend's own embeddings are tested against the same contract under the
``needs_local_embeddings`` marker."""

from __future__ import annotations

import math

import openai
import pytest

from helios_raw import Agent, Config, RemoteConfig, Server
from tests.conftest import error_of, local_server
from tests.support.apis import post_json
from tests.support.completions import embeddings, floats
from tests.support.rawhttp import running
from tests.support.upstreams import llama_cpp_server
from tests.test_completions import untouched  # noqa: F401  (a fixture)


@pytest.fixture(scope="module")
def proxy(pooled_model_path):
    """helios_raw in front of llama-cpp-python's server on the pooled tiny model."""
    engine = llama_cpp_server(pooled_model_path, pooled_model_path.parent)
    config = Config()
    config.server.port, config.server.access_log = 0, False
    config.remote = RemoteConfig(base_url=engine.base_url)
    try:
        with running(Server(config)) as thread:
            thread.model = engine.models()["data"][0]["id"]
            yield thread
    finally:
        engine.stop()


@pytest.mark.parametrize("fields, param", [
    ({"input": ...}, "input"),
    ({"input": ""}, "input"),
    ({"input": []}, "input"),
    ({"input": ["a", ""]}, "input"),
    ({"input": ["a"] * 2049}, "input"),
    ({"input": [[1], [-2]]}, "input"),
    ({"input": [1, "a"]}, "input"),
    ({"input": 3}, "input"),
    ({"encoding_format": "int8"}, "encoding_format"),
    ({"dimensions": 0}, "dimensions"),
    ({"dimensions": "8"}, "dimensions"),
    ({"user": 1}, "user"),
    ({"model": 5}, "model"),
])
def test_bad_requests_are_400_naming_the_param(untouched, fields: dict, param: str) -> None:  # noqa: F811
    body = {"model": "m", "input": "hello", **fields}
    body = {key: value for key, value in body.items() if value is not ...}
    error_of(post_json(untouched.port, "/v1/embeddings", body), 400, param)
    assert untouched.upstream.requests == []


def test_an_agent_refuses_embeddings_clearly() -> None:
    from helios_raw import ServerBuilder

    config = Config()
    config.server.port, config.server.access_log = 0, False
    config.remote = RemoteConfig(base_url="http://127.0.0.1:9/v1")
    server = ServerBuilder.with_agent(Agent("helper", system_prompt="Be brief."), "helper", config).build()
    with running(server) as thread:
        error = error_of(post_json(thread.port, "/v1/embeddings", {"model": "helper", "input": "hi"}), 400, "model")
    assert error["code"] == "unsupported_model" and "/v1/embeddings" in error["message"]


def test_embeddings_through_the_remote_backend(proxy) -> None:
    texts = ["hello world", "the cat", "hello world"]
    answer = embeddings(proxy.port, {"model": proxy.model, "input": texts})
    vectors = [item["embedding"] for item in answer["data"]]
    assert [item["index"] for item in answer["data"]] == [0, 1, 2]
    assert vectors[0] == vectors[2] and vectors[0] != vectors[1] and len(vectors[0]) == 64
    assert answer["usage"]["prompt_tokens"] == answer["usage"]["total_tokens"] > 0
    # The engine ignores encoding_format; base64 is made here, from the same floats.
    encoded = embeddings(proxy.port, {"model": proxy.model, "input": texts, "encoding_format": "base64"})
    assert all(isinstance(item["embedding"], str) for item in encoded["data"])
    for item, vector in zip(encoded["data"], vectors):
        assert floats(item["embedding"]) == pytest.approx(vector, abs=1e-6)


def test_dimensions_the_upstream_ignores_are_a_400(proxy) -> None:
    answer = post_json(proxy.port, "/v1/embeddings", {"model": proxy.model, "input": "hi", "dimensions": 8})
    assert "64 dimensions" in error_of(answer, 400, "dimensions")["message"]
    assert embeddings(proxy.port, {"model": proxy.model, "input": "hi", "dimensions": 64})["data"]


def test_the_openai_sdk_embeds(proxy) -> None:
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{proxy.port}/v1", api_key="unused", max_retries=0)
    default = client.embeddings.create(model=proxy.model, input=["hello world", "the cat"])  # base64 underneath
    plain = client.embeddings.create(model=proxy.model, input=["hello world", "the cat"], encoding_format="float")
    for decoded, listed in zip(default.data, plain.data):
        assert decoded.embedding == pytest.approx(listed.embedding, abs=1e-6)
    assert default.usage.prompt_tokens > 0 and default.object == "list"


# -- the local backend (the contract, for its implementation) ------------------------------------


@pytest.fixture(scope="module")
def local(pooled_model_path):
    with local_server(pooled_model_path) as server:
        yield server


@pytest.mark.needs_local_embeddings
def test_local_embeddings_are_normalised_and_batched(local) -> None:
    texts = ["hello world", "the cat", "hello world", "a café in Zürich"]
    answer = embeddings(local.port, {"model": "tiny", "input": texts})
    vectors = [item["embedding"] for item in answer["data"]]
    assert vectors[0] == pytest.approx(vectors[2]) and vectors[0] != pytest.approx(vectors[1])
    assert all(math.isclose(math.fsum(x * x for x in v), 1.0, rel_tol=1e-4) for v in vectors)
    one_by_one = [embeddings(local.port, {"model": "tiny", "input": t})["data"][0]["embedding"] for t in texts]
    for single, vector in zip(one_by_one, vectors):  # a batch equals its parts
        assert single == pytest.approx(vector, abs=1e-5)
    singles = [embeddings(local.port, {"model": "tiny", "input": t})["usage"]["prompt_tokens"] for t in texts]
    assert answer["usage"]["prompt_tokens"] == sum(singles) and answer["model"] == "tiny"


@pytest.mark.needs_local_embeddings
def test_local_embeddings_of_token_ids_and_in_base64(local) -> None:
    text = embeddings(local.port, {"model": "tiny", "input": "hello world"})["data"][0]["embedding"]
    tokens = embeddings(local.port, {"model": "tiny", "input": [[0x68, 0x65, 0x6C, 0x6C, 0x6F]]})
    assert len(tokens["data"][0]["embedding"]) == len(text) and tokens["usage"]["prompt_tokens"] == 5
    encoded = embeddings(local.port, {"model": "tiny", "input": "hello world", "encoding_format": "base64"})
    assert floats(encoded["data"][0]["embedding"]) == pytest.approx(text, abs=1e-6)
    refused = post_json(local.port, "/v1/embeddings", {"model": "tiny", "input": "hi", "dimensions": 8})
    error_of(refused, 400, "dimensions")


@pytest.mark.needs_local_embeddings
def test_local_embeddings_with_the_openai_sdk(local) -> None:
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{local.port}/v1", api_key="unused", max_retries=0)
    answer = client.embeddings.create(model="tiny", input=["hello world", "the cat"])
    assert len(answer.data) == 2 and len(answer.data[0].embedding) == 64


def test_a_model_without_pooling_embeds_with_the_mean_of_its_states(tiny_model_path) -> None:
    """The tiny chat model declares no pooling: its vector is the mean of its tokens' states."""
    with local_server(tiny_model_path) as server:
        answer = embeddings(server.port, {"model": "tiny", "input": ["hello world", "the cat", "hello world"]})
    vectors = [item["embedding"] for item in answer["data"]]
    assert vectors[0] == pytest.approx(vectors[2]) and vectors[0] != pytest.approx(vectors[1])
    assert all(math.isclose(math.fsum(x * x for x in v), 1.0, rel_tol=1e-4) for v in vectors)
