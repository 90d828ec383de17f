"""Whatever the engine behind it, the remote backend answers exactly in OpenAI's shapes.

Two kinds of upstream:

- a scripted stand-in for llama.cpp's ``llama-server`` (:class:`LlamaServerFake`) that answers
  byte for byte as the real one builds its objects, deviations included; each builder cites the
  lines of llama.cpp's ``tools/server`` (as vendored in the llama-cpp-python 0.3.36 sdist) it
  mirrors. A few scripted upstreams for text split inside a character say which server they stand
  for;
- the real ``llama-server``, built from those sources, where it has been built (see
  :data:`~tests.support.upstreams.LLAMA_SERVER`): these tests are skipped, saying so, where it
  has not.
"""

from __future__ import annotations

import json
import time

import openai
import orjson
import pytest

from tests.conftest import error_of, sse_events, validate
from tests.support.apis import post_json
from tests.support.completions import (
    embeddings,
    floats,
    streamed_text,
    text_completion,
    text_stream,
)
from tests.support.rawhttp import Client, running
from tests.support.tiny_model import build_tiny_gguf
from tests.support.upstreams import LLAMA_SERVER, llama_server
from tests.test_remote import Exchange, FakeUpstream, proxy_server

HELLO = [{"role": "user", "content": "Say hello."}]
#: ``llama_build_info()`` of the real binary, which llama-server sends as ``system_fingerprint``.
BUILD = "b1-0c1e570"
TIMINGS = {"cache_n": 0, "prompt_n": 9, "prompt_ms": 0.877, "prompt_per_token_ms": 0.097, "prompt_per_second": 10262.2,
           "predicted_n": 4, "predicted_ms": 1.143, "predicted_per_token_ms": 0.381, "predicted_per_second": 2624.6}


# ================================================================================================
# llama-server's objects, as tools/server builds them
# ================================================================================================


def ls_usage(prompt: int, completion: int) -> dict:
    """server-task.cpp 365-372 (usage_json_oaicompat)."""
    return {"completion_tokens": completion, "prompt_tokens": prompt, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": 0}}


def ls_message(content: str, tool_calls: list = ()) -> dict:
    """common/chat.cpp 187-262 (common_chat_msg::to_json_oaicompat): ``content`` is "" when empty,
    a tool call has no ``id`` unless the template made one, and there is no ``refusal``."""
    message = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = [{"type": "function", "function": {"name": name, "arguments": arguments}}
                                 for name, arguments in tool_calls]
    return message


def ls_chat(content: str, tool_calls: list = (), finish: str = "stop") -> dict:
    """server-task.cpp 414-459 (to_json_oaicompat_chat): the choice has no ``logprobs`` when none
    were asked for; ``timings`` rides along."""
    return {"choices": [{"finish_reason": finish, "index": 0, "message": ls_message(content, tool_calls)}],
            "created": int(time.time()), "model": "tiny.gguf", "system_fingerprint": BUILD,
            "object": "chat.completion", "usage": ls_usage(9, 4), "id": "chatcmpl-9pHQHbxNrgeVRBqPg4uG",
            "timings": TIMINGS}


def ls_chat_chunks(pieces: list, finish: str, include_usage: bool) -> list:
    """server-task.cpp 1111-1164 (partial: a first chunk with role and a null content, one per
    text piece, no ``logprobs`` key) and 462-526 (final: the finish chunk, then the usage chunk with
    empty choices when asked). Every chunk is stamped with the current second (``std::time(0)``),
    so ``created`` changes within a stream: here one second per chunk."""
    start = int(time.time()) - len(pieces) - 3
    deltas = [{"role": "assistant", "content": None}] + [{"content": p} for p in pieces] + [{}]
    chunks = [{"choices": [{"finish_reason": finish if i == len(deltas) - 1 else None, "index": 0, "delta": d}],
               "created": start + i, "id": "chatcmpl-GGG76Yp2Ss31k8i9", "model": "tiny.gguf",
               "system_fingerprint": BUILD, "object": "chat.completion.chunk"} for i, d in enumerate(deltas)]
    if include_usage:
        chunks.append({"choices": [], "created": start + len(deltas), "id": "chatcmpl-GGG76Yp2Ss31k8i9",
                       "model": "tiny.gguf", "system_fingerprint": BUILD, "object": "chat.completion.chunk",
                       "usage": ls_usage(9, len(pieces))})
    chunks[-1]["timings"] = TIMINGS
    return chunks


def ls_token_logprobs(tokens: list) -> list:
    """server-task.cpp 264-302 (probs_vector_to_json): the chat form, with token ids."""
    return [{"id": 100 + i, "token": t, "bytes": list(t.encode()), "logprob": -0.5 - i,
             "top_logprobs": [{"id": 100 + i, "token": t, "bytes": list(t.encode()), "logprob": -0.5 - i},
                              {"id": 7, "token": "x", "bytes": [120], "logprob": -3.0}]} for i, t in enumerate(tokens)]


def ls_text(tokens: list, logprobs: bool, finish: str = "length") -> dict:
    """server-task.cpp 374-412 (to_json_oaicompat): ``logprobs`` in the chat form ``{"content":
    [...]}`` instead of OpenAI's ``tokens`` / ``token_logprobs`` / ``top_logprobs`` /
    ``text_offset``; the id has the chat prefix."""
    return {"choices": [{"text": "".join(tokens), "index": 0,
                         "logprobs": {"content": ls_token_logprobs(tokens)} if logprobs else None,
                         "finish_reason": finish}],
            "created": int(time.time()), "model": "tiny.gguf", "system_fingerprint": BUILD, "object": "text_completion",
            "usage": ls_usage(2, len(tokens)), "id": "chatcmpl-PvYg9hJi5ncbWiks", "timings": TIMINGS}


def ls_text_chunks(pieces: list, finish: str = "length") -> list:
    """server-task.cpp 1073-1109 (partial) and 374-412 (final, streamed): the last chunk has an
    empty text, the finish reason and the ``usage``, asked for or not; ``created`` per chunk."""
    start = int(time.time()) - len(pieces) - 2
    chunks = [{"choices": [{"text": p, "index": 0, "logprobs": None, "finish_reason": None}], "created": start + i,
               "model": "tiny.gguf", "system_fingerprint": BUILD, "object": "text_completion",
               "id": "chatcmpl-atFSgY7Q5IEFbuC7"} for i, p in enumerate(pieces)]
    chunks.append({"choices": [{"text": "", "index": 0, "logprobs": None, "finish_reason": finish}],
                   "created": start + len(pieces), "model": "tiny.gguf", "system_fingerprint": BUILD,
                   "object": "text_completion", "usage": ls_usage(2, len(pieces)), "id": "chatcmpl-atFSgY7Q5IEFbuC7",
                   "timings": TIMINGS})
    return chunks


def ls_models() -> dict:
    """server-context.cpp 4526-4578 (get_res_model_info, get_res_models): an Ollama-style
    ``models`` list beside ``data``; per model ``aliases``, ``tags`` and ``meta`` (``n_ctx`` the
    slot's context)."""
    return {"models": [{"name": "tiny.gguf", "model": "tiny.gguf", "modified_at": "", "size": "", "digest": "",
                        "type": "model", "description": "", "tags": [""], "capabilities": ["completion"],
                        "parameters": "", "details": {"format": "gguf"}}],
            "object": "list",
            "data": [{"id": "tiny.gguf", "aliases": ["tiny.gguf"], "tags": [], "object": "model",
                      "created": int(time.time()), "owned_by": "llamacpp",
                      "meta": {"vocab_type": 2, "n_vocab": 605, "n_ctx": 512, "n_ctx_train": 2048, "n_embd": 64,
                               "n_params": 112768, "size": 451072, "ftype": "all F32"}}]}


def ls_embeddings(vectors: list) -> dict:
    """server-common.cpp 1453-1495 (format_embeddings_response_oaicompat), float form."""
    return {"model": "tiny.gguf", "object": "list", "usage": {"prompt_tokens": 4, "total_tokens": 4},
            "data": [{"embedding": v, "index": i, "object": "embedding"} for i, v in enumerate(vectors)]}


def ls_error(message: str, type_: str, code: int, **extra) -> dict:
    """server-common.cpp 36-78 (format_error_response): ``code`` is the HTTP status as a number;
    server-task.cpp 1501-1508 adds ``n_prompt_tokens`` and ``n_ctx`` to a context overflow."""
    return {"error": {"code": code, "message": message, "type": type_, **extra}}


class LlamaServerFake:
    """A stand-in for llama-server answering with the objects above; ``answers`` maps a path to a
    function of the request body returning ``(status, object)`` or, for a stream, the list of
    chunks (the stream then ends with ``[DONE]`` unless the last item is the bytes to end with)."""

    def __init__(self, **answers) -> None:
        self.answers = answers
        self.upstream = FakeUpstream(self.serve, models=ls_models())

    async def serve(self, exchange: Exchange) -> bool:
        path = exchange.head.split(b" ")[1].decode()
        body = json.loads(exchange.body or b"{}")
        answer = self.answers[path.rsplit("/", 1)[-1]](body)
        if isinstance(answer, tuple):
            await exchange.send_json(*answer)
            return True
        await exchange.send_sse_head()
        ending = answer.pop() if isinstance(answer[-1], bytes) else b"data: [DONE]\n\n"
        for chunk in answer:  # format_oai_sse (server-common.cpp 1644-1660): "data: <json>\n\n"
            await exchange.send_chunk(b"data: " + orjson.dumps(chunk) + b"\n\n", pause=0)
        await exchange.send_chunk(ending, pause=0)
        await exchange.send(b"0\r\n\r\n")
        return True


def served(fake: LlamaServerFake):
    """The fake running, and helios_raw in front of it (``[remote]`` with its defaults)."""
    import contextlib

    @contextlib.contextmanager
    def both():
        with running(fake.upstream) as up, running(proxy_server(f"http://127.0.0.1:{up.port}/v1")) as proxy:
            yield proxy

    return both()


def chat(port: int, **fields):
    return post_json(port, "/v1/chat/completions", {"model": "tiny.gguf", "messages": HELLO, **fields})


def chat_chunks(port: int, **fields) -> list:
    answer = chat(port, stream=True, **fields)
    assert answer.status == 200, answer.body
    events = sse_events(answer.body)
    assert events[-1] == "[DONE]" and events.count("[DONE]") == 1
    for event in events[:-1]:
        validate(event, "CreateChatCompletionStreamResponse")
    return events[:-1]


# ================================================================================================
# Against the stand-in
# ================================================================================================


def test_a_chat_completion_gets_what_llama_server_leaves_out() -> None:
    fake = LlamaServerFake(completions=lambda body: (200, ls_chat(" hello there")))
    with served(fake) as proxy:
        answer = chat(proxy.port)
    assert answer.status == 200, answer.body
    completion = answer.json()
    validate(completion, "CreateChatCompletionResponse")
    choice = completion["choices"][0]
    assert choice["logprobs"] is None and choice["message"] == {"role": "assistant", "content": " hello there",
                                                                 "refusal": None}
    assert completion["timings"] == TIMINGS and completion["system_fingerprint"] == BUILD  # extras kept
    assert completion["usage"] == ls_usage(9, 4) and completion["id"] == "chatcmpl-9pHQHbxNrgeVRBqPg4uG"


def test_tool_calls_get_ids_and_a_null_content() -> None:
    calls = [("get_weather", '{"city": "Paris"}'), ("clock", "{}")]
    fake = LlamaServerFake(completions=lambda body: (200, ls_chat("", calls, "tool_calls")))
    with served(fake) as proxy:
        answer = chat(proxy.port).json()
    validate(answer, "CreateChatCompletionResponse")
    message = answer["choices"][0]["message"]
    assert message["content"] is None and answer["choices"][0]["finish_reason"] == "tool_calls"
    ids = [call["id"] for call in message["tool_calls"]]
    assert all(i.startswith("call_") for i in ids) and len(set(ids)) == 2
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in message["tool_calls"]] == calls


def test_a_chat_stream_has_one_id_and_one_created_and_usage_when_asked() -> None:
    pieces = [" hello", " there", "!"]

    def stream(body):
        return ls_chat_chunks(pieces, "stop", bool(body.get("stream_options", {}).get("include_usage")))

    with served(LlamaServerFake(completions=stream)) as proxy:
        chunks = chat_chunks(proxy.port, stream_options={"include_usage": True})
        plain = chat_chunks(proxy.port)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{proxy.port}/v1", api_key="unused", max_retries=0)
        sdk = list(client.chat.completions.create(model="tiny.gguf", messages=HELLO, stream=True))
    assert len({c["id"] for c in chunks}) == 1 and len({c["created"] for c in chunks}) == 1
    assert all(c["logprobs"] is None for chunk in chunks for c in chunk["choices"])
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == "".join(pieces)
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 3
    assert chunks[-1]["timings"] == TIMINGS
    assert all("usage" not in c for c in plain)
    assert "".join(c.choices[0].delta.content or "" for c in sdk if c.choices) == "".join(pieces)


def test_text_completion_logprobs_come_in_openais_form() -> None:
    tokens = ["The", " th", "ix"]
    fake = LlamaServerFake(completions=lambda body: (200, ls_text(tokens, logprobs=True)))
    with served(fake) as proxy:
        completion = text_completion(proxy.port, {"model": "tiny.gguf", "prompt": "hello", "logprobs": 2})
    logprobs = completion["choices"][0]["logprobs"]
    assert logprobs["tokens"] == tokens and logprobs["token_logprobs"] == [-0.5, -1.5, -2.5]
    assert logprobs["top_logprobs"][1] == {" th": -1.5, "x": -3.0} and logprobs["text_offset"] == [0, 3, 6]
    assert completion["object"] == "text_completion" and completion["timings"] == TIMINGS


def test_a_text_stream_has_its_usage_alone_last_and_only_when_asked() -> None:
    pieces = ["The", " th", "ix"]
    with served(LlamaServerFake(completions=lambda body: ls_text_chunks(pieces))) as proxy:
        asked = text_stream(proxy.port, {"model": "tiny.gguf", "prompt": "hi", "stream_options": {"include_usage": True}})
        unasked = text_stream(proxy.port, {"model": "tiny.gguf", "prompt": "hi"})
    for chunks in (asked, unasked):
        assert streamed_text(chunks) == "".join(pieces)
        assert len({c["id"] for c in chunks}) == 1 and len({c["created"] for c in chunks}) == 1
        assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "length"
    assert asked[-1]["choices"] == [] and asked[-1]["usage"] == ls_usage(2, 3)
    assert all("usage" not in c for c in asked[:-1]) and all("usage" not in c for c in unasked)


def test_the_model_list_is_the_upstreams_in_openais_form() -> None:
    with served(LlamaServerFake()) as proxy:
        with Client(proxy.port) as client:
            client.request("GET", "/v1/models")
            listed = client.read_response().json()
            client.request("GET", "/v1/models/tiny.gguf")
            one = client.read_response().json()
    validate(listed, "ListModelsResponse")
    assert list(listed) == ["object", "data"]  # llama-server's Ollama-style "models" is not ours
    [model] = listed["data"]
    assert model["id"] == "tiny.gguf" and model["context_length"] == 512 and model["status"] == "loaded"
    assert model["meta"]["n_ctx_train"] == 2048 and model["owned_by"] == "llamacpp"  # extras kept
    assert one == model


def test_embeddings_from_llama_server() -> None:
    vectors = [[0.6, 0.8], [1.0, 0.0]]
    fake = LlamaServerFake(embeddings=lambda body: (200, ls_embeddings(vectors)))
    with served(fake) as proxy:
        plain = embeddings(proxy.port, {"model": "tiny.gguf", "input": ["a", "b"]})
        encoded = embeddings(proxy.port, {"model": "tiny.gguf", "input": ["a", "b"], "encoding_format": "base64"})
    assert [item["embedding"] for item in plain["data"]] == vectors
    assert [floats(item["embedding"]) for item in encoded["data"]] == [pytest.approx(v) for v in vectors]


def test_errors_in_llama_servers_dialect_become_openais() -> None:
    too_long = ls_error("request (809 tokens) exceeds the available context size (512 tokens), try increasing it",
                        "exceed_context_size_error", 400, n_prompt_tokens=809, n_ctx=512)
    unsupported = ls_error("This server does not support embeddings. Start it with `--embeddings`",
                           "not_supported_error", 501)
    midway = ls_chat_chunks([" hel"], "stop", False)[:2] + [
        b"data: " + orjson.dumps(ls_error("the model crashed", "server_error", 500)) + b"\n\n"]  # no [DONE]
    fake = LlamaServerFake(completions=lambda body: midway if body.get("stream") else (400, too_long),
                           embeddings=lambda body: (501, unsupported))
    with served(fake) as proxy:
        refused = chat(proxy.port)
        unsupported_answer = post_json(proxy.port, "/v1/embeddings", {"model": "tiny.gguf", "input": "hi"})
        cut = chat(proxy.port, stream=True)
    error = error_of(refused, 400)
    assert error == {"message": too_long["error"]["message"], "type": "invalid_request_error", "param": None,
                     "code": "context_length_exceeded"}
    error = error_of(unsupported_answer, 400)
    assert error["message"] == unsupported["error"]["message"] and error["code"] == "501"
    events = sse_events(cut.body)
    validate(events[-2], "ErrorResponse")
    assert events[-2]["error"]["message"] == "the model crashed" and events[-2]["error"]["code"] == "500"
    assert events[-1] == "[DONE]"


# -- text split inside a character ---------------------------------------------------------------


def raw_chunk_event(content: bytes, finish=None) -> bytes:
    """A chat chunk whose content is ``content`` as raw bytes, valid UTF-8 or not."""
    head = b'data: {"id":"chatcmpl-s","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,'
    return head + b'"delta":{"content":"' + content + b'"},"finish_reason":' + \
        (b'"%s"' % finish.encode() if finish else b"null") + b"}]}\n\n"


def relay(events: list, **fields) -> list:
    async def script(exchange: Exchange) -> bool:
        await exchange.send_sse_head()
        for event in events + [b"data: [DONE]\n\n"]:
            await exchange.send_chunk(event, pause=0)
        await exchange.send(b"0\r\n\r\n")
        return True

    with running(FakeUpstream(script)) as up, running(proxy_server(f"http://127.0.0.1:{up.port}/v1")) as proxy:
        return chat_chunks(proxy.port, **fields)


def content_of(chunks: list) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


def test_utf8_bytes_split_across_events_are_reassembled() -> None:
    """Stands for an engine that streams each token's raw bytes (no server we know of does, but the
    JSON of such a stream is what the issue describes): "你好" arrives as ``e4 bd`` | ``a0 e5 a5``
    | ``bd``, each event invalid UTF-8 on its own."""
    text = "你好".encode()
    events = [raw_chunk_event(b"say " + text[:2]), raw_chunk_event(text[2:5]), raw_chunk_event(text[5:] + b"!"),
              raw_chunk_event(b"", "stop")]
    chunks = relay(events)
    assert content_of(chunks) == "say 你好!"
    assert [c["choices"][0]["delta"].get("content") for c in chunks[:3]] == ["say ", "你", "好!"]


def test_bytes_that_never_complete_a_character_become_a_replacement_character() -> None:
    """The same engine, cut off inside a character: the held bytes end the stream as U+FFFD."""
    chunks = relay([raw_chunk_event(b"ok " + "你".encode()[:2]), raw_chunk_event(b"", "length")])
    assert content_of(chunks) == "ok \ufffd" and chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_a_surrogate_pair_split_across_events_is_joined() -> None:
    """Stands for an engine written in a UTF-16 language (a JavaScript server) that cuts "😀"
    between its two surrogates, each sent as a JSON escape."""
    chunks = relay([raw_chunk_event(b"smile \\ud83d"), raw_chunk_event(b"\\ude00 done"), raw_chunk_event(b"", "stop")])
    assert content_of(chunks) == "smile 😀 done"


def test_replacement_characters_from_the_upstream_are_relayed_as_they_are() -> None:
    """Stands for llama-server, which writes invalid bytes as U+FFFD (common/json.cpp 343-345:
    ``dump`` with ``error_handler_t::replace``): the bytes are gone, there is nothing to repair."""
    chunks = relay([raw_chunk_event("你好\ufffd\ufffd".encode()), raw_chunk_event(b"", "stop")])
    assert content_of(chunks) == "你好\ufffd\ufffd"


def test_an_upstream_error_body_with_a_split_character_is_mended() -> None:
    """Stands for an upstream whose error message carries raw bytes cut short."""
    async def refuse(exchange: Exchange) -> None:
        body = b'{"error": {"message": "bad input: caf\xc3", "type": "invalid_request_error", "code": 400}}'
        await exchange.send(b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
                            % len(body) + body)

    with running(FakeUpstream(refuse)) as up, running(proxy_server(f"http://127.0.0.1:{up.port}/v1")) as proxy:
        error = error_of(chat(proxy.port), 400)
    assert error["message"] == "bad input: caf\ufffd" and error["code"] == "400"


# ================================================================================================
# Against the real llama-server
# ================================================================================================


needs_llama_server = pytest.mark.skipif(
    not LLAMA_SERVER.exists(), reason=f"llama-server is not built at {LLAMA_SERVER} (CI builds it)")


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """helios_raw in front of the real llama-server on the pooled tiny model (512 tokens of context)."""
    model = build_tiny_gguf(tmp_path_factory.mktemp("llama-server") / "tiny.gguf", seed=0, pooling="mean")
    engine = llama_server(model, model.parent)
    try:
        with running(proxy_server(engine.base_url)) as proxy:
            proxy.model = engine.models()["data"][0]["id"]
            proxy.client = openai.OpenAI(base_url=f"http://127.0.0.1:{proxy.port}/v1", api_key="unused",
                                         max_retries=0, timeout=60)
            yield proxy
    finally:
        engine.stop()


@needs_llama_server
def test_real_llama_server_chat_with_the_sdk(llama) -> None:
    completion = llama.client.chat.completions.create(model=llama.model, messages=HELLO, max_tokens=6, temperature=0)
    validate(completion.model_dump(exclude_unset=True), "CreateChatCompletionResponse")
    raw = chat(llama.port, model=llama.model, max_tokens=6, temperature=0).json()
    validate(raw, "CreateChatCompletionResponse")
    assert raw["choices"][0]["message"]["refusal"] is None and raw["choices"][0]["logprobs"] is None
    assert raw["choices"][0]["message"]["content"] == completion.choices[0].message.content
    chunks = list(llama.client.chat.completions.create(model=llama.model, messages=HELLO, max_tokens=6, temperature=0,
                                                       stream=True, stream_options={"include_usage": True}))
    for chunk in chunks:
        validate(chunk.model_dump(exclude_unset=True), "CreateChatCompletionStreamResponse")
    assert len({c.id for c in chunks}) == 1 and len({c.created for c in chunks}) == 1
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == completion.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 6


@needs_llama_server
def test_real_llama_server_tools_and_logprobs(llama) -> None:
    tool = {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city.",
                                             "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                            "required": ["city"]}}}
    answer = chat(llama.port, model=llama.model, max_tokens=8, temperature=0, tools=[tool])
    assert answer.status == 200, answer.body
    validate(answer.json(), "CreateChatCompletionResponse")
    chunks = chat_chunks(llama.port, model=llama.model, max_tokens=8, temperature=0, tools=[tool])
    assert len({c["created"] for c in chunks}) == 1
    scored = chat(llama.port, model=llama.model, max_tokens=4, temperature=0, logprobs=True, top_logprobs=2).json()
    validate(scored, "CreateChatCompletionResponse")
    content = scored["choices"][0]["logprobs"]["content"]
    assert len(content) == 4 and all(len(entry["top_logprobs"]) == 2 for entry in content)


@needs_llama_server
def test_real_llama_server_text_completions(llama) -> None:
    body = {"model": llama.model, "prompt": "hello world", "max_tokens": 5, "temperature": 0}
    completion = text_completion(llama.port, {**body, "logprobs": 2})
    logprobs = completion["choices"][0]["logprobs"]
    assert "".join(logprobs["tokens"]) == completion["choices"][0]["text"] and len(logprobs["text_offset"]) == 5
    chunks = text_stream(llama.port, {**body, "stream_options": {"include_usage": True}})
    assert streamed_text(chunks) == completion["choices"][0]["text"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 5
    assert all("usage" not in c for c in text_stream(llama.port, body))
    several = text_completion(llama.port, {**body, "prompt": ["hello world", "the cat"]})
    assert [c["index"] for c in several["choices"]] == [0, 1]
    assert several["choices"][0]["text"] == completion["choices"][0]["text"]
    tokens = text_completion(llama.port, {**body, "prompt": [104, 101, 108, 108, 111]})
    assert tokens["usage"]["prompt_tokens"] == 5
    sdk = llama.client.completions.create(model=llama.model, prompt="hello world", max_tokens=5, temperature=0)
    assert sdk.choices[0].text == completion["choices"][0]["text"]


@needs_llama_server
def test_real_llama_server_embeddings(llama) -> None:
    texts = ["hello world", "the cat", "hello world"]
    plain = embeddings(llama.port, {"model": llama.model, "input": texts})
    vectors = [item["embedding"] for item in plain["data"]]
    assert vectors[0] == vectors[2] and vectors[0] != vectors[1]
    encoded = embeddings(llama.port, {"model": llama.model, "input": texts, "encoding_format": "base64"})
    for item, vector in zip(encoded["data"], vectors):
        assert floats(item["embedding"]) == pytest.approx(vector, abs=1e-6)
    sdk = llama.client.embeddings.create(model=llama.model, input=texts)
    assert sdk.data[1].embedding == pytest.approx(vectors[1], abs=1e-6)


@needs_llama_server
def test_real_llama_server_models_and_errors(llama) -> None:
    with Client(llama.port) as client:
        client.request("GET", "/v1/models")
        listed = client.read_response().json()
    validate(listed, "ListModelsResponse")
    assert [m["id"] for m in listed["data"]] == [llama.model] and listed["data"][0]["context_length"] == 512
    too_long = chat(llama.port, model=llama.model, messages=[{"role": "user", "content": "hello world " * 400}])
    error = error_of(too_long, 400)
    assert error["code"] == "context_length_exceeded" and "exceeds the available context size" in error["message"]
    streamed = chat(llama.port, model=llama.model, stream=True, messages=[{"role": "user", "content": "hi " * 800}])
    assert error_of(streamed, 400)["code"] == "context_length_exceeded"  # llama-server refuses before streaming
    with pytest.raises(openai.BadRequestError) as caught:
        llama.client.chat.completions.create(model=llama.model, messages=[{"role": "user", "content": "a b " * 400}])
    assert caught.value.code == "context_length_exceeded"
