"""The remote backend and its HTTP client, over real sockets.

The proxy under test is a real helios_raw server (in-process, on port 0) whose backend is a
:class:`RemoteBackend`. Its upstream is, depending on the test:

- a second helios_raw *process* serving the tiny local model (``upstream`` fixture): a real
  OpenAI-compatible server, observed through its access log (the client address of each request
  shows which upstream connection served it, the byte count how much of an answer it sent);
- a helios_raw server with custom endpoints (``Recorder``): a real server that reports the exact
  request it received, to check what the proxy sends;
- a scripted raw-asyncio server (``FakeUpstream``) for what no real server here produces on
  demand; each such test says which real server it stands for.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Awaitable, Callable, Optional

import orjson
import pytest

from helios_raw import Config, EndpointBuilder, RemoteConfig, ServerBuilder
from helios_raw.backends.remote import RemoteBackend, SSEDecoder
from helios_raw.http.client import (
    ConnectTimeout,
    HTTPClient,
    ReadTimeout,
    RemoteProtocolError,
)
from helios_raw.http.sse import sse_frame, sse_response
from tests.conftest import counts
from tests.support.rawhttp import Client, running
from tests.support.tiny_model import build_tiny_gguf

ROOT = Path(__file__).resolve().parent.parent
JSON = [("Content-Type", "application/json")]
HELLO = [{"role": "user", "content": "Say hello."}]


# -- helpers: the proxy and its clients ----------------------------------------------------------


class Proxy:
    """A helios_raw server proxying to an upstream, ready once the upstream's model list (asked at
    start-up, on a connection the pool then keeps) has been had: the test's own requests then
    start from a known pool."""

    def __init__(self, server, backend: RemoteBackend) -> None:
        self.server = server
        self.backend = backend

    def __getattr__(self, name: str):
        return getattr(self.server, name)

    async def start(self):
        address = await self.server.start()
        await self.backend.catalog.refresh(float("inf"))
        return address

    async def stop(self, timeout=None):
        await self.server.stop(timeout)


def proxy_server(base_url: str, ssl_context: Optional[ssl.SSLContext] = None, **llm) -> Proxy:
    """A helios_raw server on port 0 proxying to ``base_url``."""
    config = Config()
    config.server.access_log = False
    backend = RemoteBackend(RemoteConfig(base_url=base_url, **{"model_name": "tiny", **llm}), ssl_context)
    return Proxy(ServerBuilder(config).address("127.0.0.1:0").backend(backend).build(), backend)


def post(port: int, body: dict, headers: Optional[list] = None):
    """One chat completion request on a fresh connection; the parsed answer."""
    with Client(port, timeout=30) as client:
        client.request("POST", "/v1/chat/completions", JSON + (headers or []), orjson.dumps(body))
        return client.read_response("POST")


def sse_data(body: bytes) -> list:
    """The ``data:`` payloads of an event stream, JSON-decoded except ``[DONE]``."""
    assert body.endswith(b"\n\n"), body[-200:]
    out = []
    for event in body.decode("utf-8").split("\n\n")[:-1]:
        assert event.startswith("data: "), event
        payload = event[len("data: "):]
        out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


def stream_text(events: list) -> str:
    return "".join(e["choices"][0]["delta"].get("content") or "" for e in events
                   if isinstance(e, dict) and e.get("choices"))


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` passes; its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


class HeliosProcess:
    """``python -m helios_raw ARGS`` in a subprocess; ``port`` is parsed from its "listening on"
    log line and ``output`` keeps every line it prints (stdout and stderr)."""

    def __init__(self, *args: str, cwd: Optional[Path] = None) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.process = subprocess.Popen([sys.executable, "-m", "helios_raw", *args], stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd)
        self.output: list = []
        self.port = 0
        for line in self.process.stdout:
            self.output.append(line)
            found = re.search(r"listening on http://\S+:(\d+)", line)
            if found:
                self.port = int(found.group(1))
                break
        assert self.port, "".join(self.output)
        self._drainer = threading.Thread(target=self._drain, daemon=True)
        self._drainer.start()

    def _drain(self) -> None:
        for line in self.process.stdout:
            self.output.append(line)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._drainer.join(5)
        self.process.stdout.close()


# -- the real upstream: a helios_raw process serving the tiny model -----------------------------


ACCESS = re.compile(r'(?P<client>\d+\.\d+\.\d+\.\d+:\d+) - "(?P<method>\w+) (?P<target>\S+) HTTP/1\.\d" '
                    r'(?P<status>\d+) (?P<sent>\d+)')


class Upstream:
    """A ``python -m helios_raw`` subprocess serving the tiny model as ``tiny`` (strict names)."""

    def __init__(self, directory: Path) -> None:
        model = build_tiny_gguf(directory / "tiny.gguf", seed=0)
        config = directory / "upstream.toml"
        config.write_text(f'[local]\nmodel_path = "{model}"\nmodel_name = "tiny"\nstrict_model_names = true\n'
                          f'n_threads = 1\nseed = 0\n')
        self.process = HeliosProcess("--bind", "127.0.0.1:0", "--config", str(config), cwd=directory)
        self.port = self.process.port
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.marks = 0
        assert wait_for(lambda: self.health() == "ok", 60), self.log()

    def health(self) -> str:
        with Client(self.port) as client:
            client.request("GET", "/health")
            return client.read_response().json()["status"]

    def log(self) -> str:
        return "".join(self.process.output)

    def logged_so_far(self) -> int:
        """How many chat requests the upstream has logged, once every request it finished before
        this call is in the log: a marker request, logged after them, is waited for."""
        self.marks += 1
        with Client(self.port) as client:
            client.request("GET", f"/health?mark={self.marks}")
            client.read_response()
        assert wait_for(lambda: self.access(f"/health?mark={self.marks}")), self.log()[-2000:]
        return len(self.access())

    def access(self, target: str = "/v1/chat/completions") -> list:
        """The upstream's access-log entries for ``target``, oldest first."""
        return [m.groupdict() for m in map(ACCESS.search, list(self.process.output))
                if m and m["target"] == target]


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    server = Upstream(tmp_path_factory.mktemp("upstream"))
    yield server
    server.process.stop()


# -- a real helios_raw server that reports what it was sent --------------------------------------


class Recorder:
    """helios_raw with custom endpoints standing in for an OpenAI upstream: ``POST
    /v1/chat/completions`` answers (streamed when asked) with the headers and body it received as
    the assistant's content. ``POST /v1/fail/chat/completions`` answers
    429 with an OpenAI error object and ``Retry-After``."""

    def __init__(self) -> None:
        echo = EndpointBuilder.post("/v1/chat/completions").handle(self.echo).build()
        fail = EndpointBuilder.post("/v1/fail/chat/completions").handle(self.refuse).build()
        config = Config()
        config.server.access_log = False
        self.server = ServerBuilder(config).address("127.0.0.1:0").endpoint(echo).endpoint(fail).build()

    async def echo(self, request):
        report = json.dumps({"body": request.body, "headers": request.headers})
        message = {"role": "assistant", "content": report}
        if not request.body.get("stream"):
            return {"id": "chatcmpl-rec", "object": "chat.completion", "created": 1, "model": "recorder",
                    "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}}

        async def produce(events):
            chunk = {"id": "chatcmpl-rec", "object": "chat.completion.chunk", "created": 1, "model": "recorder"}
            events.send({**chunk, "choices": [{"index": 0, "delta": message, "finish_reason": None}]})
            events.send({**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
            events.send({**chunk, "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4,
                                                          "total_tokens": 7}})
            events.done()

        return sse_response(produce)

    def refuse(self, request):
        from helios_raw import EndpointResponse

        body = {"error": {"message": "Rate limit reached for requests.", "type": "requests",
                          "param": None, "code": "rate_limit_exceeded"}}
        return EndpointResponse(429, body, {"retry-after": "7"})

    async def start(self):
        return await self.server.start()

    async def stop(self, timeout=None):
        await self.server.stop(timeout)


# -- a scripted upstream ------------------------------------------------------------------------


class Exchange:
    """One request received by a :class:`FakeUpstream`, and the means to answer it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes, body: bytes) -> None:
        self.reader = reader
        self.writer = writer
        self.head = head
        self.body = body

    async def send(self, *pieces: bytes, pause: float = 0.0) -> None:
        """Write each piece as its own TCP segment (flushed, then ``pause`` seconds)."""
        for piece in pieces:
            self.writer.write(piece)
            await self.writer.drain()
            await asyncio.sleep(pause)

    async def send_sse_head(self) -> None:
        await self.send(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")

    async def send_chunk(self, data: bytes, pause: float = 0.01) -> None:
        await self.send(b"%x\r\n%s\r\n" % (len(data), data), pause=pause)

    async def send_json(self, status: int, obj, reason: bytes = b"X") -> None:
        body = orjson.dumps(obj)
        await self.send(b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                        % (status, reason, len(body), body))

    async def until_peer_closes(self) -> None:
        """Return once the client closes the connection (EOF or reset)."""
        try:
            while await self.reader.read(65536):
                pass
        except ConnectionError:
            pass


class FakeUpstream:
    """A raw asyncio HTTP/1.1 server whose answers ``script(exchange)`` writes byte by byte.

    Counts ``connections``; keeps every request's head and body in ``requests``; sets
    ``peer_closed`` when a client closes a connection while its answer is still being written.
    ``script`` returns True to keep the connection for another request. ``GET /v1/models`` is
    answered ``models`` (a 404 when None) on a kept connection and not recorded.
    """

    def __init__(self, script: Callable[[Exchange], Awaitable[Optional[bool]]], ssl_context=None,
                 models: Optional[dict] = None) -> None:
        self.script = script
        self.ssl_context = ssl_context
        self.models = models
        self.connections = 0
        self.requests: list = []
        self.peer_closed = threading.Event()
        self._server = None
        self._tasks: set = set()

    async def start(self):
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.ssl_context)
        return self._server.sockets[0].getsockname()[:2]

    async def stop(self, timeout=None):
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await self._server.wait_closed()

    async def _serve(self, reader, writer) -> None:
        self._tasks.add(asyncio.current_task())
        self.connections += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                length = re.search(rb"(?i)content-length: *(\d+)", head)
                body = await reader.readexactly(int(length.group(1))) if length else b""
                if head.startswith(b"GET /v1/models "):
                    await Exchange(reader, writer, head, body).send_json(
                        404 if self.models is None else 200, self.models or {"error": {"message": "no such route"}})
                    continue
                self.requests.append((head, body))
                exchange = Exchange(reader, writer, head, body)
                try:
                    keep = await self.script(exchange)
                except ConnectionError:
                    self.peer_closed.set()
                    return
                if not keep:
                    return
        finally:
            self._tasks.discard(asyncio.current_task())
            writer.close()


def chunk_event(content: str, finish: Optional[str] = None) -> bytes:
    delta = {"content": content} if content else {}
    return sse_frame({"id": "chatcmpl-f", "object": "chat.completion.chunk", "created": 1, "model": "fake",
                      "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})


# ================================================================================================
# Against the real upstream: helios_raw serving the tiny model
# ================================================================================================


def test_completion_is_the_upstreams_answer_relayed(upstream):
    body = {"model": "anything", "messages": HELLO, "max_tokens": 7, "temperature": 0}
    direct = post(upstream.port, {**body, "model": "tiny"})
    with running(proxy_server(upstream.base_url)) as proxy:
        answer = post(proxy.port, body)
    assert answer.status == 200, answer.body
    got, want = answer.json(), direct.json()
    assert got["object"] == "chat.completion"
    assert got["model"] == want["model"] == "tiny"  # the upstream's model id, relayed
    assert got["choices"][0]["message"]["content"] == want["choices"][0]["message"]["content"]
    assert got["choices"][0]["finish_reason"] == "length"
    assert counts(got["usage"]) == counts(want["usage"]) and got["usage"]["completion_tokens"] == 7


def test_stream_is_relayed_with_usage_and_one_done(upstream):
    body = {"model": "tiny", "messages": HELLO, "max_tokens": 12, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    direct = sse_data(post(upstream.port, body).body)
    with running(proxy_server(upstream.base_url)) as proxy:
        answer = post(proxy.port, body)
    assert answer.status == 200 and answer.header("content-type") == "text/event-stream"
    events = sse_data(answer.body)
    assert events.count("[DONE]") == 1 and events[-1] == "[DONE]"
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert stream_text(events) == stream_text(direct) and stream_text(events)
    assert [e["choices"][0]["finish_reason"] for e in events[:-1] if e["choices"]][-1] == "length"
    assert events[-2]["choices"] == [] and events[-2]["usage"] == direct[-2]["usage"]
    assert events[-2]["usage"]["completion_tokens"] == 12


def test_sampling_parameters_reach_the_upstream(upstream):
    """A seeded, hot sampling run gives the same text through the proxy as directly, and a
    different seed a different one: seed, temperature, top_p and stop all arrived."""
    def ask(port, seed):
        body = {"model": "tiny", "messages": HELLO, "max_tokens": 24, "temperature": 1.5, "top_p": 0.95,
                "seed": seed, "stop": ["zzzz"]}
        answer = post(port, body)
        assert answer.status == 200, answer.body
        return answer.json()["choices"][0]["message"]["content"]

    with running(proxy_server(upstream.base_url)) as proxy:
        assert ask(proxy.port, 11) == ask(upstream.port, 11)
        assert ask(proxy.port, 12) == ask(upstream.port, 12)
    assert ask(upstream.port, 11) != ask(upstream.port, 12)


def test_config_defaults_fill_only_the_gaps(upstream):
    with running(proxy_server(upstream.base_url, max_tokens=5)) as proxy:
        filled = post(proxy.port, {"model": "tiny", "messages": HELLO}).json()
        given = post(proxy.port, {"model": "tiny", "messages": HELLO, "max_completion_tokens": 3}).json()
    assert filled["usage"]["completion_tokens"] == 5
    assert given["usage"]["completion_tokens"] == 3


def test_upstream_refusal_keeps_its_status_and_message(upstream):
    # A misconfigured default the upstream refuses: its own 400, relayed with its words.
    with running(proxy_server(upstream.base_url, temperature=5.0)) as proxy:
        answer = post(proxy.port, {"model": "tiny", "messages": HELLO})
        streamed = post(proxy.port, {"model": "tiny", "messages": HELLO, "stream": True})
    direct = post(upstream.port, {"model": "tiny", "messages": HELLO, "temperature": 5.0})
    assert answer.status == streamed.status == direct.status == 400
    assert answer.error() == streamed.error() == direct.error()
    assert answer.error()["param"] == "temperature"

    # A model name the (strict) upstream does not serve: its 404.
    with running(proxy_server(upstream.base_url, model_name="no-such-model")) as proxy:
        answer = post(proxy.port, {"model": "x", "messages": HELLO})
    assert answer.status == 404
    assert answer.error()["code"] == "model_not_found" and "no-such-model" in answer.error()["message"]


def test_one_upstream_connection_serves_many_requests(upstream):
    before = upstream.logged_so_far()
    with running(proxy_server(upstream.base_url)) as proxy:
        for stream in (False, True, False, True):
            answer = post(proxy.port, {"model": "tiny", "messages": HELLO, "max_tokens": 3, "stream": stream})
            assert answer.status == 200
    assert wait_for(lambda: len(upstream.access()) == before + 4), upstream.log()[-2000:]
    entries = upstream.access()[before:]
    assert [e["status"] for e in entries] == ["200"] * 4
    assert len({e["client"] for e in entries}) == 1, entries


def test_client_disconnect_stops_the_upstream_generation(upstream):
    """The whole answer is about two thousand events; our client reads the first and hangs up
    (a reset, as a killed client does). The upstream logs its request as ended early: it sent
    less than the full answer, so its generation was stopped."""
    body = {"model": "tiny", "messages": HELLO, "max_tokens": 2000, "temperature": 0, "stream": True}
    before = upstream.logged_so_far()
    full = post(upstream.port, body)
    assert wait_for(lambda: len(upstream.access()) > before)
    full_sent = int(upstream.access()[before]["sent"])
    assert full_sent == len(full.body)
    before = upstream.logged_so_far()
    with running(proxy_server(upstream.base_url)) as proxy:
        client = Client(proxy.port)
        client.request("POST", "/v1/chat/completions", JSON, orjson.dumps(body))
        head = client.read_head()
        assert head.status == 200
        while b"data: " not in client.buffer:
            client._fill()
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        client.close()
        assert wait_for(lambda: len(upstream.access()) > before), upstream.log()[-2000:]
    cut = upstream.access()[before]
    assert int(cut["sent"]) < full_sent, (cut, full_sent)


def test_cli_serves_the_llm_section_as_a_proxy(upstream, tmp_path):
    config = tmp_path / "proxy.toml"
    config.write_text(f'[llm]\nmodel_name = "tiny"\nbase_url = "{upstream.base_url}"\nstrict_model_names = true\n')
    proxy = HeliosProcess("--bind", "127.0.0.1:0", "--config", str(config), "--no-access-log")
    try:
        with Client(proxy.port) as client:
            client.request("GET", "/v1/models")
            models = client.read_response().json()
            client.request("GET", "/health")
            health = client.read_response().json()
        before = upstream.logged_so_far()
        answer = post(proxy.port, {"model": "tiny", "messages": HELLO, "max_tokens": 2})
        assert wait_for(lambda: len(upstream.access()) == before + 1)
        unknown = post(proxy.port, {"model": "gpt-4", "messages": HELLO})
    finally:
        proxy.stop()
    assert [m["id"] for m in models["data"]] == ["tiny"]
    assert health == {"status": "ok", "model": "tiny", "backend_state": "ready", "backend": "remote", "upstream": "ok"}
    assert answer.status == 200 and answer.json()["usage"]["completion_tokens"] == 2
    assert unknown.status == 404 and unknown.error()["code"] == "model_not_found"
    assert upstream.logged_so_far() == before + 1  # the unknown model was refused by the proxy itself


def test_cli_refuses_a_base_url_that_is_not_http(tmp_path):
    config = tmp_path / "proxy.toml"
    config.write_text('[llm]\nbase_url = "ftp://example.com/v1"\n')
    done = subprocess.run([sys.executable, "-m", "helios_raw", "--config", str(config)], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode != 0
    assert done.stderr.strip() == ("helios_raw: [llm] base_url 'ftp://example.com/v1' must be an http:// or "
                                   "https:// URL with a host.")


# ================================================================================================
# What the proxy sends: a recording helios_raw upstream
# ================================================================================================


def test_request_body_and_headers_are_passed_through():
    recorder = Recorder()
    with running(recorder) as rec:
        base = f"http://localhost:{rec.port}/v1"  # a local-looking host: the key is sent anyway
        llm = dict(api_key="sk-test", temperature=0.3, max_tokens=99, headers={"X-Team": "blue"})
        sent = {"model": "client-model", "messages": HELLO + [{"role": "assistant", "content": "hi"}],
                "temperature": 0.0, "top_p": 0.5, "seed": 3, "stop": ["\n"], "user": "u-1",
                "logit_bias": {"50": -100}, "response_format": {"type": "json_object"},
                "metadata": {"not": "known to us"}, "top_k": 4}
        with running(proxy_server(base, **llm)) as proxy:
            plain = post(proxy.port, sent)
            streamed = post(proxy.port, {**sent, "stream": True, "stream_options": {"include_usage": True},
                                         "temperature": None, "max_completion_tokens": 8})
    assert plain.status == 200 and streamed.status == 200
    report = json.loads(plain.json()["choices"][0]["message"]["content"])
    # Every parameter as sent; only the model replaced; max_tokens from the config (a gap).
    assert report["body"] == {**sent, "model": "tiny", "max_tokens": 99}
    assert report["headers"]["authorization"] == "Bearer sk-test"
    assert report["headers"]["x-team"] == "blue"
    assert report["headers"]["content-type"] == "application/json"
    assert plain.json()["model"] == "recorder"  # the upstream's model id is what clients see
    assert plain.json()["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}

    events = sse_data(streamed.body)
    report = json.loads(events[0]["choices"][0]["delta"]["content"])
    # temperature null is a gap the config fills; max_completion_tokens stands for max_tokens.
    assert report["body"] == {**sent, "model": "tiny", "temperature": 0.3, "stream": True,
                              "stream_options": {"include_usage": True}, "max_completion_tokens": 8}
    assert report["headers"]["accept"] == "text/event-stream"
    assert events[-2]["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    assert events.count("[DONE]") == 1


def test_rate_limit_keeps_status_message_and_retry_after():
    recorder = Recorder()
    with running(recorder) as rec:
        with running(proxy_server(f"http://127.0.0.1:{rec.port}/v1/fail")) as proxy:
            answer = post(proxy.port, {"model": "tiny", "messages": HELLO})
            streamed = post(proxy.port, {"model": "tiny", "messages": HELLO, "stream": True})
    for a in (answer, streamed):
        assert a.status == 429 and a.header("retry-after") == "7"
        assert a.error() == {"message": "Rate limit reached for requests.", "type": "requests",
                             "param": None, "code": "rate_limit_exceeded"}


# ================================================================================================
# Failures: upstream down, slow, failing
# ================================================================================================


def test_upstream_down_is_502():
    with running(proxy_server(f"http://127.0.0.1:{free_port()}/v1")) as proxy:
        for stream in (False, True):
            answer = post(proxy.port, {"model": "tiny", "messages": HELLO, "stream": stream})
            assert answer.status == 502
            error = answer.error()
            assert error["code"] == "bad_gateway" and error["type"] == "server_error"
            assert "connection refused" in error["message"]
            assert "127.0.0.1" not in error["message"]  # the upstream's address stays private


async def hang(exchange: Exchange) -> None:
    await exchange.until_peer_closes()


def test_upstream_that_never_answers_is_504():
    """Stands for an upstream stuck before its first byte (a long queue, a dead worker)."""
    fake = FakeUpstream(hang)
    with running(fake) as up:
        with running(proxy_server(f"http://127.0.0.1:{up.port}/v1", read_timeout=0.3)) as proxy:
            for stream in (False, True):
                answer = post(proxy.port, {"model": "tiny", "messages": HELLO, "stream": stream})
                assert answer.status == 504
                assert answer.error()["code"] == "upstream_timeout"
                assert "0.3 seconds" in answer.error()["message"]


def test_stream_that_stalls_midway_ends_with_a_504_event():
    """Stands for an upstream whose generation stalls after the first tokens."""
    async def stall(exchange: Exchange) -> None:
        await exchange.send_sse_head()
        await exchange.send_chunk(chunk_event("Hel"))
        await exchange.until_peer_closes()

    with running(FakeUpstream(stall)) as up:
        with running(proxy_server(f"http://127.0.0.1:{up.port}/v1", read_timeout=0.3)) as proxy:
            answer = post(proxy.port, {"model": "tiny", "messages": HELLO, "stream": True})
    assert answer.status == 200
    events = sse_data(answer.body)
    assert stream_text(events) == "Hel"
    assert events[-2]["error"]["code"] == "upstream_timeout" and events[-1] == "[DONE]"
    assert events.count("[DONE]") == 1


def test_all_pooled_connections_busy_past_the_connect_timeout_is_504():
    """Stands for an upstream answering slowly while the pool (one connection) is full."""
    fake = FakeUpstream(hang)
    with running(fake) as up:
        with running(proxy_server(f"http://127.0.0.1:{up.port}/v1", max_connections=1, read_timeout=5,
                                  connect_timeout=0.2)) as proxy:
            first = Client(proxy.port)
            first.request("POST", "/v1/chat/completions", JSON, orjson.dumps({"model": "t", "messages": HELLO}))
            assert wait_for(lambda: len(fake.requests) == 1)
            second = post(proxy.port, {"model": "t", "messages": HELLO})
            first.close()
    assert second.status == 504 and second.error()["code"] == "upstream_timeout"
    assert fake.connections == 1


def test_upstream_5xx_is_502_with_its_message():
    """Stands for an upstream that crashed on the request (vLLM's flat error dialect)."""
    async def crash(exchange: Exchange) -> None:
        await exchange.send_json(500, {"object": "error", "message": "CUDA out of memory", "type": "InternalError",
                                       "param": None, "code": 500})

    with running(FakeUpstream(crash)) as up:
        with running(proxy_server(f"http://127.0.0.1:{up.port}/v1")) as proxy:
            for stream in (False, True):
                answer = post(proxy.port, {"model": "tiny", "messages": HELLO, "stream": stream})
                assert answer.status == 502
                assert answer.error()["code"] == "bad_gateway"
                assert "500" in answer.error()["message"] and "CUDA out of memory" in answer.error()["message"]


def test_upstream_error_with_status_200_is_502():
    """Stands for an upstream that reports failures in a 200 answer (some local servers do)."""
    async def fail_softly(exchange: Exchange) -> None:
        await exchange.send_json(200, {"error": "model crashed while loading"}, b"OK")

    with running(FakeUpstream(fail_softly)) as up:
        with running(proxy_server(f"http://127.0.0.1:{up.port}/v1")) as proxy:
            answer = post(proxy.port, {"model": "tiny", "messages": HELLO})
    assert answer.status == 502
    assert answer.error()["message"] == "The upstream reported an error: model crashed while loading"


def test_upstream_whose_model_list_is_no_list_is_healthy_and_serves_model_name():
    """Stands for an upstream that answers every path with its own JSON (a bare inference
    service): it answers, so /health is 200 and the one model served is ``model_name``."""
    async def answer(exchange: Exchange) -> bool:
        await exchange.send_json(200, {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
                                       "choices": [{"index": 0, "finish_reason": "stop",
                                                    "message": {"role": "assistant", "content": "Hi"}}]}, b"OK")
        return True

    with running(FakeUpstream(answer, models={"status": "ok"})) as up:
        with running(proxy_server(f"http://127.0.0.1:{up.port}/v1")) as proxy:
            with Client(proxy.port) as client:
                client.request("GET", "/health")
                health = client.read_response()
                client.request("GET", "/v1/models")
                models = client.read_response().json()
            chat = post(proxy.port, {"model": "tiny", "messages": HELLO})
    assert health.status == 200 and health.json()["status"] == "ok"
    assert [(m["id"], m["status"]) for m in models["data"]] == [("tiny", "loaded")]
    assert chat.status == 200 and chat.json()["choices"][0]["message"]["content"] == "Hi"


def test_upstream_4xx_in_plain_text_keeps_status_and_text():
    """Stands for a reverse proxy in front of the upstream refusing the request in plain text."""
    async def refuse(exchange: Exchange) -> None:
        await exchange.send(b"HTTP/1.1 413 Payload Too Large\r\ncontent-type: text/plain\r\n"
                            b"content-length: 22\r\n\r\nrequest body too large")

    with running(FakeUpstream(refuse)) as up:
        with running(proxy_server(f"http://127.0.0.1:{up.port}/v1")) as proxy:
            answer = post(proxy.port, {"model": "tiny", "messages": HELLO})
    assert answer.status == 413
    assert answer.error()["message"] == "request body too large"


def test_upstream_breaking_the_connection_midway_is_502():
    """Stands for an upstream process killed while answering."""
    async def die(exchange: Exchange) -> None:
        if b'"stream":true' in exchange.body:
            await exchange.send_sse_head()
            await exchange.send_chunk(chunk_event("partial"))
        else:
            await exchange.send(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"id\"")

    with running(FakeUpstream(die)) as up:
        with running(proxy_server(f"http://127.0.0.1:{up.port}/v1")) as proxy:
            plain = post(proxy.port, {"model": "tiny", "messages": HELLO})
            streamed = post(proxy.port, {"model": "tiny", "messages": HELLO, "stream": True})
    assert plain.status == 502 and plain.error()["code"] == "bad_gateway"
    events = sse_data(streamed.body)
    assert stream_text(events) == "partial"
    assert events[-2]["error"]["code"] == "bad_gateway" and events.count("[DONE]") == 1


# ================================================================================================
# Streams: reassembly across reads, error events, disconnects
# ================================================================================================


TEXT = "héllo wörld — 日本語 😀"


def test_utf8_and_event_lines_split_across_tcp_writes_come_through_whole():
    """Stands for an upstream (or a proxy in front of it) that flushes at arbitrary byte
    boundaries: every event is written one byte per TCP segment, CRLF line ends, comments
    between events."""
    frames = [chunk_event(piece) for piece in ("hé", "llo wörld", " — 日本語 😀")] + [chunk_event("", "stop")]

    async def trickle(exchange: Exchange) -> None:
        await exchange.send_sse_head()
        await exchange.send_chunk(b": keep-alive comment\r\n\r\n")
        for frame in frames:
            frame = frame.replace(b"\n", b"\r\n")
            for i in range(len(frame)):
                await exchange.send_chunk(frame[i:i + 1], pause=0.0005)
        await exchange.send_chunk(b"data: [DONE]\r\n\r\n")
        await exchange.send(b"0\r\n\r\n")
        return True

    with running(FakeUpstream(trickle)) as up:
        with running(proxy_server(f"http://127.0.0.1:{up.port}/v1")) as proxy:
            answer = post(proxy.port, {"model": "tiny", "messages": HELLO, "stream": True})
    events = sse_data(answer.body)
    assert stream_text(events) == TEXT
    sent = [orjson.loads(f[6:]) for f in frames]
    for chunk in sent:  # relayed as sent, with the null logprobs OpenAI's chunks carry
        chunk["choices"][0]["logprobs"] = None
    assert sent == events[:-1]
    assert events.count("[DONE]") == 1


def test_sse_decoder_fed_byte_by_byte():
    stream = ("event: message\ndata: {\"a\": \"" + TEXT + "\"}\r\n\r\n: comment\n\n"
              "data: line one\ndata: line two\n\nevent: error\ndata: {\"error\": {\"message\": \"x\"}}\n\n"
              "data: [DONE]\n\n").encode()
    decoder = SSEDecoder()
    events = []
    for i in range(len(stream)):
        events += decoder.feed(stream[i:i + 1])
    assert events == [("message", ('{"a": "' + TEXT + '"}').encode()), ("message", b"line one\nline two"),
                      ("error", b'{"error": {"message": "x"}}'), ("message", b"[DONE]")]
    assert json.loads(events[0][1])["a"] == TEXT


def test_error_event_midstream_is_relayed_once_before_done():
    """Stands for OpenAI (and vLLM) reporting a failure inside a stream that has started."""
    async def fail_midway(exchange: Exchange) -> None:
        await exchange.send_sse_head()
        await exchange.send_chunk(chunk_event("Once upon"))
        error = {"error": {"message": "The server had an error while processing your request.",
                           "type": "server_error", "param": None, "code": "overloaded"}}
        await exchange.send_chunk(sse_frame(error))
        await exchange.send_chunk(b"data: [DONE]\n\n")
        await exchange.send(b"0\r\n\r\n")

    with running(FakeUpstream(fail_midway)) as up:
        with running(proxy_server(f"http://127.0.0.1:{up.port}/v1")) as proxy:
            answer = post(proxy.port, {"model": "tiny", "messages": HELLO, "stream": True})
    events = sse_data(answer.body)
    assert stream_text(events) == "Once upon"
    assert events[-2] == {"error": {"message": "The server had an error while processing your request.",
                                    "type": "server_error", "param": None, "code": "overloaded"}}
    assert events[-1] == "[DONE]" and events.count("[DONE]") == 1


def test_client_disconnect_closes_the_upstream_connection_at_once():
    """Stands for an upstream generating a long answer token by token: it writes until its
    client (our proxy) closes the connection."""
    async def generate_forever(exchange: Exchange) -> None:
        await exchange.send_sse_head()
        closed = asyncio.ensure_future(exchange.until_peer_closes())
        while not closed.done():
            await exchange.send_chunk(chunk_event("token "), pause=0.02)
        exchange.writer.close()
        raise ConnectionResetError

    fake = FakeUpstream(generate_forever)
    with running(fake) as up:
        with running(proxy_server(f"http://127.0.0.1:{up.port}/v1")) as proxy:
            client = Client(proxy.port)
            client.request("POST", "/v1/chat/completions", JSON,
                           orjson.dumps({"model": "t", "messages": HELLO, "stream": True}))
            assert client.read_head().status == 200
            while client.buffer.count(b"token") < 3:
                client._fill()
            assert not fake.peer_closed.is_set()
            client.close()
            assert fake.peer_closed.wait(5), "the upstream kept generating for a client that left"


def test_pooled_connection_closed_by_the_upstream_is_retried_on_a_fresh_one():
    """Stands for an upstream whose keep-alive timeout fires just as the next request arrives:
    it reads the request and closes without answering."""
    async def answer_once(exchange: Exchange) -> bool:
        if len(fake.requests) % 2 == 0:
            return False  # close without a byte of answer
        completion = {"id": "c", "object": "chat.completion", "created": 1, "model": "fake",
                      "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                                   "finish_reason": "stop"}]}
        await exchange.send_json(200, completion)
        return True

    fake = FakeUpstream(answer_once)
    with running(fake) as up:
        with running(proxy_server(f"http://127.0.0.1:{up.port}/v1")) as proxy:
            first = post(proxy.port, {"model": "t", "messages": HELLO})
            second = post(proxy.port, {"model": "t", "messages": HELLO})
    assert first.status == second.status == 200
    assert second.json()["choices"][0]["message"]["content"] == "ok"
    assert len(fake.requests) == 3 and fake.connections == 2


def test_concurrent_requests_run_in_parallel():
    """Stands for an upstream that serves requests in parallel: it holds every answer until all
    three requests have arrived, which only happens if the proxy does not serialise them."""
    arrived: list = []

    async def wait_for_all(exchange: Exchange) -> None:
        if not arrived:
            arrived.append(asyncio.Event())
        if len(fake.requests) == 3:
            arrived[0].set()
        await asyncio.wait_for(arrived[0].wait(), 10)
        await exchange.send_sse_head()
        await exchange.send_chunk(chunk_event("answer"))
        await exchange.send_chunk(b"data: [DONE]\n\n")
        await exchange.send(b"0\r\n\r\n")

    fake = FakeUpstream(wait_for_all)
    with running(fake) as up:
        with running(proxy_server(f"http://127.0.0.1:{up.port}/v1")) as proxy:
            clients = [Client(proxy.port) for _ in range(3)]
            for client in clients:
                client.request("POST", "/v1/chat/completions", JSON,
                               orjson.dumps({"model": "t", "messages": HELLO, "stream": True}))
            answers = [client.read_response("POST") for client in clients]
            for client in clients:
                client.close()
    assert [stream_text(sse_data(a.body)) for a in answers] == ["answer"] * 3
    assert fake.connections == 3


# ================================================================================================
# TLS
# ================================================================================================


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost / 127.0.0.1, made with the openssl CLI."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


class TLSTerminator:
    """A TLS front for a plain-HTTP server: decrypts each connection and pipes it to ``port``."""

    def __init__(self, port: int, context: ssl.SSLContext) -> None:
        self.port = port
        self.context = context
        self.connections = 0
        self._writers: list = []

    async def start(self):
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.context)
        return self._server.sockets[0].getsockname()[:2]

    async def stop(self, timeout=None):
        self._server.close()
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()

    async def _serve(self, reader, writer) -> None:
        self.connections += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.port)
        self._writers += [writer, up_writer]

        async def pipe(src, dst):
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except ConnectionError:
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


def test_tls_upstream(upstream, tmp_path):
    cert, key = make_certificate(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    trusting = ssl.create_default_context(cafile=str(cert))
    front = TLSTerminator(upstream.port, server_context)
    body = {"model": "tiny", "messages": HELLO, "max_tokens": 6, "temperature": 0}
    with running(front) as tls:
        base = f"https://localhost:{tls.port}/v1"
        with running(proxy_server(base, trusting)) as proxy:
            plain = post(proxy.port, body)
            streamed = post(proxy.port, {**body, "stream": True})
        with running(proxy_server(base)) as untrusting:  # the system's CAs do not know our cert
            refused = post(untrusting.port, body)
    direct = post(upstream.port, body).json()
    assert plain.status == 200 and plain.json()["choices"][0]["message"] == direct["choices"][0]["message"]
    assert stream_text(sse_data(streamed.body)) == direct["choices"][0]["message"]["content"]
    assert front.connections == 1  # both requests over one TLS connection; the refused handshake never got through
    assert refused.status == 502 and "certificate failed verification" in refused.error()["message"]


# ================================================================================================
# The HTTP client alone
# ================================================================================================


def test_client_reads_length_chunked_and_close_delimited_bodies():
    """Stands for servers framing bodies each of the three ways HTTP/1.1 allows."""
    async def frame(exchange: Exchange) -> bool:
        if b"/length" in exchange.head:
            await exchange.send(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhel", b"lo")
            return True
        if b"/chunked" in exchange.head:
            await exchange.send_sse_head()
            await exchange.send_chunk("wö".encode()[:2])
            await exchange.send_chunk("wö".encode()[2:])
            await exchange.send(b"0\r\n\r\n")
            return True
        await exchange.send(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil ", b"the end")
        return False

    async def scenario(port: int):
        client = HTTPClient(max_connections=2)
        base = f"http://127.0.0.1:{port}"
        results = []
        for path in ("/length", "/chunked", "/length", "/close", "/length"):
            response = await client.request("GET", base + path)
            pieces = [piece async for piece in response.iter_bytes()]
            results.append((path, b"".join(pieces), response.complete))
        await client.aclose()
        return results, client.connections_opened

    fake = FakeUpstream(frame)
    with running(fake) as up:
        results, opened = up.call(scenario(up.port))
    assert results == [("/length", b"hello", True), ("/chunked", "wö".encode(), True),
                       ("/length", b"hello", True), ("/close", b"until the end", True),
                       ("/length", b"hello", True)]
    assert opened == fake.connections == 2  # reused until the close-delimited body ended it


def test_client_timeouts_and_bad_responses():
    async def misbehave(exchange: Exchange) -> None:
        if b"/garbage" in exchange.head:
            await exchange.send(b"SPDY/3 200 OK\r\n\r\n")
        elif b"/silent" in exchange.head:
            await exchange.until_peer_closes()

    async def scenario(port: int):
        client = HTTPClient(read_timeout=0.2)
        outcomes = []
        for path in ("/garbage", "/silent", "/empty"):
            try:
                await client.request("GET", f"http://127.0.0.1:{port}{path}")
                outcomes.append("answered")
            except (ReadTimeout, RemoteProtocolError, ConnectTimeout) as exc:
                outcomes.append(type(exc).__name__)
        return outcomes

    with running(FakeUpstream(misbehave)) as up:
        assert up.call(scenario(up.port)) == ["RemoteProtocolError", "ReadTimeout", "RemoteProtocolError"]


def test_a_stream_cut_short_by_the_connection_closing_ends_with_an_error_event():
    """Stands for an upstream whose stream has no marked end (neither Content-Length nor chunked,
    as an HTTP/1.0 server, or a proxy that strips the framing, sends it) and whose connection
    closes before ``[DONE]``: the stream may have been cut short, and the client is told so."""
    async def close_early(exchange: Exchange) -> None:
        await exchange.send(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n"
                            + chunk_event("Hel") + chunk_event("lo"))

    with running(FakeUpstream(close_early)) as up:
        with running(proxy_server(f"http://127.0.0.1:{up.port}/v1")) as proxy:
            streamed = post(proxy.port, {"model": "tiny", "messages": HELLO, "stream": True})
    events = sse_data(streamed.body)
    assert streamed.status == 200 and stream_text(events) == "Hello"
    assert events[-2]["error"]["code"] == "bad_gateway" and "[DONE]" in events[-2]["error"]["message"]
    assert events.count("[DONE]") == 1
