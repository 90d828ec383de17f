"""helios_raw behind Debian's nginx, run on loopback with ``examples/nginx/helios_raw.conf``:
streamed events pass one by one, a client leaving nginx stops the generation, upstream
connections are kept alive and reused, and an instance that is down or answers 503 is skipped.

The instances are real helios_raw servers in this process: the tiny model, or the remote backend
in front of a helios_raw server whose custom endpoint streams one event each time the test
releases one (standing for an OpenAI-compatible server, vLLM or llama.cpp's, in the middle of a
long answer), or custom endpoints answering 503 as an instance whose model is loading does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
from typing import Optional

import pytest

from helios_raw import (
    Config,
    EndpointBuilder,
    EndpointResponse,
    RemoteConfig,
    ServerBuilder,
)
from helios_raw.backends.remote import RemoteBackend
from helios_raw.cancel import ClientGone
from helios_raw.errors import model_loading
from helios_raw.http.limits import Limits
from helios_raw.http.sse import sse_response
from tests.conftest import chat_body, connect, local_server, send_chat
from tests.support import nginx
from tests.support.rawhttp import TIMEOUT, Client, build_server, running
from tests.support.scrape import scrape
from tests.support.waiting import wait_for

pytestmark = pytest.mark.skipif(nginx.BINARY is None, reason="nginx is not installed (apt-get install nginx)")

CHAT = "/v1/chat/completions"
RESET = b"\x01\x00\x00\x00\x00\x00\x00\x00"  # SO_LINGER on, 0 s: close() sends a reset, as a killed client does



class SteppedUpstream:
    """A helios_raw server whose ``POST /v1/chat/completions`` streams a chunk each time the test
    calls :meth:`release` (None ends the stream); ``left`` is set if its client goes away."""

    def __init__(self) -> None:
        config = Config()
        config.server.access_log = False
        endpoint = EndpointBuilder.post(CHAT).handle(self.answer).build()
        self.server = ServerBuilder(config).address("127.0.0.1:0").endpoint(endpoint).build()
        self.queue: Optional[asyncio.Queue] = None
        self.left = threading.Event()
        self.thread = None

    async def start(self):
        self.queue = asyncio.Queue()
        return await self.server.start()

    async def stop(self, timeout=None):
        await self.server.stop(timeout)

    def release(self, text: Optional[str]) -> None:
        self.thread.call_soon(self.queue.put_nowait, text)

    async def answer(self, request):
        async def produce(events) -> None:
            try:
                while (text := await request.cancelled.guard(self.queue.get())) is not None:
                    events.send(_chunk({"content": text}))
                    await events.drain()
            except (ClientGone, asyncio.CancelledError):  # the client left (seen while waiting, or its reset)
                self.left.set()
                raise
            events.send(_chunk({}, "stop"))
            events.done()

        return sse_response(produce)


class Body:
    """The body of a chunked response read from ``sock`` as it arrives (after the head)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.raw = b""
        self.body = b""
        while b"\r\n\r\n" not in self.raw:
            self._read()
        self.head, _, self.raw = self.raw.partition(b"\r\n\r\n")
        assert self.head.startswith(b"HTTP/1.1 200"), self.head
        assert b"transfer-encoding: chunked" in self.head.lower(), self.head

    def _read(self) -> None:
        data = self.sock.recv(65536)
        assert data, f"connection closed; body so far {self.body[-300:]!r}"
        self.raw += data

    def until(self, marker: bytes) -> bytes:
        """Read until ``marker`` is in the body; the body so far."""
        while marker not in self.body:
            size_line, sep, rest = self.raw.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16) if sep else -1
            if size < 0 or len(rest) < size + 2:
                self._read()
                continue
            self.body += rest[:size]
            self.raw = rest[size + 2:]
        return self.body


def proxy_of(upstream_port: int):
    """helios_raw's remote backend in front of ``upstream_port``."""
    config = Config()
    config.server.access_log = False
    backend = RemoteBackend(RemoteConfig(base_url=f"http://127.0.0.1:{upstream_port}/v1", model_name="tiny"))
    return ServerBuilder(config).address("127.0.0.1:0").backend(backend).build()


def get(port: int, target: str = "/health"):
    with Client(port) as client:
        client.request("GET", target)
        return client.read_response()


def served(instance) -> int:
    """Requests an instance has answered on its open connections."""
    return sum(c.requests_served for c in instance.connections())


# -- streaming -----------------------------------------------------------------------------------


@contextlib.contextmanager
def stream_through_nginx(directory):
    """A streamed chat request from a client through nginx to helios_raw's remote backend, on
    to a :class:`SteppedUpstream`: ``(upstream, helios, body)`` once the answer's head is read."""
    upstream = SteppedUpstream()
    with running(upstream) as up, running(proxy_of(up.port)) as helios, \
            nginx.Nginx(directory, helios.port, helios.port) as front:
        upstream.thread = up
        sock = connect(front.port)
        try:
            send_chat(sock, {"model": "tiny", "messages": [{"role": "user", "content": "A story."}]})
            yield upstream, helios, Body(sock)
        finally:
            sock.close()


def test_each_streamed_event_passes_nginx_before_the_next_exists(tmp_path) -> None:
    with stream_through_nginx(tmp_path) as (upstream, _, body):
        assert b"x-accel-buffering" not in body.head.lower()  # nginx acted on it and kept it to itself
        for word in ("Once", " upon", " a", " time"):
            upstream.release(word)
            # the event arrives while the upstream holds the rest: nothing after it exists yet
            assert b"[DONE]" not in body.until(json.dumps({"content": word}, separators=(",", ":")).encode())
        upstream.release(None)
        assert body.until(b"data: [DONE]\n\n").endswith(b"data: [DONE]\n\n")


def test_a_client_leaving_nginx_stops_the_upstream_generation(tmp_path) -> None:
    with stream_through_nginx(tmp_path) as (upstream, helios, body):
        upstream.release("Once")
        body.until(b'"content":"Once"')
        assert not upstream.left.is_set()
        body.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET)
        body.sock.close()
        assert upstream.left.wait(TIMEOUT), "the upstream kept generating for a client that left nginx"
        wait_for(lambda: scrape(helios.port).value("helios_requests_cancelled_total", route=CHAT) == 1,
                 "helios_raw to count the cancelled request")


def test_a_client_leaving_nginx_stops_the_local_model(tmp_path, tiny_model_path) -> None:
    """The client reads nothing until nginx and helios_raw have both had to stop writing (the
    generation thread is then held in flow control), so the answer cannot end before it leaves:
    every buffer on the way is small next to the answer (events of twenty alternatives a token)."""
    small = Limits(write_buffer_high=4096, write_buffer_low=1024)
    with local_server(tiny_model_path, limits=small) as helios, \
            nginx.Nginx(tmp_path, helios.port, helios.port, client_sndbuf="16k") as front:
        assert get(front.port).status == 200  # nginx now keeps a connection to helios_raw
        [upstream] = helios.connections()
        helios.call(_shrink_send_buffer(upstream))
        sock = connect(front.port, rcvbuf=2048)
        send_chat(sock, chat_body("tell me a story", max_tokens=1800, logprobs=True, top_logprobs=20))
        wait_for(lambda: upstream.flow.paused, "helios_raw to wait for nginx")  # on the kept connection
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET)
        sock.close()
        wait_for(lambda: scrape(helios.port).value("helios_requests_cancelled_total", route=CHAT) == 1,
                 "helios_raw to see the client leave")
        with Client(helios.port, timeout=30) as client:
            client.request("POST", CHAT, [("Content-Type", "application/json")],
                           json.dumps(chat_body(max_tokens=3)).encode())
            assert client.read_response("POST").status == 200  # the model is free again
        assert helios.backend.generated_tokens - 3 < 1800  # the stream stopped before its end


# -- upstream connections ------------------------------------------------------------------------


def test_upstream_connections_are_kept_alive_and_reused(tmp_path) -> None:
    with running(build_server(access_log=False)) as first, running(build_server(access_log=False)) as second, \
            nginx.Nginx(tmp_path, first.port, second.port) as front:
        for _ in range(10):  # each on a new client connection
            assert get(front.port).status == 200
        wait_for(lambda: served(first) + served(second) == 10, "both instances to count the requests")
        for instance in (first, second):
            connections = instance.connections()
            assert len(connections) == 1 and connections[0].requests_served >= 2, \
                [(c.client, c.requests_served) for c in connections]


# -- failover ------------------------------------------------------------------------------------


def test_an_instance_that_is_down_is_skipped_then_used_again_once_back(tmp_path) -> None:
    with socket.socket() as reserved:
        reserved.bind(("127.0.0.1", 0))
        down = reserved.getsockname()[1]
    with running(build_server(access_log=False)) as up, nginx.Nginx(tmp_path, up.port, down, "1s") as front:
        for _ in range(6):
            assert get(front.port).status == 200
        assert served(up) == 6
        assert "Connection refused" in front.error_log()
        config = Config()
        config.server.access_log = False
        with running(ServerBuilder(config).address(f"127.0.0.1:{down}").build()) as returned:
            def returned_serves() -> bool:
                assert get(front.port).status == 200
                return served(returned) > 0

            wait_for(returned_serves, "nginx to send requests to the instance again")


def test_an_instance_answering_503_while_its_model_loads_is_skipped(tmp_path, tiny_model_path) -> None:
    loading = _loading_instance()
    with local_server(tiny_model_path) as ready, running(loading) as starting, \
            nginx.Nginx(tmp_path, starting.port, ready.port) as front:
        for n in range(4):
            with Client(front.port, timeout=30) as client:
                client.request("POST", CHAT, [("Content-Type", "application/json")],
                               json.dumps(chat_body(max_tokens=2)).encode())
                answer = client.read_response("POST")
            assert answer.status == 200, answer.body
            assert answer.json()["object"] == "chat.completion"
        assert loading.refused == 1  # then left out for fail_timeout


def _loading_instance():
    """Custom endpoints answering chat completions as an instance whose model is still loading
    does: 503 with the ``model_loading`` error and ``Retry-After``."""
    def refuse(request):
        server.refused += 1
        error = model_loading()
        return EndpointResponse(503, error.to_dict(), dict(error.headers))

    config = Config()
    config.server.access_log = False
    server = ServerBuilder(config).address("127.0.0.1:0").endpoint(EndpointBuilder.post(CHAT).handle(refuse).build()) \
        .build()
    server.refused = 0
    return server


async def _shrink_send_buffer(connection) -> None:
    """A small kernel send buffer for helios_raw's end of ``connection`` (loopback's grow to megabytes)."""
    connection.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)


def _chunk(delta: dict, finish: Optional[str] = None) -> dict:
    return {"id": "chatcmpl-step", "object": "chat.completion.chunk", "created": 1, "model": "tiny",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
