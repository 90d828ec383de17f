"""Continuous batching on the tiny model, over real sockets: several requests generated at once,
each with its own settings, slots freed by clients that leave or stall, slow readers that hold
up no one, FIFO admission past the slots, chunked prefill and prefix reuse per slot.

Overlap is made certain without timing: a client that reads nothing is paused in its slot once
its socket buffers are full (small buffers below), so several requests can be made to hold slots
at once and then be read."""

from __future__ import annotations

import json
import logging
import re
import socket
import time

import jsonschema

from helios_raw.http.limits import Limits
from tests.conftest import (
    chat_body,
    completion_of,
    connect,
    dechunk,
    health,
    local_server,
    send_chat,
    shrink_server_send_buffer,
    sse_events,
    stream_of,
    streamed_text,
    validate,
)
from tests.support.rawhttp import TIMEOUT
from tests.support.waiting import wait_for

SMALL_BUFFERS = Limits(write_buffer_high=2048, write_buffer_low=512)
SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer"}},
          "required": ["ok", "n"], "additionalProperties": False}
TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {
    "type": "object", "properties": {"q": {"type": "string", "maxLength": 12}}, "required": ["q"]}}}


class Stream:
    """A streamed chat request on its own socket, read only when asked to."""

    def __init__(self, server, body: dict, hold: bool = False) -> None:
        self.sock = connect(server.port, rcvbuf=2048 if hold else None)
        if hold:
            shrink_server_send_buffer(server, self.sock)
        send_chat(self.sock, body)
        self.raw = b""

    def read_some(self) -> bytes:
        """What has arrived so far, without waiting."""
        self.sock.setblocking(False)
        try:
            while True:
                piece = self.sock.recv(65536)
                if not piece:
                    break
                self.raw += piece
        except BlockingIOError:
            pass
        finally:
            self.sock.settimeout(TIMEOUT)
        return self.raw

    def content_chunks(self) -> int:
        """Chunks with generated text so far (the role chunk's empty content not counted)."""
        raw = self.read_some()
        return raw.count(b'"content":"') - raw.count(b'"content":""')

    def events(self) -> list:
        """Read to the end of the response; its events."""
        while not self.raw.endswith(b"0\r\n\r\n"):
            data = self.sock.recv(65536)
            assert data, self.raw[-300:]
            self.raw += data
        return sse_events(dechunk(self.raw))

    def close(self) -> None:
        self.sock.close()


def paused_clients(server) -> int:
    return sum(1 for c in server.connections() if c.flow.paused)


def test_requests_with_different_settings_run_at_once_and_each_gets_its_own(tiny_model_path) -> None:
    bodies = {
        "greedy": chat_body("tell me a story", max_tokens=300),
        "schema": chat_body("give json", max_tokens=300, response_format={
            "type": "json_schema", "json_schema": {"name": "s", "schema": SCHEMA, "strict": True}}),
        "stop": chat_body("tell me a story", max_tokens=300, stop=["e"]),
        "logprobs": chat_body("tell me a story", max_tokens=300, logprobs=True, top_logprobs=2),
        "tool": chat_body("look it up", max_tokens=300, tools=[TOOL], tool_choice="required"),
    }
    with local_server(tiny_model_path, limits=SMALL_BUFFERS, parallel=5, stall_timeout=600.0) as server:
        alone = {name: completion_of(server.port, body) for name, body in bodies.items()}
        streams = {name: Stream(server, {**body, "stream_options": {"include_usage": True}}, hold=True)
                   for name, body in bodies.items()}
        try:
            # the long answers fill their clients' buffers and are paused in their slots, so the five
            # are admitted together; then each is read to its end
            events = {name: stream.events() for name, stream in streams.items()}
        finally:
            for stream in streams.values():
                stream.close()
    for name, stream_events in events.items():
        assert stream_events[-1] == "[DONE]", name
        for event in stream_events[:-1]:
            validate(event, "CreateChatCompletionStreamResponse")
    assert streamed_text(events["greedy"]) == alone["greedy"]["choices"][0]["message"]["content"]
    jsonschema.validate(json.loads(streamed_text(events["schema"])), SCHEMA)
    stopped = streamed_text(events["stop"])
    assert "e" not in stopped and events["stop"][-3]["choices"][0]["finish_reason"] == "stop"
    assert events["stop"][-3]["choices"][0]["stop_reason"] == "e"
    entries = [e for c in events["logprobs"][1:-2] if c["choices"] for e in (c["choices"][0]["logprobs"] or {}).get(
        "content") or []]
    assert len(entries) == events["logprobs"][-2]["usage"]["completion_tokens"]
    assert b"".join(bytes(e["bytes"]) for e in entries) == streamed_text(events["logprobs"]).encode()
    calls = [c["choices"][0]["delta"]["tool_calls"][0] for c in events["tool"][1:-2]
             if c["choices"] and c["choices"][0]["delta"].get("tool_calls")]
    assert calls[0]["function"]["name"] == "lookup"
    assert set(json.loads("".join(c["function"]["arguments"] for c in calls))) == {"q"}
    assert events["tool"][-3]["choices"][0]["finish_reason"] == "tool_calls"


def test_greedy_text_is_the_same_in_every_slot_and_alone(tiny_model_path) -> None:
    body = chat_body("the lighthouse keeper", max_tokens=200)
    with local_server(tiny_model_path, limits=SMALL_BUFFERS, parallel=4, stall_timeout=600.0) as server:
        alone = completion_of(server.port, body)["choices"][0]["message"]["content"]
        streams = [Stream(server, body, hold=True) for _ in range(4)]
        try:
            wait_for(lambda: server.backend._engine.busy == 4, "four copies to hold the four slots")
            texts = [streamed_text(stream.events()) for stream in streams]
        finally:
            for stream in streams:
                stream.close()
    assert texts == [alone] * 4


def test_a_client_leaving_frees_its_slot_and_the_others_complete(tiny_model_path) -> None:
    long = chat_body("tell me a story", max_tokens=800)
    with local_server(tiny_model_path, limits=SMALL_BUFFERS, parallel=2, stall_timeout=600.0) as server:
        leaving, staying = Stream(server, long, hold=True), Stream(server, long, hold=True)
        try:
            wait_for(lambda: paused_clients(server) == 2, "both clients to fall behind")
            leaving.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            leaving.close()
            wait_for(lambda: server.backend._engine.busy == 1, "the slot to be freed")
            # the freed slot serves a new request while the other one still holds its own
            third = completion_of(server.port, chat_body(max_tokens=20))
            assert third["usage"]["completion_tokens"] == 20
            events = staying.events()
        finally:
            staying.close()
    assert events[-2]["choices"][0]["finish_reason"] == "length"
    assert len(streamed_text(events)) > 0


def test_a_client_that_reads_nothing_holds_up_no_one(tiny_model_path) -> None:
    with local_server(tiny_model_path, limits=SMALL_BUFFERS, parallel=2, stall_timeout=600.0) as server:
        idle = Stream(server, chat_body("tell me a story", max_tokens=600), hold=True)
        try:
            wait_for(lambda: paused_clients(server) == 1, "the idle client to fall behind")
            generated = server.backend.generated_tokens
            events = stream_of(server.port, chat_body("another story", max_tokens=800))
            assert events[-2]["choices"][0]["finish_reason"] == "length"
            assert server.backend.generated_tokens - generated >= 800
            assert paused_clients(server) == 1 and server.backend._engine.busy == 1  # still held, not cut
            idle_events = idle.events()
        finally:
            idle.close()
    assert idle_events[-2]["choices"][0]["finish_reason"] == "length"


def test_a_stalled_client_gives_its_slot_to_a_waiting_request(tiny_model_path) -> None:
    with local_server(tiny_model_path, limits=SMALL_BUFFERS, parallel=1, stall_timeout=0.3) as server:
        stalled = Stream(server, chat_body("tell me a story", max_tokens=600), hold=True)
        try:
            wait_for(lambda: paused_clients(server) == 1, "the client to fall behind")
            time.sleep(0.5)  # past stall_timeout, but nobody waits yet: the slot is kept
            assert server.backend._engine.busy == 1
            waiting = completion_of(server.port, chat_body(max_tokens=10))  # it waits, then gets the slot
            assert waiting["usage"]["completion_tokens"] == 10
            events = stalled.events()
        finally:
            stalled.close()
    # every token generated reached the client, then the stream ended with an error event
    assert events[-1] == "[DONE]" and events[-2]["error"]["code"] == "client_too_slow"
    assert len(streamed_text(events)) > 0


def test_requests_past_the_slots_wait_and_start_in_arrival_order(tiny_model_path) -> None:
    long = chat_body("tell me a story", max_tokens=300)
    with local_server(tiny_model_path, limits=SMALL_BUFFERS, parallel=4, max_queue=8, stall_timeout=600.0) as server:
        holders = []
        for _ in range(4):
            holders.append(Stream(server, long, hold=True))
            wait_for(lambda: paused_clients(server) == len(holders), "a holder to fall behind")
        queued = []
        for _ in range(4):  # each will hold its slot too, once it has one
            queued.append(Stream(server, long, hold=True))
            wait_for(lambda: health(server)["queue_waiting"] == len(queued), "the request to wait")
        assert health(server)["queue_waiting"] == 4
        try:
            for released, holder in enumerate(holders, start=1):
                events = holder.events()
                assert events[-2]["choices"][0]["finish_reason"] == "length"  # never cut
                wait_for(lambda: paused_clients(server) == 4, "the next queued request to take the slot")
                assert [q.content_chunks() > 0 for q in queued] == [i < released for i in range(4)]
                assert health(server)["queue_waiting"] == 4 - released
            for stream in queued:
                assert stream.events()[-1] == "[DONE]"
        finally:
            for stream in holders + queued:
                stream.close()


def test_a_request_starts_while_others_stream(tiny_model_path) -> None:
    long = chat_body("tell me a story", max_tokens=1000)
    with local_server(tiny_model_path, parallel=4) as server:
        running = [Stream(server, long) for _ in range(3)]
        try:
            wait_for(lambda: all(s.content_chunks() > 5 for s in running), "three streams to run")
            short = completion_of(server.port, chat_body(max_tokens=20))
            assert short["usage"]["completion_tokens"] == 20
            still = [not s.read_some().endswith(b"0\r\n\r\n") for s in running]
            assert all(still), "the short request waited for the long ones"
            for stream in running:
                assert stream.events()[-1] == "[DONE]"
        finally:
            for stream in running:
                stream.close()


def test_a_long_prompt_is_evaluated_in_chunks_beside_a_running_stream(tiny_model_path, caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="helios_raw.local")
    long_prompt = " ".join(["the quick brown fox jumps over the lazy dog"] * 40)
    with local_server(tiny_model_path, parallel=2, prefill_chunk=16, context_size=1024) as server:
        running = Stream(server, chat_body("tell me a story", max_tokens=900))
        try:
            wait_for(lambda: running.content_chunks() > 5, "a stream to run")
            data = completion_of(server.port, chat_body(long_prompt, max_tokens=2))
            prompt_tokens = data["usage"]["prompt_tokens"]
            assert running.content_chunks() > 5 and not running.raw.endswith(b"0\r\n\r\n")
            assert running.events()[-1] == "[DONE]"
        finally:
            running.close()
    lines = [r.getMessage() for r in caplog.records if f"{prompt_tokens} prompt tokens" in r.getMessage()]
    steps = int(re.search(r"first token after (\d+) steps", lines[0]).group(1))
    assert steps == -(-prompt_tokens // 16)  # one chunk of 16 prompt tokens a step


def test_a_conversation_goes_back_to_the_slot_that_holds_it(tiny_model_path) -> None:
    first = chat_body("the lighthouse keeper found a bottle", max_tokens=20)
    with local_server(tiny_model_path, parallel=2) as server:
        answer = completion_of(server.port, first)
        completion_of(server.port, chat_body("something else entirely", max_tokens=20))  # the other slot
        follow_up = chat_body(max_tokens=5, messages=first["messages"] + [
            {"role": "assistant", "content": answer["choices"][0]["message"]["content"]},
            {"role": "user", "content": "and then?"}])
        data = completion_of(server.port, follow_up)
        facts = health(server)
    # the first turn and (most of) its answer were found in the slot (the answer's text is tokenised
    # again in the prompt, and need not give back the very tokens generated)
    cached = data["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert cached > answer["usage"]["prompt_tokens"]
    assert facts["slots"] == 2 and facts["slots_busy"] == 0 and facts["queue_waiting"] == 0


def test_a_prompt_goes_to_the_slot_holding_exactly_it_over_one_holding_more(tiny_model_path) -> None:
    """Slot 0 holds the prompt and an answer after it, slot 1 exactly the prompt (its last logits
    kept): the prompt again goes to slot 1, reusing every prompt token, not to slot 0 cut back."""
    body = chat_body("the lighthouse keeper found a bottle", max_tokens=400)
    with local_server(tiny_model_path, limits=SMALL_BUFFERS, parallel=2, stall_timeout=600.0) as server:
        held = Stream(server, {**body, "stream": True}, hold=True)  # slot 0, paused in place
        try:
            wait_for(lambda: paused_clients(server) == 1, "the stream to fill its client's buffer")
            one = completion_of(server.port, {**body, "max_tokens": 1})  # slot 1: the prompt, nothing after
            held.events()
        finally:
            held.close()
        again = completion_of(server.port, {**body, "max_tokens": 1})
    prompt = one["usage"]["prompt_tokens"]
    assert again["usage"]["prompt_tokens_details"]["cached_tokens"] == prompt
