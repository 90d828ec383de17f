"""Test support: run a real server in a background event loop, and speak raw HTTP to it.

``running(server)`` starts a :class:`helios_raw.Server` (or anything with async ``start`` /
``stop``) on its own event-loop thread and yields it with ``.host`` / ``.port`` set; the tests then
talk to it over real sockets with :class:`Client`, which writes exact bytes and parses answers
strictly enough to notice framing mistakes (a missing or wrong Content-Length, bad chunking,
bytes after the end of a response).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
from dataclasses import dataclass, field
from typing import Optional

TIMEOUT = 10.0


class ServerThread:
    """An event loop on a daemon thread serving ``server`` until :meth:`close`."""

    def __init__(self, server) -> None:
        self.server = server
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.host, self.port = self.call(server.start())
        self._stopped = False

    def call(self, coroutine, timeout: float = TIMEOUT):
        """Run ``coroutine`` on the server's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def call_soon(self, function, *args) -> None:
        self.loop.call_soon_threadsafe(function, *args)

    def stop_async(self, timeout: Optional[float] = None):
        """Begin a graceful stop; the returned future completes when it has finished."""
        self._stopped = True
        return asyncio.run_coroutine_threadsafe(self.server.stop(timeout), self.loop)

    def close(self) -> None:
        if not self._stopped:
            self.stop_async(2.0).result(TIMEOUT)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(TIMEOUT)
        self.loop.close()

    def connections(self) -> list:
        """The server's open connections (HTTPProtocol objects), read on its loop."""

        async def snapshot():
            return list(self.server.http.registry.connections)

        return self.call(snapshot())


def build_server(endpoints=(), limits=None, api_key=None, cors_origins=None, backend=None,
                 shutdown_timeout=None, access_log=True):
    """A helios_raw Server on 127.0.0.1:0 (imported here so the module loads without it)."""
    from helios_raw import Config, ServerBuilder

    config = Config()
    config.server.access_log = access_log
    if shutdown_timeout is not None:
        config.server.shutdown_timeout = shutdown_timeout
    builder = ServerBuilder(config).address("127.0.0.1:0").endpoints(endpoints).api_key(api_key)
    if limits is not None:
        builder.limits(limits)
    if cors_origins is not None:
        builder.cors_origins(cors_origins)
    if backend is not None:
        builder.backend(backend)
    return builder.build()


@contextlib.contextmanager
def running(server):
    thread = ServerThread(server)
    try:
        yield thread
    finally:
        thread.close()


@dataclass
class Answer:
    """One parsed HTTP response."""

    status: int
    reason: str
    headers: list = field(default_factory=list)  # (lower-case name, value) str pairs
    body: bytes = b""
    http_version: str = "1.1"
    chunked: bool = False

    def header(self, name: str) -> Optional[str]:
        values = [v for k, v in self.headers if k == name.lower()]
        return ", ".join(values) if values else None

    def json(self):
        return json.loads(self.body)

    def error(self) -> dict:
        """The OpenAI error object of this answer, checked for its four fields."""
        assert self.header("content-type") == "application/json", self.headers
        data = self.json()
        assert set(data) == {"error"}, data
        assert set(data["error"]) == {"message", "type", "param", "code"}, data
        assert isinstance(data["error"]["message"], str) and data["error"]["message"]
        return data["error"]


class ConnectionClosed(AssertionError):
    """The server closed the connection where a response was expected."""


class Client:
    """A blocking socket to the server plus a strict HTTP/1.1 response reader."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = TIMEOUT,
                 receive_buffer: Optional[int] = None) -> None:
        """``receive_buffer`` fixes the socket's receive buffer (no autotuning), so that a client
        that does not read fills up after a known amount."""
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if receive_buffer is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.settimeout(timeout)
        self.sock.connect((host, port))
        self.buffer = b""

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(self, method: str = "GET", target: str = "/health", headers: Optional[list] = None,
                body: bytes = b"", version: str = "1.1") -> None:
        """Send one request; a Host header and (for a body) Content-Length are added."""
        lines = [f"{method} {target} HTTP/{version}", "Host: test"]
        for name, value in headers or []:
            lines.append(f"{name}: {value}")
        if body and not any(n.lower() in ("content-length", "transfer-encoding") for n, _ in headers or []):
            lines.append(f"Content-Length: {len(body)}")
        self.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        if not data:
            return False
        self.buffer += data
        return True

    def _read_line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            if not self._fill():
                raise ConnectionClosed(f"connection closed mid-line; had {self.buffer[:200]!r}")
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line

    def _read_exact(self, n: int) -> bytes:
        while len(self.buffer) < n:
            if not self._fill():
                raise ConnectionClosed(f"connection closed after {len(self.buffer)} of {n} body bytes")
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def read_head(self) -> Answer:
        """The next response head (1xx included)."""
        if not self.buffer and not self._fill():
            raise ConnectionClosed("connection closed before a response")
        line = self._read_line().decode("latin-1")
        version, status, *reason = line.split(" ", 2)
        assert version in ("HTTP/1.1", "HTTP/1.0"), line
        answer = Answer(int(status), reason[0] if reason else "", http_version=version[5:])
        while True:
            line = self._read_line()
            if not line:
                return answer
            name, sep, value = line.decode("latin-1").partition(":")
            assert sep and name == name.strip(), f"malformed header line {line!r}"
            answer.headers.append((name.lower(), value.strip()))

    def read_response(self, method: str = "GET", allow_informational: bool = False) -> Answer:
        """The next final response; its body framed by Content-Length, chunking or close."""
        answer = self.read_head()
        while 100 <= answer.status < 200:
            assert allow_informational, f"unexpected informational response {answer.status}"
            answer = self.read_head()
        lengths = [v for k, v in answer.headers if k == "content-length"]
        assert len(lengths) <= 1, answer.headers
        encoding = answer.header("transfer-encoding")
        if method == "HEAD" or answer.status in (204, 304):
            return answer
        if encoding is not None:
            assert encoding == "chunked" and not lengths, answer.headers
            answer.chunked = True
            answer.body = self._read_chunked()
        elif lengths:
            answer.body = self._read_exact(int(lengths[0]))
        else:
            assert answer.header("connection") == "close" or answer.http_version == "1.0", answer.headers
            answer.body = self.read_until_close()
        return answer

    def _read_chunked(self) -> bytes:
        body = b""
        while True:
            size_line = self._read_line()
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                while self._read_line():  # trailers
                    pass
                return body
            body += self._read_exact(size)
            assert self._read_exact(2) == b"\r\n", "chunk not followed by CRLF"

    def read_until_close(self) -> bytes:
        """Everything until the server closes (a reset counts as a close)."""
        try:
            while self._fill():
                pass
        except ConnectionResetError:
            pass
        data, self.buffer = self.buffer, b""
        return data

    def closed_by_server(self) -> bool:
        """True if the server has closed (EOF or reset) with nothing more to read."""
        try:
            return not self._fill() and not self.buffer
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False


def get(port: int, target: str = "/health", method: str = "GET", headers: Optional[list] = None,
        body: bytes = b"") -> Answer:
    """One request on a fresh connection."""
    with Client(port) as client:
        client.request(method, target, headers, body)
        return client.read_response(method)
