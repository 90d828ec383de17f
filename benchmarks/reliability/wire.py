"""Raw bytes to the server and a strict reading of what comes back.

:func:`exchange` writes exactly the bytes it is given on a fresh loopback connection and reads the
first response with h11 as a client would (so a response with broken framing is noticed), until
the response ends, the server closes, or the time runs out. :func:`judge` is the oracle: which
answers are failures of the server rather than refusals of a bad request.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import h11

#: 5xx answers the server documents: 501 for a transfer coding it does not know, 505 for an HTTP
#: version it does not speak, 503 for too many connections, the model still loading, a shutdown.
DOCUMENTED_5XX = {
    501: frozenset({"unsupported_transfer_encoding"}),
    503: frozenset({"too_many_connections", "model_loading", "server_shutting_down", "shutting_down"}),
    505: frozenset({"http_version_not_supported"}),
}


@dataclass
class Reply:
    """What the client saw. ``outcome``: "response", "closed" (no response before the server
    closed), "reset", "timeout" (nothing complete in time), "malformed" (h11 refused it) or
    "abandoned" (the client left on purpose)."""

    outcome: str
    status: Optional[int] = None
    headers: dict = field(default_factory=dict)
    body: bytes = b""
    detail: str = ""
    seconds: float = 0.0


async def exchange(port: int, data: bytes, method: str = "GET", timeout: float = 10.0,
                   half_close: bool = False, rcvbuf: Optional[int] = None,
                   abandon_after: Optional[float] = None,
                   on_connect: Optional[Callable[[int], None]] = None) -> Reply:
    """Send ``data`` on a new connection and read one response. ``method`` tells the parser
    whether the answer has a body (HEAD); ``half_close`` shuts our side for writing after
    sending (an end of input in the middle of a request); ``abandon_after`` drops the connection
    that many seconds after sending, whatever has arrived (outcome "abandoned"); ``on_connect``
    is called with our end's port once connected, before anything is sent."""
    started = time.monotonic()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        await asyncio.wait_for(loop.sock_connect(sock, ("127.0.0.1", port)), timeout)
        if on_connect is not None:
            on_connect(sock.getsockname()[1])
        reader, writer = await asyncio.open_connection(sock=sock)
    except (OSError, asyncio.TimeoutError) as exc:
        sock.close()
        return Reply("reset", detail=f"connect: {type(exc).__name__}: {exc}", seconds=time.monotonic() - started)
    try:
        if abandon_after is not None:
            writer.write(data)
            await asyncio.sleep(abandon_after)
            reply = Reply("abandoned")
        else:
            reply = await asyncio.wait_for(_talk(reader, writer, data, method, half_close), timeout)
    except asyncio.TimeoutError:
        reply = Reply("timeout")
    except (ConnectionResetError, BrokenPipeError) as exc:
        reply = Reply("reset", detail=type(exc).__name__)
    finally:
        writer.transport.abort()
    reply.seconds = time.monotonic() - started
    return reply


async def _talk(reader, writer, data: bytes, method: str, half_close: bool) -> Reply:
    writer.write(data)  # not drained: a server that answers before reading it all must be heard
    if half_close and writer.can_write_eof():
        writer.write_eof()
    parser = h11.Connection(h11.CLIENT)
    parser.send(h11.Request(method=method.encode() if method else b"GET", target="/", headers=[("host", "x")]))
    parser.send(h11.EndOfMessage())
    reply, body = None, []
    while True:
        try:
            event = parser.next_event()
        except h11.RemoteProtocolError as exc:
            return Reply("malformed", reply.status if reply else None, detail=str(exc))
        if event is h11.NEED_DATA:
            chunk = await reader.read(65536)
            parser.receive_data(chunk)
            if not chunk and reply is None:
                try:
                    parser.next_event()
                except h11.RemoteProtocolError:
                    pass
                return Reply("closed")
            continue
        if isinstance(event, h11.InformationalResponse):
            continue
        if isinstance(event, h11.Response):
            reply = Reply("response", event.status_code,
                          {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in event.headers})
        elif isinstance(event, h11.Data):
            body.append(bytes(event.data))
        elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
            reply.body = b"".join(body)
            return reply


def judge(reply: Reply, expect_response: bool) -> Optional[str]:
    """Why ``reply`` is a failure of the server, or None if it is acceptable.

    Failures: a 5xx other than a documented one (an answer to HEAD has no body to name its
    code, so its status alone counts); a response h11 cannot parse; an error status
    whose body is not an OpenAI error object; no response (closed, timeout) to a request that
    was complete and well framed (``expect_response``)."""
    if reply.outcome == "malformed":
        return f"malformed response: {reply.detail}"
    if reply.outcome == "abandoned":
        return None
    if reply.outcome in ("closed", "reset", "timeout"):
        return f"no response ({reply.outcome})" if expect_response else None
    status = reply.status
    code = None
    if status >= 400 and reply.body:
        try:
            error = json.loads(reply.body)["error"]
            if not isinstance(error, dict) or not isinstance(error.get("message"), str) \
                    or not isinstance(error.get("type"), str) or "param" not in error or "code" not in error:
                raise ValueError
            code = error.get("code")
        except (ValueError, KeyError, TypeError):
            return f"{status} without an OpenAI error object: {reply.body[:120]!r}"
    if status >= 500 and not (code in DOCUMENTED_5XX.get(status, ()) or (not reply.body and status in DOCUMENTED_5XX)):
        return f"HTTP {status} ({code})"
    return None


def known_issue(reply: Reply, half_closed: bool) -> Optional[str]:
    """A failure already reported and waiting for its fix, or None. Such answers are listed in
    the results but do not fail a run."""
    if half_closed and reply.status == 503 and b'"request_cancelled"' in reply.body:
        return "503 request_cancelled to a client that half-closed after a complete request that had to queue"
    return None
