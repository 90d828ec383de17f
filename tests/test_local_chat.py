"""Non-streamed chat completions from the local backend, over real sockets, on the tiny model.

The tiny model's weights are random: its text is gibberish, deterministic for a fixed seed (or
temperature 0), and it never ends its turn by itself, so normal stops are tested with ``stop``
strings taken from its own output."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from helios_raw.backends.base import BackendError
from helios_raw.backends.local import LocalBackend
from helios_raw.config import LocalConfig
from tests.conftest import (
    chat_body,
    completion_of,
    error_of,
    health,
    local_server,
    post_chat,
    text_of_completion,
    validate,
)

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
                                                    "days": {"type": "integer"}},
                   "required": ["city", "days"], "additionalProperties": False}}}
ADD = {"type": "function", "function": {
    "name": "add", "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                                  "required": ["a", "b"]}}}


@pytest.fixture(scope="module")
def tokenizer(tiny_model_path):
    """The tiny model's own tokenizer (vocabulary only), to count tokens independently."""
    import llama_cpp

    llama = llama_cpp.Llama(str(tiny_model_path), vocab_only=True, verbose=False)
    yield lambda text: llama.tokenize(text.encode(), add_bos=False, special=True)
    llama.close()


def test_completion_is_an_openai_object_with_real_usage(tiny_server, tokenizer) -> None:
    data = completion_of(tiny_server.port, chat_body("hello world", max_tokens=12))
    assert data["id"].startswith("chatcmpl-") and data["object"] == "chat.completion"
    assert data["model"] == "tiny" and data["system_fingerprint"].startswith("fp_")
    choice = data["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"]
    assert choice["finish_reason"] == "length"
    prompt = "<|im_start|>user\nhello world<|im_end|>\n<|im_start|>assistant\n"
    usage = data["usage"]
    assert {k: usage[k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")} == {
        "prompt_tokens": len(tokenizer(prompt)), "completion_tokens": 12, "total_tokens": len(tokenizer(prompt)) + 12}
    assert usage["prompt_tokens_details"]["cached_tokens"] >= 0 and usage["completion_tokens_details"] == {
        "reasoning_tokens": 0, "audio_tokens": 0, "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}
    # completion tokens are the model's tokens: re-tokenising the text gives no more than were sampled
    assert len(tokenizer(choice["message"]["content"])) <= 12


def test_model_name_in_the_request_is_lenient_by_default(tiny_server) -> None:
    data = completion_of(tiny_server.port, chat_body(model="gpt-4o", max_tokens=2))
    assert data["model"] == "tiny"


def test_strict_model_names_answer_404_for_another_model(tiny_model_path) -> None:
    with local_server(tiny_model_path, strict_models=True) as server:
        error = error_of(post_chat(server.port, chat_body(model="gpt-4o")), 404, "model")
        assert error["code"] == "model_not_found"
        assert completion_of(server.port, chat_body(max_tokens=2))["model"] == "tiny"


def test_max_tokens_and_max_completion_tokens_end_with_length(tiny_server) -> None:
    for field in ("max_tokens", "max_completion_tokens"):
        body = chat_body()
        del body["max_tokens"]
        body[field] = 7
        data = completion_of(tiny_server.port, body)
        assert data["choices"][0]["finish_reason"] == "length"
        assert data["usage"]["completion_tokens"] == 7


def test_config_defaults_apply_when_the_request_leaves_them_out(tiny_model_path) -> None:
    with local_server(tiny_model_path, max_tokens=9, temperature=0.0) as server:
        body = {"model": "tiny", "messages": [{"role": "user", "content": "hello"}]}
        first, second = completion_of(server.port, body), completion_of(server.port, body)
        assert first["usage"]["completion_tokens"] == 9
        assert first["choices"][0]["message"]["content"] == second["choices"][0]["message"]["content"]
        greedy = text_of_completion(server.port, {**body, "temperature": 0, "max_tokens": 9})
        assert first["choices"][0]["message"]["content"] == greedy


def test_stop_strings_end_the_answer_before_them(tiny_server) -> None:
    text = text_of_completion(tiny_server.port, chat_body(max_tokens=60))
    stop = text[20:24]
    assert len(stop) == 4 and stop.strip()
    data = completion_of(tiny_server.port, chat_body(max_tokens=60, stop=stop))
    assert data["choices"][0]["finish_reason"] == "stop"
    assert data["choices"][0]["message"]["content"] == text[:text.index(stop)]
    assert data["usage"]["completion_tokens"] < 60
    several = completion_of(tiny_server.port, chat_body(max_tokens=60, stop=["\u2603never", text[30:33], stop]))
    assert several["choices"][0]["message"]["content"] == text[:min(text.index(stop), text.index(text[30:33]))]


def test_seed_makes_sampling_reproducible(tiny_server) -> None:
    body = chat_body(temperature=1.2, top_p=1.0, top_k=0, min_p=0.0, max_tokens=30)
    same = {text_of_completion(tiny_server.port, {**body, "seed": 7}) for _ in range(3)}
    assert len(same) == 1
    others = {text_of_completion(tiny_server.port, {**body, "seed": seed}) for seed in (1, 2, 3)}
    assert len(others | same) > 1


def test_sampling_parameters_change_the_output(tiny_server) -> None:
    greedy = text_of_completion(tiny_server.port, chat_body(max_tokens=60))
    for change in ({"repeat_penalty": 1.8}, {"frequency_penalty": 2.0}, {"presence_penalty": -2.0}):
        assert text_of_completion(tiny_server.port, chat_body(max_tokens=60, **change)) != greedy, change
    # top_k 1 is greedy whatever the temperature
    assert text_of_completion(tiny_server.port, chat_body(max_tokens=60, temperature=1.5, top_k=1, seed=3)) == greedy


def test_logit_bias_steers_tokens(tiny_server) -> None:
    # the tiny vocabulary starts with the 256 byte tokens: token 90 is "Z"
    data = completion_of(tiny_server.port, chat_body(max_tokens=6, logit_bias={"90": 100}))
    assert data["choices"][0]["message"]["content"] == "Z" * 6
    error_of(post_chat(tiny_server.port, chat_body(logit_bias={"999999": 5})), 400, "logit_bias")


def test_content_parts_are_read_as_text(tiny_server) -> None:
    plain = completion_of(tiny_server.port, chat_body("hello world"))
    parts = completion_of(tiny_server.port, chat_body([{"type": "text", "text": "hello "},
                                                        {"type": "text", "text": "world"}]))
    assert parts["choices"][0]["message"] == plain["choices"][0]["message"]
    assert parts["usage"] == plain["usage"]


def test_image_parts_are_refused_naming_the_part(tiny_server) -> None:
    content = [{"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {"url": "data:x"}}]
    error = error_of(post_chat(tiny_server.port, chat_body(content)), 400, "messages[0].content[1].type")
    assert "text only" in error["message"]


def test_all_roles_and_tool_history_are_accepted(tiny_server) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": "Use tools when useful."},
        {"role": "user", "content": "Weather in Paris?", "name": "ann"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
            "name": "get_weather", "arguments": "{\"city\": \"Paris\", \"days\": 1}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "user", "content": "Thanks"},
    ]
    short = completion_of(tiny_server.port, chat_body("Thanks", max_tokens=3))
    data = completion_of(tiny_server.port, {**chat_body(max_tokens=3), "messages": messages, "user": "u-1"})
    assert data["usage"]["prompt_tokens"] > short["usage"]["prompt_tokens"] + 20


@pytest.mark.parametrize("field, value, param", [
    ("temperature", 5, "temperature"),
    ("top_p", 1.5, "top_p"),
    ("max_tokens", 0, "max_tokens"),
    ("max_completion_tokens", "ten", "max_completion_tokens"),
    ("stop", ["a", "b", "c", "d", "e"], "stop"),
    ("n", 2, "n"),
    ("seed", "x", "seed"),
    ("presence_penalty", 3, "presence_penalty"),
    ("logit_bias", {"x": 1}, "logit_bias"),
    ("response_format", {"type": "xml"}, "response_format"),
    ("tool_choice", "required", "tool_choice"),
    ("top_logprobs", 3, "top_logprobs"),
    ("messages", [], "messages"),
    ("stream_options", {"include_usage": True}, "stream_options"),
])
def test_bad_parameters_are_400_naming_the_param(tiny_server, field, value, param) -> None:
    error = error_of(post_chat(tiny_server.port, chat_body(**{field: value})), 400, param)
    assert error["type"] == "invalid_request_error"


def test_unknown_fields_are_ignored(tiny_server) -> None:
    data = completion_of(tiny_server.port, chat_body(max_tokens=2, metadata={"a": "b"}, frobnicate=True))
    assert data["usage"]["completion_tokens"] == 2


def test_prompt_longer_than_the_context_is_a_400(tiny_model_path) -> None:
    with local_server(tiny_model_path, context_size=64) as server:
        error = error_of(post_chat(server.port, chat_body("hello " * 200)), 400, "messages")
        assert error["code"] == "context_length_exceeded"
        # a max_tokens the context has no room for is refused, as OpenAI does ...
        error = error_of(post_chat(server.port, chat_body("hello", max_tokens=500)), 400, "max_tokens")
        assert error["code"] == "context_length_exceeded" and "room for 55 new tokens" in error["message"]
        # ... while the configured default is capped to the room left
        body = chat_body("hello")
        del body["max_tokens"]
        data = completion_of(server.port, body)
        assert data["choices"][0]["finish_reason"] == "length"
        assert data["usage"]["total_tokens"] == 64


def test_json_schema_output_is_enforced(tiny_server) -> None:
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer"},
                                               "tag": {"type": "string", "enum": ["a", "b"]}},
              "required": ["ok", "n", "tag"], "additionalProperties": False}
    data = completion_of(tiny_server.port, chat_body(max_tokens=200, response_format={
        "type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}}))
    assert data["choices"][0]["finish_reason"] == "stop"
    parsed = json.loads(data["choices"][0]["message"]["content"])
    assert set(parsed) == {"ok", "n", "tag"}
    assert isinstance(parsed["ok"], bool) and isinstance(parsed["n"], int) and parsed["tag"] in ("a", "b")


def test_json_object_output_parses(tiny_server) -> None:
    data = completion_of(tiny_server.port, chat_body(max_tokens=300, response_format={"type": "json_object"}))
    assert data["choices"][0]["finish_reason"] == "stop"
    assert isinstance(json.loads(data["choices"][0]["message"]["content"]), dict)


def test_a_schema_the_grammar_cannot_enforce_is_refused_saying_why(tiny_server) -> None:
    for schema, word in (({"type": "object", "properties": {"n": {"type": "integer", "multipleOf": 3}}}, "multipleOf"),
                         ({"type": "string", "format": "ipv6"}, "ipv6"),
                         ({"not": {"type": "string"}}, "not")):
        body = chat_body(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}})
        error = error_of(post_chat(tiny_server.port, body), 400, "response_format.json_schema.schema")
        assert word in error["message"] and error["code"] == "unsupported_schema"


def test_required_tool_choice_returns_a_tool_call(tiny_server) -> None:
    data = completion_of(tiny_server.port, chat_body("Weather in Paris?", max_tokens=200, tools=[WEATHER, ADD],
                                                     tool_choice="required"))
    choice = data["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert call["id"].startswith("call_") and call["type"] == "function"
    arguments = json.loads(call["function"]["arguments"])
    if call["function"]["name"] == "get_weather":
        assert set(arguments) == {"city", "days"} and len(arguments["city"]) <= 12
    else:
        assert call["function"]["name"] == "add" and {"a", "b"} <= set(arguments)


def test_named_tool_choice_calls_that_function(tiny_server) -> None:
    data = completion_of(tiny_server.port, chat_body(max_tokens=200, tools=[WEATHER, ADD],
                                                     tool_choice={"type": "function", "function": {"name": "add"}}))
    (call,) = data["choices"][0]["message"]["tool_calls"]
    assert call["function"]["name"] == "add"
    arguments = json.loads(call["function"]["arguments"])
    assert isinstance(arguments["a"], int) and isinstance(arguments["b"], int)


def test_auto_tool_choice_lets_ordinary_text_through(tiny_server) -> None:
    with_tools = completion_of(tiny_server.port, chat_body(max_tokens=20, tools=[WEATHER]))
    assert with_tools["choices"][0]["finish_reason"] == "length"
    assert with_tools["choices"][0]["message"]["content"] and "tool_calls" not in with_tools["choices"][0]["message"]
    # the tools are described to the model, and "none" leaves them out of the prompt
    without = completion_of(tiny_server.port, chat_body(max_tokens=20, tools=[WEATHER], tool_choice="none"))
    assert with_tools["usage"]["prompt_tokens"] > without["usage"]["prompt_tokens"]


def test_logprobs_report_the_sampled_tokens(tiny_server) -> None:
    data = completion_of(tiny_server.port, chat_body(max_tokens=8, logprobs=True, top_logprobs=3))
    content = data["choices"][0]["logprobs"]["content"]
    assert len(content) == 8
    assert bytes(b for entry in content for b in entry["bytes"]).decode("utf-8", "replace") == \
        data["choices"][0]["message"]["content"]
    for entry in content:
        assert entry["logprob"] <= 0 and len(entry["top_logprobs"]) == 3
        tops = [t["logprob"] for t in entry["top_logprobs"]]
        assert tops == sorted(tops, reverse=True)
        assert entry["logprob"] == pytest.approx(tops[0])  # greedy picks the likeliest token
        assert entry["top_logprobs"][0]["bytes"] == entry["bytes"]
    assert completion_of(tiny_server.port, chat_body(max_tokens=2))["choices"][0]["logprobs"] is None


def test_health_reports_the_model(tiny_server) -> None:
    facts = health(tiny_server)
    assert facts["status"] == "ok" and facts["model"] == "tiny" and facts["backend_state"] == "ready"
    assert facts["chat_format"] == "template" and facts["busy"] is False and facts["queue_waiting"] == 0


def test_a_model_without_template_gets_its_format_from_the_architecture(tmp_path) -> None:
    from tests.support.tiny_model import build_tiny_gguf

    path = build_tiny_gguf(tmp_path / "bare.gguf", chat_template=None)
    with local_server(path) as server:
        assert health(server)["chat_format"] == "chatml"  # llama architecture with ChatML tokens
        templated = completion_of(server.port, chat_body("hello world", max_tokens=2))
    with local_server(path, chat_format="llama-2") as server:
        assert health(server)["chat_format"] == "llama-2"
        overridden = completion_of(server.port, chat_body("hello world", max_tokens=2))
    assert templated["usage"]["prompt_tokens"] != overridden["usage"]["prompt_tokens"]


def test_loading_answers_503_and_health_says_so(tiny_model_path) -> None:
    import threading

    from helios_raw import Config, Server
    from tests.support.rawhttp import Client, running

    config = Config()
    config.server.port, config.server.access_log = 0, False
    backend = LocalBackend(LocalConfig(model_path=str(tiny_model_path), model_name="tiny"))
    # Hold the engine's thread before it loads, so that loading takes a while.
    release = threading.Event()
    load = backend._engine._load
    backend._engine._load = lambda: (release.wait(10), load())[1]
    with running(Server(config, backend)) as server:
        with Client(server.port) as client:  # a load balancer reads the status code
            client.request("GET", "/health")
            answer = client.read_response()
        assert answer.status == 503 and answer.header("retry-after") == "1"
        facts = answer.json()
        assert facts["status"] == "loading" and facts["backend_state"] == "loading"
        assert facts["error"]["code"] == "model_loading"
        answer = post_chat(server.port, chat_body())
        error = error_of(answer, 503)
        assert error["code"] == "model_loading" and answer.header("retry-after") == "1"
        release.set()
        server.call(backend.wait_ready(), 10)
        assert health(server)["status"] == "ok"
        assert completion_of(server.port, chat_body(max_tokens=2))["usage"]["completion_tokens"] == 2


def test_unusable_model_files_fail_in_one_sentence(tmp_path, tiny_model_path) -> None:
    import asyncio

    async def start(path) -> LocalBackend:
        backend = LocalBackend(LocalConfig(model_path=str(path)))
        try:
            await backend.start()
            await backend.wait_ready()
        finally:
            await backend.close()
        return backend

    not_gguf = tmp_path / "notes.gguf"
    not_gguf.write_text("hello, I am not a model\n" * 10)
    truncated = tmp_path / "cut.gguf"
    truncated.write_bytes(tiny_model_path.read_bytes()[:4000])
    for path, words in ((tmp_path / "missing.gguf", "does not exist"), (not_gguf, "not a GGUF model"),
                        (tmp_path, "directory"), (truncated, "could not load")):
        with pytest.raises(BackendError) as caught:
            asyncio.run(start(path))
        message = str(caught.value)
        assert words in message and message.endswith(".") and "\n" not in message, message


def test_a_corrupt_model_is_one_sentence_from_the_command_line(tmp_path) -> None:
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\x00" * 100)
    result = subprocess.run([sys.executable, "-m", "helios_raw", "--bind", "127.0.0.1:0", "--model", str(fake)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("helios_raw: llama.cpp could not load") and "Traceback" not in result.stderr


def test_unknown_chat_format_is_refused_at_load(tiny_model_path) -> None:
    import asyncio

    async def start() -> None:
        backend = LocalBackend(LocalConfig(model_path=str(tiny_model_path), chat_format="klingon"))
        try:
            await backend.start()
            await backend.wait_ready()
        finally:
            await backend.close()

    with pytest.raises(BackendError, match="Unknown chat_format 'klingon'"):
        asyncio.run(start())


def test_validated_objects_include_the_usage_object(tiny_server) -> None:
    validate(completion_of(tiny_server.port, chat_body(max_tokens=1))["usage"], "CompletionUsage")
