"""One slot (``parallel = 1``), one generation at a time: the FIFO queue, its bound (429),
disconnects, time limits and shutdown, over real sockets.

A generation is held without timing tricks by a client that stops reading: once the server has
had to pause writing to it, its sequence is paused in its slot, and with one slot nothing else can
run until that client reads or leaves (``stall_timeout`` is set long enough not to intervene)."""

from __future__ import annotations

import asyncio
import socket

import pytest

from helios_raw.http.limits import Limits
from tests.conftest import (
    chat_body,
    completion_of,
    connect,
    dechunk,
    error_of,
    health,
    local_server,
    open_stream,
    post_chat,
    read_until,
    send_chat,
    shrink_server_send_buffer,
    sse_events,
    streamed_text,
    validate,
)
from tests.support.rawhttp import TIMEOUT, get
from tests.support.waiting import wait_for

SMALL_BUFFERS = Limits(write_buffer_high=4096, write_buffer_low=1024)
ONE_SLOT = {"parallel": 1, "stall_timeout": 600.0}
LONG = chat_body("tell me a story", max_tokens=1800)


def is_paused(server, sock: socket.socket) -> bool:
    address = sock.getsockname()
    return any(c.client == address and c.flow.paused for c in server.connections())


def hold_model(server, body: dict = LONG) -> socket.socket:
    """A streamed request whose client reads nothing: returns once it holds the model."""
    sock = connect(server.port, rcvbuf=2048)
    shrink_server_send_buffer(server, sock)
    send_chat(sock, body)
    wait_for(lambda: is_paused(server, sock), "the server to wait for the holding client")
    return sock


def read_to_end(sock: socket.socket, raw: bytes = b"") -> list:
    """Read the rest of a chunked streamed response; its events."""
    while not raw.endswith(b"0\r\n\r\n"):
        data = sock.recv(65536)
        assert data, raw[-300:]
        raw += data
    return sse_events(dechunk(raw))


def available(sock: socket.socket) -> bytes:
    """What has arrived on ``sock`` so far, without waiting for more."""
    sock.setblocking(False)
    data = b""
    try:
        while True:
            piece = sock.recv(65536)
            if not piece:
                break
            data += piece
    except BlockingIOError:
        pass
    finally:
        sock.settimeout(TIMEOUT)
    return data


@pytest.fixture()
def server(tiny_model_path):
    with local_server(tiny_model_path, limits=SMALL_BUFFERS, max_queue=1, **ONE_SLOT) as server:
        yield server


def test_health_and_models_never_wait_for_the_model(server) -> None:
    holder = hold_model(server)
    waiting = open_stream(server.port, chat_body(max_tokens=5))
    try:
        read_until(waiting, b'"role"')
        facts = health(server)
        assert facts["status"] == "ok" and facts["busy"] is True and facts["queue_waiting"] == 1
        models = get(server.port, "/v1/models")
        assert models.status == 200 and models.json()["data"][0]["id"] == "tiny"
        assert get(server.port, "/v1/models/tiny").status == 200
    finally:
        holder.close()
        waiting.close()


def test_queue_full_is_429_with_retry_after_and_a_running_stream_is_never_cut(server) -> None:
    holder = hold_model(server)
    waiting = open_stream(server.port, chat_body(max_tokens=5, stream_options={"include_usage": True}))
    try:
        # the waiting request has its headers and role chunk at once, before the model is free
        head = read_until(waiting, b'"role"')
        assert head.startswith(b"HTTP/1.1 200 ") and b"text/event-stream" in head
        for stream in (False, True):
            answer = post_chat(server.port, chat_body(stream=stream))
            error = error_of(answer, 429)
            assert error["code"] == "rate_limit_exceeded"
            assert int(answer.header("retry-after")) >= 1
        # the holder, read to its end, is whole: its length finish and [DONE]
        events = read_to_end(holder)
        assert events[-1] == "[DONE]" and events[-2]["choices"][0]["finish_reason"] == "length"
        waited = read_to_end(waiting, head)
        assert waited[-3]["choices"][0]["finish_reason"] == "length"
        assert waited[-2]["usage"]["completion_tokens"] == 5
    finally:
        holder.close()
        waiting.close()
    assert completion_of(server.port, chat_body(max_tokens=3))["usage"]["completion_tokens"] == 3


def test_waiting_requests_run_in_arrival_order(tiny_model_path) -> None:
    with local_server(tiny_model_path, limits=SMALL_BUFFERS, max_queue=3, **ONE_SLOT) as server:
        first = hold_model(server)
        line = []
        for _ in range(3):  # each also a slow reader, so each holds the model in its turn
            sock = connect(server.port, rcvbuf=2048)
            shrink_server_send_buffer(server, sock)
            send_chat(sock, LONG)
            read_until(sock, b'"role"')
            line.append(sock)
        try:
            assert health(server)["queue_waiting"] == 3
            first.close()
            for position, sock in enumerate(line):
                wait_for(lambda: is_paused(server, sock), f"request {position} to start")
                for later in line[position + 1:]:  # the model is busy with this one: the later ones
                    assert b'"content":"' not in available(later).replace(b'"content":""', b"")  # have no text
                sock.close()
        finally:
            for sock in [first, *line]:
                sock.close()


def test_a_disconnected_stream_frees_the_model_at_once(server) -> None:
    holder = hold_model(server)
    before = server.backend.generated_tokens
    holder.close()
    data = completion_of(server.port, chat_body(max_tokens=7))
    assert data["usage"]["completion_tokens"] == 7
    # the holder stopped where its client left, far short of its 1800 tokens
    assert server.backend.generated_tokens - 7 - before < 50
    assert health(server)["busy"] is False


def test_a_disconnected_non_streamed_request_frees_the_model(tiny_model_path) -> None:
    with local_server(tiny_model_path, context_size=16384, **ONE_SLOT) as server:
        sock = connect(server.port)
        send_chat(sock, chat_body("tell me a story", max_tokens=16000), stream=False)
        wait_for(lambda: server.backend.generated_tokens > 0, "generation to start")
        sock.close()
        data = completion_of(server.port, chat_body(max_tokens=4))
        assert data["usage"]["completion_tokens"] == 4
        assert server.backend.generated_tokens - 4 < 16000
        assert health(server)["busy"] is False


def test_a_time_limit_ends_a_generation_with_length(tiny_model_path) -> None:
    with local_server(tiny_model_path, request_timeout=0.01) as server:
        data = completion_of(server.port, chat_body(max_tokens=2000))
        assert data["choices"][0]["finish_reason"] == "length"
        assert 0 < data["usage"]["completion_tokens"] < 2000


def test_max_queue_zero_refuses_whenever_busy(tiny_model_path) -> None:
    with local_server(tiny_model_path, limits=SMALL_BUFFERS, max_queue=0, **ONE_SLOT) as server:
        holder = hold_model(server)
        try:
            error_of(post_chat(server.port, chat_body()), 429)
        finally:
            holder.close()
        wait_for(lambda: not health(server)["busy"], "the holder's generation to stop")
        assert completion_of(server.port, chat_body(max_tokens=2))["usage"]["completion_tokens"] == 2


def test_closing_the_backend_ends_running_and_waiting_streams_with_an_error(server) -> None:
    holder = hold_model(server)
    waiting = open_stream(server.port, chat_body(max_tokens=5))
    try:
        head = read_until(waiting, b'"role"')
        closing = asyncio.run_coroutine_threadsafe(server.backend.close(), server.loop)
        for sock, raw in ((waiting, head), (holder, b"")):
            events = read_to_end(sock, raw)
            assert events[-1] == "[DONE]"
            error = events[-2]
            validate(error, "ErrorResponse")
            assert error["error"]["code"] == "server_shutting_down"
            assert not any(e["choices"][0]["finish_reason"] for e in events[:-2] if e.get("choices"))
        closing.result(TIMEOUT)  # returns once the worker thread has stopped and the model is freed
    finally:
        holder.close()
        waiting.close()
    assert streamed_text(events)  # the holder had streamed text before it was ended
    error_of(post_chat(server.port, chat_body()), 503)
