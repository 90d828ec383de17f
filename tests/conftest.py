"""Shared fixtures and helpers: the tiny test model, local-model servers on port 0, chat requests
over real sockets, Server-Sent Events parsing and validation against OpenAI's JSON schemas."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import socket
import time
from functools import lru_cache
from typing import Iterator, Optional

import pytest

from helios_raw import Config, LocalConfig, Server
from helios_raw.http.limits import Limits
from tests.support.rawhttp import TIMEOUT, Answer, Client, ServerThread, running

# llama.cpp's OpenMP threads sleep while they wait (set before llama.cpp loads; servers the tests
# start inherit it): the suite runs many servers and clients on few cores, where spinning threads
# slow every decode many times over (benchmarks/results/openmp.md).
os.environ.setdefault("OMP_WAIT_POLICY", "passive")

SCHEMAS_PATH = pathlib.Path(__file__).with_name("openai_schemas.json")  # a copy of shared/openai/openai_schemas.json
JSON = [("Content-Type", "application/json")]


# -- the tiny model and servers of it ------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory) -> pathlib.Path:
    """The tiny llama GGUF (ChatML template), built once per session."""
    from tests.support.tiny_model import build_tiny_gguf

    return build_tiny_gguf(tmp_path_factory.mktemp("tiny-model") / "tiny.gguf")


@pytest.fixture(scope="session")
def pooled_model_path(tmp_path_factory) -> pathlib.Path:
    """The tiny GGUF with other weights (seed 3) and mean pooling: one vector per input when embedded."""
    from tests.support.tiny_model import build_tiny_gguf

    return build_tiny_gguf(tmp_path_factory.mktemp("pooled-model") / "pooled.gguf", seed=3, pooling="mean")


@contextlib.contextmanager
def local_server(model_path, limits: Optional[Limits] = None, strict_models: bool = False,
                 **local: object) -> Iterator[ServerThread]:
    """A real server on 127.0.0.1:0 serving ``model_path`` (``local`` are LocalConfig fields;
    the model id defaults to ``tiny``), ready when entered. ``.backend`` is the LocalBackend."""
    from helios_raw.backends.local import LocalBackend

    config = Config()
    config.server.host, config.server.port, config.server.access_log = "127.0.0.1", 0, False
    if limits is not None:
        config.server.limits = limits
    local.setdefault("model_name", "tiny")
    backend = LocalBackend(LocalConfig(model_path=str(model_path), **local))
    with running(Server(config, backend, strict_models=strict_models)) as thread:
        thread.call(backend.wait_ready(), 60)
        thread.backend = backend
        yield thread


@pytest.fixture(scope="module")
def tiny_server(tiny_model_path) -> Iterator[ServerThread]:
    """One tiny-model server shared by a test module (defaults: temperature 0.7, max_tokens 2048)."""
    with local_server(tiny_model_path) as server:
        yield server


# -- requests ------------------------------------------------------------------------------------


def chat_body(content="hello world", **fields) -> dict:
    """A chat request body: one user message, greedy, 40 tokens unless ``fields`` say otherwise."""
    body = {"model": "tiny", "messages": [{"role": "user", "content": content}], "temperature": 0, "max_tokens": 40}
    body.update(fields)
    return body


def post_chat(port: int, body, headers=JSON) -> Answer:
    """POST ``body`` (a dict, or raw bytes) to /v1/chat/completions on a fresh connection."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    with Client(port) as client:
        client.request("POST", "/v1/chat/completions", headers, data)
        return client.read_response("POST")


def completion_of(port: int, body: dict) -> dict:
    """The validated ``chat.completion`` answering ``body``."""
    answer = post_chat(port, body)
    assert answer.status == 200, answer.body
    data = answer.json()
    validate(data, "CreateChatCompletionResponse")
    return data


def text_of_completion(port: int, body: dict) -> str:
    return completion_of(port, body)["choices"][0]["message"]["content"]


def sse_events(body: bytes) -> list:
    """The events of an SSE body: parsed JSON objects, and the string ``"[DONE]"``."""
    events = []
    text = body.decode("utf-8")
    assert text.endswith("\n\n"), text[-200:]
    for block in text.split("\n\n")[:-1]:
        assert block.startswith("data: "), block
        payload = block[len("data: "):]
        events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def stream_of(port: int, body: dict) -> list:
    """The events of a streamed answer to ``body`` (``stream`` is set), each chunk validated."""
    answer = post_chat(port, {**body, "stream": True})
    assert answer.status == 200, answer.body
    assert answer.header("content-type") == "text/event-stream"
    events = sse_events(answer.body)
    assert events[-1] == "[DONE]" and "[DONE]" not in events[:-1]
    for event in events[:-1]:
        if "error" not in event:
            validate(event, "CreateChatCompletionStreamResponse")
    return events


def counts(usage: dict) -> tuple:
    """The token counts of ``usage``; what a cache saved (``cached_tokens``) left aside."""
    return usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]


def streamed_text(events: list) -> str:
    return "".join(e["choices"][0]["delta"].get("content") or "" for e in events
                   if isinstance(e, dict) and e.get("choices"))


def connect(port: int, rcvbuf: Optional[int] = None) -> socket.socket:
    """A raw client socket to the server, optionally with a tiny receive buffer."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(TIMEOUT)
    sock.connect(("127.0.0.1", port))
    return sock


def send_chat(sock: socket.socket, body: dict, stream: bool = True) -> None:
    """Send one chat request on ``sock`` (streamed unless ``stream`` is False)."""
    data = json.dumps({**body, "stream": stream}).encode()
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(data) + data)


def open_stream(port: int, body: dict, rcvbuf: Optional[int] = None) -> socket.socket:
    """Send a streamed chat request on a fresh raw socket and return it, nothing read."""
    sock = connect(port, rcvbuf)
    send_chat(sock, body)
    return sock


def shrink_server_send_buffer(server: ServerThread, sock: socket.socket, size: int = 4096) -> None:
    """Give the server's end of ``sock`` a small kernel send buffer (loopback buffers otherwise
    grow to megabytes), so that a client that stops reading soon makes the server wait."""
    address = sock.getsockname()

    async def shrink() -> bool:
        for connection in server.server.http.registry.connections:
            if connection.client == address:
                connection.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
                return True
        return False

    for _ in range(100):
        if server.call(shrink()):
            return
        time.sleep(0.01)
    raise AssertionError("the server never registered the connection")


def read_until(sock: socket.socket, marker: bytes, buffer: bytes = b"") -> bytes:
    """Read from ``sock`` until ``marker`` has arrived; everything read so far."""
    while marker not in buffer:
        data = sock.recv(65536)
        assert data, f"connection closed before {marker!r}; got {buffer[-300:]!r}"
        buffer += data
    return buffer


def dechunk(raw: bytes) -> bytes:
    """The body of a complete chunked HTTP response given as raw bytes (head included)."""
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower(), head
    body = b""
    while True:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return body
        body, rest = body + rest[:size], rest[size + 2:]


def health(server: ServerThread) -> dict:
    with Client(server.port) as client:
        client.request("GET", "/health")
        return client.read_response().json()


# -- OpenAI's schemas ----------------------------------------------------------------------------


@lru_cache(maxsize=None)
def _validator(name: str):
    import jsonschema

    document = json.loads(SCHEMAS_PATH.read_text())
    schema = {"$defs": document["$defs"], "$ref": f"#/$defs/{name}"}
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


def validate(obj, name: str) -> None:
    """Raise ``jsonschema.ValidationError`` unless ``obj`` is a valid OpenAI ``name`` object."""
    _validator(name).validate(obj)


def error_of(answer: Answer, status: int, param: Optional[str] = None) -> dict:
    """The validated OpenAI error object of ``answer``, checked for ``status`` and ``param``."""
    assert answer.status == status, (answer.status, answer.body)
    error = answer.error()
    validate(answer.json(), "ErrorResponse")
    if param is not None:
        assert error["param"] == param, error
    return error
