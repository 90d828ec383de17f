"""Streamed chat completions from the local backend: Server-Sent Events over real sockets.

Every chunk is validated against OpenAI's ``CreateChatCompletionStreamResponse`` schema."""

from __future__ import annotations

import json
import time

import pytest

from helios_raw.http.limits import Limits
from tests.conftest import (
    chat_body,
    completion_of,
    connect,
    dechunk,
    local_server,
    open_stream,
    read_until,
    send_chat,
    shrink_server_send_buffer,
    sse_events,
    stream_of,
    streamed_text,
    validate,
)


def content_chunks(events: list) -> list:
    return [e for e in events[1:-1] if e.get("choices") and "content" in e["choices"][0]["delta"]]


def test_stream_is_role_then_pieces_then_one_finish_then_done(tiny_server) -> None:
    events = stream_of(tiny_server.port, chat_body(max_tokens=30))
    chunks = events[:-1]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert {c["id"] for c in chunks} == {chunks[0]["id"]} and chunks[0]["id"].startswith("chatcmpl-")
    assert {c["created"] for c in chunks} == {chunks[0]["created"]} and {c["model"] for c in chunks} == {"tiny"}
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"][0]["finish_reason"]]
    assert finishes == ["length"] and chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"][0]["delta"] == {}
    assert all("usage" not in c for c in chunks)
    pieces = content_chunks(events)
    assert pieces and all(p["choices"][0]["delta"]["content"] for p in pieces)
    assert streamed_text(events) == completion_of(tiny_server.port, chat_body(max_tokens=30))["choices"][0][
        "message"]["content"]


def test_each_token_is_its_own_event(tiny_server) -> None:
    events = stream_of(tiny_server.port, chat_body(max_tokens=40, logprobs=True))
    pieces = content_chunks(events)
    per_chunk = [len(p["choices"][0]["logprobs"]["content"]) for p in pieces]
    assert sum(per_chunk) == 40
    # a chunk carries more than one token only when a token ended inside a UTF-8 sequence
    for piece, count in zip(pieces, per_chunk):
        if count > 1:
            first = bytes(piece["choices"][0]["logprobs"]["content"][0]["bytes"])
            with pytest.raises(UnicodeDecodeError):
                first.decode("utf-8")


def test_include_usage_adds_a_final_usage_chunk(tiny_server) -> None:
    events = stream_of(tiny_server.port, chat_body(max_tokens=12, stream_options={"include_usage": True}))
    *chunks, usage_chunk, done = events
    assert done == "[DONE]"
    assert usage_chunk["choices"] == [] and usage_chunk["id"] == chunks[0]["id"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    expected = completion_of(tiny_server.port, chat_body(max_tokens=12))["usage"]
    assert usage_chunk["usage"] == expected and expected["completion_tokens"] == 12
    validate(usage_chunk["usage"], "CompletionUsage")


def test_stream_stops_at_a_stop_string(tiny_server) -> None:
    text = streamed_text(stream_of(tiny_server.port, chat_body(max_tokens=60)))
    stop = text[25:28]
    events = stream_of(tiny_server.port, chat_body(max_tokens=60, stop=[stop],
                                                   stream_options={"include_usage": True}))
    assert streamed_text(events) == text[:text.index(stop)]
    assert events[-3]["choices"][0]["finish_reason"] == "stop"
    assert events[-2]["usage"]["completion_tokens"] < 60


def test_utf8_split_across_tokens_is_never_emitted_broken(tiny_server) -> None:
    # The tiny vocabulary has no token for these characters, so a grammar that demands them makes
    # the model spell each one in byte tokens: every character is split across three tokens.
    schema = {"type": "string", "enum": ["あいう été"]}
    body = chat_body(max_tokens=40, logprobs=True, response_format={
        "type": "json_schema", "json_schema": {"name": "kana", "schema": schema}})
    events = stream_of(tiny_server.port, body)
    tokens = [bytes(entry["bytes"]) for p in content_chunks(events) for entry in p["choices"][0]["logprobs"]["content"]]

    def incomplete(piece: bytes) -> bool:
        try:
            piece.decode("utf-8")
            return False
        except UnicodeDecodeError:
            return True

    assert sum(incomplete(t) for t in tokens) >= 6
    pieces = [p["choices"][0]["delta"]["content"] for p in content_chunks(events)]
    assert "".join(pieces) == '"あいう été"' == b"".join(tokens).decode("utf-8")
    assert not any("\ufffd" in piece for piece in pieces)
    assert completion_of(tiny_server.port, body)["choices"][0]["message"]["content"] == "".join(pieces)


def test_streamed_tool_call(tiny_server) -> None:
    tool = {"type": "function", "function": {"name": "lookup", "parameters": {
        "type": "object", "properties": {"q": {"type": "string", "maxLength": 8}}, "required": ["q"]}}}
    events = stream_of(tiny_server.port, chat_body(max_tokens=100, tools=[tool], tool_choice="required",
                                                   stream_options={"include_usage": True}))
    calls = [c for c in events[1:-1] if c.get("choices") and c["choices"][0]["delta"].get("tool_calls")]
    # as OpenAI streams them: the call's index, id, type, name and empty arguments first ...
    (first,) = calls[0]["choices"][0]["delta"]["tool_calls"]
    assert first == {"index": 0, "id": first["id"], "type": "function", "function": {"name": "lookup", "arguments": ""}}
    assert first["id"].startswith("call_")
    # ... then the arguments in pieces, as they are generated
    pieces = [c["choices"][0]["delta"]["tool_calls"][0] for c in calls[1:]]
    assert len(pieces) > 1 and all(p == {"index": 0, "function": {"arguments": p["function"]["arguments"]}}
                                   for p in pieces)
    assert set(json.loads("".join(p["function"]["arguments"] for p in pieces))) == {"q"}
    assert events[-3]["choices"][0]["finish_reason"] == "tool_calls"
    assert streamed_text(events) == ""


def test_streamed_json_schema_output_parses(tiny_server) -> None:
    schema = {"type": "object", "properties": {"yes": {"type": "boolean"}}, "required": ["yes"],
              "additionalProperties": False}
    events = stream_of(tiny_server.port, chat_body(max_tokens=100, response_format={
        "type": "json_schema", "json_schema": {"name": "yn", "schema": schema}}))
    assert isinstance(json.loads(streamed_text(events))["yes"], bool)
    assert events[-2]["choices"][0]["finish_reason"] == "stop"


def test_a_time_limit_ends_a_stream_with_length(tiny_model_path) -> None:
    with local_server(tiny_model_path, request_timeout=0.01) as server:
        events = stream_of(server.port, chat_body(max_tokens=2000, stream_options={"include_usage": True}))
        assert events[-3]["choices"][0]["finish_reason"] == "length"
        assert 0 < events[-2]["usage"]["completion_tokens"] < 2000


def test_bad_streamed_request_is_an_http_error_not_a_stream(tiny_server) -> None:
    sock = open_stream(tiny_server.port, chat_body(temperature=9))
    try:
        raw = read_until(sock, b"}}")
    finally:
        sock.close()
    assert raw.startswith(b"HTTP/1.1 400 ") and b"text/event-stream" not in raw


def test_a_slow_reader_gets_every_token_in_order(tiny_model_path) -> None:
    """A client that stops reading, then reads a little at a time through small socket buffers:
    the server holds generation while the client is behind (flow control) and drops nothing."""
    limits = Limits(write_buffer_high=4096, write_buffer_low=1024)
    body = chat_body("tell me a story", max_tokens=1800, stream_options={"include_usage": True})
    with local_server(tiny_model_path, limits=limits) as server:
        expected = completion_of(server.port, body | {"stream_options": None})
        sock = connect(server.port, rcvbuf=2048)
        try:
            shrink_server_send_buffer(server, sock)
            send_chat(sock, body)
            raw = read_until(sock, b"\r\n\r\n")
            for _ in range(500):  # read nothing until the server has had to pause writing
                if any(c.flow.paused for c in server.connections()):
                    break
                time.sleep(0.01)
            else:
                raise AssertionError("the server never had to wait for this client")
            # the sequence pauses within a step of the client falling behind, and stays paused
            generated = -1
            while generated != server.backend.generated_tokens:
                generated = server.backend.generated_tokens
                time.sleep(0.05)
            time.sleep(0.2)
            assert server.backend._engine.busy and server.backend.generated_tokens == generated
            while not raw.endswith(b"0\r\n\r\n"):
                data = sock.recv(512)
                assert data
                raw += data
                time.sleep(0.0002)
        finally:
            sock.close()
    events = sse_events(dechunk(raw))
    assert events[-1] == "[DONE]" and events[-3]["choices"][0]["finish_reason"] == "length"
    counts = ("prompt_tokens", "completion_tokens", "total_tokens")
    assert {k: events[-2]["usage"][k] for k in counts} == {k: expected["usage"][k] for k in counts}
    assert streamed_text(events) == expected["choices"][0]["message"]["content"]
