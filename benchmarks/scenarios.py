"""The measurements: one function per scenario, each returning raw samples.

HTTP is spoken by a small client on asyncio streams that reads the raw bytes itself (chunked or
sized bodies, SSE events split on blank lines) and stamps each event with ``perf_counter`` the
moment its bytes are read, so no SDK sits between the socket and the clock. The in-process
ceiling (:class:`InProcess`) times the same generation through ``llama_cpp.Llama`` with the same
counting, so all three compare directly.

Counting, the same everywhere: time to first token (TTFT) runs from sending the request to the
first event whose ``delta.content`` is non-empty; tokens/s is ``(content events - 1)`` over the
time from the first content event to the last; gaps are the times between consecutive content
events.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import AsyncIterator, Optional

#: The conversation every scenario sends (asks for a long answer, so 128 tokens get generated).
MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Write a long story about a lighthouse keeper who finds a message in a bottle."},
]


@dataclass(frozen=True)
class Sampling:
    """Sent explicitly in every request (and to the in-process call): the servers' own defaults
    differ (llama_cpp.server's ``repeat_penalty`` is 1.1, ``Llama``'s 1.0)."""

    temperature: float = 0.0
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int = 42

    def fields(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Target:
    """A server to measure: its label, port and model id."""

    name: str
    port: int
    model: str = "default"


@dataclass
class StreamResult:
    """One streamed completion as the client saw it (times in seconds, perf_counter)."""

    sent: float
    content_times: list = field(default_factory=list)
    text: str = ""
    finish_reason: Optional[str] = None
    done: bool = False
    error: Optional[str] = None
    #: ``completion_tokens`` of a ``usage`` object in the stream, when the server sends one.
    usage_tokens: Optional[int] = None

    @property
    def tokens(self) -> int:
        return len(self.content_times)

    @property
    def ttft_ms(self) -> Optional[float]:
        return (self.content_times[0] - self.sent) * 1e3 if self.content_times else None

    @property
    def tokens_per_s(self) -> Optional[float]:
        times = self.content_times
        if len(times) < 2 or times[-1] <= times[0]:
            return None
        return (len(times) - 1) / (times[-1] - times[0])

    @property
    def gaps_ms(self) -> list:
        times = self.content_times
        return [(b - a) * 1e3 for a, b in zip(times, times[1:])]

    @property
    def complete(self) -> bool:
        """Ended normally: a ``finish_reason`` of stop/length, then ``[DONE]``, no error."""
        return self.done and self.error is None and self.finish_reason in ("stop", "length")


# --- a raw HTTP/1.1 client -------------------------------------------------------------------


class HTTPError(Exception):
    pass


class Connection:
    """One keep-alive loopback connection; requests on it run one after another."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: Optional[asyncio.StreamReader] = None
        self.writer: Optional[asyncio.StreamWriter] = None

    async def open(self) -> "Connection":
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        return self

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def send(self, method: str, path: str, body: Optional[bytes] = None) -> float:
        """Write a request; returns the perf_counter just before writing."""
        head = f"{method} {path} HTTP/1.1\r\nhost: 127.0.0.1:{self.port}\r\naccept: */*\r\n"
        if body is not None:
            head += f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
        data = (head + "\r\n").encode() + (body or b"")
        sent = time.perf_counter()
        self.writer.write(data)
        return sent

    async def read_head(self) -> tuple:
        """The status line and headers: (status, {lowercase name: value})."""
        lines = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        return status, headers

    async def body_pieces(self, headers: dict) -> AsyncIterator[bytes]:
        """The body as it arrives: one piece per chunk (chunked), or the sized/close-delimited
        body in reads."""
        reader = self.reader
        if "chunked" in headers.get("transfer-encoding", "").lower():
            while True:
                size_line = await reader.readuntil(b"\r\n")
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")  # no trailers are expected
                    return
                piece = await reader.readexactly(size + 2)
                yield piece[:-2]
        elif "content-length" in headers:
            remaining = int(headers["content-length"])
            while remaining:
                piece = await reader.read(min(remaining, 65536))
                if not piece:
                    raise HTTPError("connection closed inside a body")
                remaining -= len(piece)
                yield piece
        else:
            while True:
                piece = await reader.read(65536)
                if not piece:
                    return
                yield piece

    async def request(self, method: str, path: str, body: Optional[bytes] = None) -> tuple:
        """(status, body bytes, seconds from sending to the whole response read)."""
        sent = self.send(method, path, body)
        status, headers = await self.read_head()
        data = b"".join([piece async for piece in self.body_pieces(headers)])
        return status, data, time.perf_counter() - sent


def chat_body(target: Target, sampling: Sampling, max_tokens: int, stream: bool,
              messages: Optional[list] = None, extra: Optional[dict] = None) -> bytes:
    """A chat request: ``messages`` (default :data:`MESSAGES`), the sampling, and ``extra`` fields."""
    body = {"model": target.model, "messages": messages or MESSAGES, "max_tokens": max_tokens, "stream": stream}
    body.update(sampling.fields())
    body.update(extra or {})
    return json.dumps(body).encode()


async def stream_chat(target: Target, sampling: Sampling, max_tokens: int,
                  abandon_after: Optional[int] = None, messages: Optional[list] = None,
                  extra: Optional[dict] = None, result: Optional[StreamResult] = None) -> StreamResult:
    """One streamed chat completion on a fresh connection; with ``abandon_after`` the client
    closes the socket once that many content events have arrived. ``messages`` and ``extra``
    as for :func:`chat_body`; ``result``, when given, is filled in as events arrive (so another
    task can watch the stream's progress) and returned."""
    connection = await Connection(target.port).open()
    result = result if result is not None else StreamResult(sent=0.0)
    try:
        body = chat_body(target, sampling, max_tokens, True, messages, extra)
        result.sent = connection.send("POST", "/v1/chat/completions", body)
        status, headers = await connection.read_head()
        if status != 200:
            data = b"".join([piece async for piece in connection.body_pieces(headers)])
            result.error = f"HTTP {status}: {data[:200].decode('utf-8', 'replace')}"
            return result
        buffer = b""
        async for piece in connection.body_pieces(headers):
            now = time.perf_counter()
            buffer += piece.replace(b"\r\n", b"\n")
            while b"\n\n" in buffer:
                event, buffer = buffer.split(b"\n\n", 1)
                _take_event(result, event, now)
                if abandon_after is not None and result.tokens >= abandon_after:
                    return result
        return result
    except (OSError, asyncio.IncompleteReadError, HTTPError) as exc:
        result.error = result.error or f"{type(exc).__name__}: {exc}"
        return result
    finally:
        connection.close()


def _take_event(result: StreamResult, event: bytes, now: float) -> None:
    data = "\n".join(line[5:].strip() for line in event.decode("utf-8").split("\n") if line.startswith("data:"))
    if not data:
        return  # a comment (keep-alive ping) or an empty event
    if data == "[DONE]":
        result.done = True
        return
    chunk = json.loads(data)
    if "error" in chunk:
        result.error = json.dumps(chunk["error"])[:200]
        return
    usage = chunk.get("usage")
    if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
        result.usage_tokens = usage["completion_tokens"]
    for choice in chunk.get("choices") or ():
        content = (choice.get("delta") or {}).get("content")
        if content:
            result.content_times.append(now)
            result.text += content
        if choice.get("finish_reason"):
            result.finish_reason = choice["finish_reason"]


# --- scenarios over HTTP ---------------------------------------------------------------------

#: No single scenario call may take longer than this (a stuck server must not stall the run).
CALL_TIMEOUT = 180.0


def _run(coroutine):
    """Run one scenario's coroutine in a fresh event loop, bounded by CALL_TIMEOUT."""
    async def bounded():
        return await asyncio.wait_for(coroutine, CALL_TIMEOUT)

    return asyncio.run(bounded())


def stream_once(target: Target, sampling: Sampling, max_tokens: int) -> StreamResult:
    """One streamed completion."""
    return _run(stream_chat(target, sampling, max_tokens))


def completion_latencies(target: Target, sampling: Sampling, count: int, max_tokens: int = 1) -> list:
    """``count`` non-streamed completions one after another on one keep-alive connection:
    each one's latency in ms. Raises HTTPError on a non-200 answer."""

    async def run() -> list:
        connection = await Connection(target.port).open()
        try:
            latencies = []
            body = chat_body(target, sampling, max_tokens, False)
            for _ in range(count):
                status, data, seconds = await connection.request("POST", "/v1/chat/completions", body)
                if status != 200:
                    raise HTTPError(f"{target.name}: HTTP {status}: {data[:200].decode('utf-8', 'replace')}")
                latencies.append(seconds * 1e3)
            return latencies
        finally:
            connection.close()

    return _run(run())


def completion_text(target: Target, sampling: Sampling, max_tokens: int) -> str:
    """The content of one non-streamed completion."""

    async def run() -> str:
        connection = await Connection(target.port).open()
        try:
            status, data, _ = await connection.request("POST", "/v1/chat/completions",
                                                       chat_body(target, sampling, max_tokens, False))
        finally:
            connection.close()
        if status != 200:
            raise HTTPError(f"{target.name}: HTTP {status}: {data[:200].decode('utf-8', 'replace')}")
        return json.loads(data)["choices"][0]["message"]["content"] or ""

    return _run(run())


@dataclass
class ConcurrentResult:
    streams: list
    seconds: float

    @property
    def completed(self) -> int:
        return sum(1 for stream in self.streams if stream.complete)

    @property
    def aggregate_tokens_per_s(self) -> float:
        return sum(stream.tokens for stream in self.streams) / self.seconds if self.seconds else 0.0


def concurrent_streams(target: Target, sampling: Sampling, count: int, max_tokens: int) -> ConcurrentResult:
    """``count`` streamed completions sent at once, each on its own connection. The aggregate
    rate is every content event over the time from the first send to the last event."""

    async def run() -> ConcurrentResult:
        streams = await asyncio.gather(*(stream_chat(target, sampling, max_tokens) for _ in range(count)))
        start = min(stream.sent for stream in streams)
        end = max([stream.content_times[-1] for stream in streams if stream.content_times] or [start])
        return ConcurrentResult(list(streams), end - start)

    return _run(run())


@dataclass
class DisconnectResult:
    #: The stream abandoned after a few content events.
    abandoned: StreamResult
    #: From sending the next request (right after closing the stream) to its full answer.
    wait_ms: float
    #: The same next request after a stream of as many tokens that ran to its end instead.
    control_ms: float


def disconnect_then_wait(target: Target, sampling: Sampling, abandon_after: int = 3,
                         stream_tokens: int = 512) -> DisconnectResult:
    """Abandon a long stream after ``abandon_after`` content events, then time a ``max_tokens: 1``
    request sent at once: if the abandoned generation keeps running, this one waits for it.

    The control first streams ``max_tokens: abandon_after`` to its end and times the same request,
    so both start from the same context (prompt and a few tokens) and differ only in the abandon.
    Raises HTTPError if either timed request is refused.
    """

    async def next_request_ms() -> float:
        connection = await Connection(target.port).open()
        try:
            status, data, seconds = await connection.request("POST", "/v1/chat/completions",
                                                             chat_body(target, sampling, 1, False))
        finally:
            connection.close()
        if status != 200:
            raise HTTPError(f"{target.name}: HTTP {status}: {data[:200].decode('utf-8', 'replace')}")
        return seconds * 1e3

    async def run() -> DisconnectResult:
        await stream_chat(target, sampling, abandon_after)
        control = await next_request_ms()
        abandoned = await stream_chat(target, sampling, stream_tokens, abandon_after=abandon_after)
        return DisconnectResult(abandoned, await next_request_ms(), control)

    return _run(run())


def models_id(port: int) -> str:
    """The first model id a server lists."""
    from .peers import get

    status, body = get(port, "/v1/models")
    if status != 200:
        raise HTTPError(f"GET /v1/models answered {status}")
    return json.loads(body)["data"][0]["id"]


# --- the model ceiling: the same generation in-process ---------------------------------------


class InProcess:
    """``llama_cpp.Llama`` loaded with the servers' settings, timed with the same counting."""

    def __init__(self, setup) -> None:
        import llama_cpp
        import llama_cpp.llama_cpp as bindings

        defaults = bindings.llama_model_default_params
        if not setup.extra_buffers:
            def without_extra_buffers():
                params = defaults()
                params.use_extra_bufts = False
                return params

            bindings.llama_model_default_params = without_extra_buffers
        try:
            self.llama = llama_cpp.Llama(**setup.llama_kwargs())
        finally:
            bindings.llama_model_default_params = defaults

    def stream_once(self, sampling: Sampling, max_tokens: int) -> StreamResult:
        result = StreamResult(sent=time.perf_counter())
        chunks = self.llama.create_chat_completion(MESSAGES, stream=True, max_tokens=max_tokens, **sampling.fields())
        for chunk in chunks:
            now = time.perf_counter()
            choice = chunk["choices"][0]
            content = choice["delta"].get("content")
            if content:
                result.content_times.append(now)
                result.text += content
            if choice.get("finish_reason"):
                result.finish_reason = choice["finish_reason"]
        result.done = True
        return result

    def completion_latencies(self, sampling: Sampling, count: int, max_tokens: int = 1) -> list:
        latencies = []
        for _ in range(count):
            start = time.perf_counter()
            self.llama.create_chat_completion(MESSAGES, max_tokens=max_tokens, **sampling.fields())
            latencies.append((time.perf_counter() - start) * 1e3)
        return latencies

    def completion_text(self, sampling: Sampling, max_tokens: int) -> str:
        answer = self.llama.create_chat_completion(MESSAGES, max_tokens=max_tokens, **sampling.fields())
        return answer["choices"][0]["message"]["content"] or ""

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.llama.close()
