"""The connection's timers on a virtual clock: each fires exactly when due and not a moment
before, without the test sleeping. Times are sums of powers of two, so they add up exactly."""

from __future__ import annotations

import asyncio

from helios_raw.app import App
from helios_raw.http.limits import Limits
from helios_raw.http.protocol import PROBE_DELAY
from helios_raw.http.response import Response
from helios_raw.http.sse import sse_response
from helios_raw.openai.handlers import health_route
from tests.support.clock import on_virtual_clock
from tests.support.wire import Wire

#: Less than any timer resolution we use, more than asyncio's clock resolution.
JUST = 2.0 ** -20
GET_HEALTH = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"


def make_app(release: asyncio.Event | None = None) -> App:
    app = App(access_log_enabled=False)
    app.add_route("GET", "/health", health_route(None))
    app.add_route("POST", "/echo", lambda request: Response(request.body, content_type="text/plain"))

    async def wait(request):
        await release.wait()
        return Response(b"cancelled" if request.cancelled.is_set() else b"wanted", content_type="text/plain")

    async def events(request):
        async def produce(sink):
            sink.send({"n": 0})
            await release.wait()
            sink.send({"n": 1})
            sink.done()

        return sse_response(produce)

    app.add_route("GET", "/wait", wait)
    app.add_route("GET", "/events", events)
    return app


async def until(moment: float) -> None:
    """Let the loop run until its clock reads ``moment``."""
    loop = asyncio.get_running_loop()
    arrived = loop.create_future()
    loop.call_at(moment, arrived.set_result, None)
    await arrived


async def trickle(wire: Wire, moments) -> None:
    """Feed one body byte at each of ``moments``."""
    for moment in moments:
        await until(moment)
        wire.feed(b"x")


async def written_at(wire: Wire, moment: float) -> bytes:
    """What is written at ``moment``, having checked that nothing was written just before."""
    await until(moment - JUST)
    assert wire.take() == b""
    await until(moment)
    return wire.take()


def is_408(data: bytes, about: bytes) -> bool:
    return (data.startswith(b"HTTP/1.1 408 Request Timeout\r\n") and b'"code":"request_timeout"' in data
            and about in data and b"connection: close" in data)


@on_virtual_clock
async def test_slowloris_head_deadline_is_not_reset_by_trickled_bytes():
    wire = Wire(make_app(), Limits(head_timeout=0.5, keepalive_timeout=30))
    wire.feed(b"GET /health HTTP/1.1\r\nHost: x\r\n")
    for step in range(1, 8):  # a header line every 1/16 s, the last at 7/16 s
        await until(step / 16)
        wire.feed(b"X-Slow: 1\r\n")
    # Half a second after the head's first byte, however busy the client is:
    assert is_408(await written_at(wire, 0.5), b"The request head was not received within 0.5 seconds.")
    assert wire.transport.eof_written


@on_virtual_clock
async def test_idle_connection_is_closed_exactly_at_the_keepalive_timeout():
    wire = Wire(make_app(), Limits(keepalive_timeout=5))
    await until(5 - JUST)
    assert not wire.transport.closing
    await until(5)
    assert wire.transport.closing and wire.take() == b""


@on_virtual_clock
async def test_keepalive_timeout_runs_from_the_end_of_the_last_response():
    wire = Wire(make_app(), Limits(keepalive_timeout=0.25))
    await until(0.125)
    wire.feed(GET_HEALTH)
    assert wire.take().startswith(b"HTTP/1.1 200 OK\r\n")
    await until(0.375 - JUST)
    assert not wire.transport.closing
    await until(0.375)
    assert wire.transport.closing


@on_virtual_clock
async def test_body_idle_timeout():
    wire = Wire(make_app(), Limits(body_idle_timeout=0.25))
    wire.feed(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
    assert is_408(await written_at(wire, 0.25), b"No request body data was received for 0.25 seconds.")


@on_virtual_clock
async def test_body_idle_timer_restarts_with_each_piece_of_body():
    wire = Wire(make_app(), Limits(body_idle_timeout=1.0))
    wire.feed(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 15\r\n\r\n")
    await trickle(wire, [step * 0.875 for step in range(1, 16)])  # 13 s in all, never idle for 1 s
    assert wire.take().endswith(b"content-length: 15\r\n\r\n" + b"x" * 15)


@on_virtual_clock
async def test_a_body_trickling_in_is_cut_off_at_the_body_timeout():
    wire = Wire(make_app(), Limits(body_idle_timeout=1.0, body_timeout=4.0))
    wire.feed(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
    await trickle(wire, [step / 2 for step in range(1, 8)])  # never idle for a second
    assert is_408(await written_at(wire, 4), b"The request body was not received in full within 4 seconds.")


@on_virtual_clock
async def test_the_body_idle_timeout_still_applies_before_the_body_timeout():
    wire = Wire(make_app(), Limits(body_idle_timeout=1.0, body_timeout=4.0))
    wire.feed(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nx")
    await until(2.5)
    wire.feed(b"x")  # too late: the idle timeout fired at 1 s
    assert is_408(wire.take(), b"No request body data was received for 1 seconds.")


@on_virtual_clock
async def test_a_body_complete_within_the_body_timeout_is_served():
    wire = Wire(make_app(), Limits(body_idle_timeout=1.0, body_timeout=4.0))
    wire.feed(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\n\r\n")
    await trickle(wire, [step / 2 - 0.125 for step in range(1, 9)])  # the last at 4 - 1/8 s
    assert wire.take().endswith(b"\r\n\r\nxxxxxxxx")


PROCESSING = b"HTTP/1.1 102 Processing\r\n\r\n"


@on_virtual_clock
async def test_a_half_closed_client_waiting_is_sent_102_processing_each_second_then_its_answer():
    release = asyncio.Event()
    wire = Wire(make_app(release))
    wire.feed(b"GET /wait HTTP/1.1\r\nHost: x\r\n\r\n")
    await until(0.5)
    wire.protocol.eof_received()
    assert await written_at(wire, 0.5 + PROBE_DELAY) == PROCESSING  # never before a prompt answer
    assert await written_at(wire, 0.5 + PROBE_DELAY + 1) == PROCESSING
    release.set()
    await until(4)
    answer = wire.take()
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(b"\r\n\r\nwanted")
    assert wire.transport.closing  # the client sends nothing more: the connection is done


@on_virtual_clock
async def test_an_http_1_0_client_is_never_sent_an_interim_response():
    release = asyncio.Event()
    wire = Wire(make_app(release))
    wire.feed(b"GET /wait HTTP/1.0\r\n\r\n")
    wire.protocol.eof_received()
    await until(10)
    assert wire.take() == b""
    release.set()
    await until(11)
    assert wire.take().endswith(b"\r\n\r\nwanted")


@on_virtual_clock
async def test_a_half_closed_client_of_a_quiet_event_stream_is_sent_a_comment_each_second():
    release = asyncio.Event()
    wire = Wire(make_app(release))
    wire.feed(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
    await until(0.25)
    assert wire.take().endswith(b'\r\n\r\nf\r\ndata: {"n":0}\n\n\r\n')
    wire.protocol.eof_received()
    comment = b"3\r\n:\n\n\r\n"  # an SSE comment: every client skips it
    assert await written_at(wire, 0.25 + PROBE_DELAY) == comment
    assert await written_at(wire, 0.25 + PROBE_DELAY + 1) == comment
    release.set()
    await until(4)
    assert wire.take() == b'f\r\ndata: {"n":1}\n\n\r\ne\r\ndata: [DONE]\n\n\r\n0\r\n\r\n'
