"""Limits over real sockets, with small configured values: keep-alive idle, requests per
connection, maximum connections, and the bounds on unsent output when a client reads slowly or not
at all. The other timers are tested exactly, on a virtual clock, in test_http_timeouts.py."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest

from helios_raw import EndpointBuilder, Limits, StreamingResponse, get
from helios_raw.cancel import ClientGone
from tests.conftest import error_of
from tests.support.rawhttp import Client, ConnectionClosed, build_server, running

PIECE = 64 * 1024
#: A slow reader's fixed receive buffer: the kernel then holds at most a few MiB for it (the
#: server's send buffer), and the rest must wait in, or be held back from, the server.
SMALL = 64 * 1024


def _pieces(count: int):
    """``count`` distinct 64 KiB pieces, so a reordered or dropped piece is noticed."""
    return [(b"%08d" % i) * (PIECE // 8) for i in range(count)]


def test_idle_connection_that_never_sends_is_closed_after_keepalive_timeout():
    with running(build_server(limits=Limits(keepalive_timeout=0.3))) as server, Client(server.port) as client:
        assert client.closed_by_server()


def test_requests_per_connection():
    with running(build_server(limits=Limits(max_requests_per_connection=3))) as server, Client(server.port) as client:
        client.send(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n" * 5)
        answers = [client.read_response() for _ in range(3)]
        assert [a.header("connection") for a in answers] == [None, None, "close"]
        assert client.closed_by_server()


def test_idle_keepalive_connections_make_room_for_real_requests():
    with running(build_server(limits=Limits(max_connections=2, keepalive_timeout=30))) as server:
        first, second = Client(server.port), Client(server.port)
        for client in (first, second):
            client.request("GET", "/health")
            assert client.read_response().status == 200
        with Client(server.port) as third:
            third.request("GET", "/health")
            assert third.read_response().status == 200
        assert first.closed_by_server()  # the oldest idle connection gave up its place
        second.request("GET", "/health")
        assert second.read_response().status == 200
        first.close()
        second.close()


def test_connections_that_send_nothing_do_not_starve_real_requests():
    with running(build_server(limits=Limits(max_connections=3, keepalive_timeout=30))) as server:
        silent = [Client(server.port) for _ in range(10)]
        with Client(server.port) as client:
            client.request("GET", "/health")
            assert client.read_response().status == 200
        for sock in silent:
            sock.close()


SLOW_HEAD = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: "
SLOW_BODY = b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nx"


@pytest.mark.parametrize("start", [SLOW_HEAD, SLOW_BODY], ids=["head", "body"])
def test_requests_trickling_in_at_the_cap_make_room_for_a_real_request(start):
    with running(build_server(limits=Limits(max_connections=3, keepalive_timeout=30))) as server:
        slow = [Client(server.port) for _ in range(3)]
        for client in slow:
            client.send(start)
        _wait_until(lambda: sum(c.phase.value in ("head", "body") for c in server.connections()) == 3)
        with Client(server.port) as client:
            client.request("GET", "/health")
            assert client.read_response().status == 200
        # The slowest of them gave up its place, with a 408; the others still wait.
        registered = {c.client for c in server.connections()}
        (evicted,) = [c for c in slow if c.sock.getsockname() not in registered]
        answer = evicted.read_response()
        assert answer.status == 408 and answer.error()["code"] == "request_timeout"
        assert "connection limit" in answer.error()["message"] and evicted.closed_by_server()
        for client in slow:
            client.close()


def test_at_the_cap_a_body_trickling_in_goes_before_a_large_upload_arriving_fast():
    with running(build_server(limits=Limits(max_connections=2))) as server:
        upload, trickle = Client(server.port), Client(server.port)
        upload.send(b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 16000000\r\n\r\n" + b"u" * 8_000_000)
        _wait_until(lambda: any(c.phase.value == "body" for c in server.connections()))
        trickle.send(SLOW_BODY)
        _wait_until(lambda: sum(c.phase.value == "body" for c in server.connections()) == 2)
        time.sleep(0.05)  # the trickle's rate is then a few hundred bytes a second at most
        with Client(server.port) as client:
            client.request("GET", "/health")
            assert client.read_response().status == 200
        assert trickle.read_response().status == 408
        registered = {c.client for c in server.connections()}
        assert upload.sock.getsockname() in registered and trickle.sock.getsockname() not in registered
        upload.close()
        trickle.close()


def test_busy_server_refuses_a_new_connection_with_503():
    gate = threading.Event()
    endpoint = EndpointBuilder.get("/hold").handle(lambda request: {"held": gate.wait(10)}).build()
    with running(build_server([endpoint], limits=Limits(max_connections=2))) as server:
        busy = [Client(server.port), Client(server.port)]
        for client in busy:
            client.request("GET", "/hold")
        _wait_until(lambda: sum(not c.idle for c in server.connections()) == 2)
        with Client(server.port) as refused:
            answer = refused.read_response()
            assert error_of(answer, 503)["code"] == "too_many_connections"
            assert answer.header("retry-after") == "1"
        gate.set()
        for client in busy:
            assert client.read_response().json() == {"held": True}
            client.close()


def _wait_until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition never became true"
        time.sleep(0.01)


# -- slow readers ---------------------------------------------------------------------------------

class Producer:
    """A streaming endpoint writing ``count`` pieces; records how far it got and how it ended."""

    def __init__(self, count: int, drain: bool = True) -> None:
        self.pieces = _pieces(count)
        self.drain = drain
        self.written = 0
        self.outcome = None
        self.done = threading.Event()

    def endpoint(self, path: str = "/big"):
        async def handler(request):
            return StreamingResponse(self.produce, content_type="application/octet-stream")

        return EndpointBuilder.get(path).handle(handler).build()

    async def produce(self, writer) -> None:
        try:
            for piece in self.pieces:
                if writer.closed:
                    self.outcome = "closed"
                    return
                writer.write(piece)
                self.written += 1
                if self.drain:
                    await writer.drain()
                else:
                    await asyncio.sleep(0)
            self.outcome = "complete"
        except ClientGone:
            self.outcome = "client gone"
        except asyncio.CancelledError:
            self.outcome = "cancelled"
            raise
        finally:
            self.done.set()


def test_slow_reader_bounds_the_servers_buffer_and_loses_nothing():
    producer = Producer(count=200)  # 12.5 MiB
    limits = Limits(write_buffer_high=256 * 1024, write_buffer_low=64 * 1024)
    with running(build_server([producer.endpoint()], limits=limits)) as server, Client(server.port, receive_buffer=SMALL) as client:
        client.request("GET", "/big")
        _wait_until(lambda: any(c.flow.paused for c in server.connections()))
        (connection,) = server.connections()
        assert connection.transport.get_write_buffer_size() <= limits.write_buffer_high + PIECE + 64
        assert producer.written < len(producer.pieces)  # waiting for the reader, not racing ahead
        assert client.read_response().body == b"".join(producer.pieces)
        assert producer.outcome == "complete"


def test_reader_that_never_reads_is_dropped_after_write_timeout(caplog):
    caplog.set_level(logging.WARNING, logger="helios_raw.error")
    producer = Producer(count=400)
    limits = Limits(write_timeout=0.5)
    with running(build_server([producer.endpoint()], limits=limits)) as server, Client(server.port, receive_buffer=SMALL) as client:
        client.request("GET", "/big")
        assert producer.done.wait(10)
        assert producer.outcome in ("client gone", "closed", "cancelled")
        with pytest.raises((ConnectionClosed, ConnectionResetError)):
            client.read_response()
    assert any("read nothing" in r.getMessage() for r in caplog.records)


def test_pipelined_answers_never_read_are_dropped_after_write_timeout(caplog):
    """Whole answers handed to the transport leave no writer waiting: the connection goes idle,
    then closes with them unsent, and is dropped once the client has read nothing for
    write_timeout."""
    caplog.set_level(logging.WARNING, logger="helios_raw.error")
    large = get("/large", {"data": "x" * (1024 * 1024)})
    limits = Limits(write_timeout=0.5, keepalive_timeout=0.2)
    with running(build_server([large], limits=limits)) as server, Client(server.port, receive_buffer=SMALL) as client:
        client.send(b"GET /large HTTP/1.1\r\nHost: x\r\n\r\n" * 4)
        _wait_until(lambda: any(c.closed for c in server.connections()))  # closed, its answers unsent
        _wait_until(lambda: not server.connections())
    assert any("read nothing" in r.getMessage() for r in caplog.records)


def test_producer_ignoring_backpressure_hits_the_unsent_output_cap(caplog):
    caplog.set_level(logging.WARNING, logger="helios_raw.error")
    producer = Producer(count=1000, drain=False)  # 62.5 MiB, written without waiting
    limits = Limits(max_unsent_bytes=1024 * 1024)
    with running(build_server([producer.endpoint()], limits=limits)) as server, Client(server.port, receive_buffer=SMALL) as client:
        client.request("GET", "/big")
        assert producer.done.wait(10)
        assert producer.outcome in ("closed", "cancelled") and producer.written < len(producer.pieces)
        with pytest.raises((ConnectionClosed, ConnectionResetError)):
            client.read_response()
    assert any("unread" in r.getMessage() for r in caplog.records)


def test_worker_thread_writer_blocks_for_a_slow_reader_and_drops_nothing():
    pieces = _pieces(120)  # 7.5 MiB
    handed = []

    async def handler(request):
        async def produce(writer):
            def work():
                for piece in pieces:
                    writer.write_threadsafe(piece)
                    handed.append(len(piece))

            await asyncio.to_thread(work)

        return StreamingResponse(produce, content_type="application/octet-stream")

    endpoint = EndpointBuilder.get("/threaded").handle(handler).build()
    limits = Limits(write_buffer_high=256 * 1024, write_buffer_low=64 * 1024)
    with running(build_server([endpoint], limits=limits)) as server, \
            Client(server.port, receive_buffer=SMALL) as client:
        client.request("GET", "/threaded")
        _wait_until(lambda: any(c.flow.paused for c in server.connections()))
        (connection,) = server.connections()
        held = connection.transport.get_write_buffer_size() + connection.cycle.writer._pending_bytes
        assert held <= 2 * limits.write_buffer_high + PIECE
        assert len(handed) < len(pieces)  # the worker waits for the reader
        assert client.read_response().body == b"".join(pieces)
        assert len(handed) == len(pieces)


def test_static_endpoint_stays_fast_while_a_neighbour_reads_slowly():
    producer = Producer(count=400)
    with running(build_server([producer.endpoint(), get("/ping", {"pong": True})])) as server:
        with Client(server.port, receive_buffer=SMALL) as slow, Client(server.port) as other:
            slow.request("GET", "/big")
            _wait_until(lambda: any(c.flow.paused for c in server.connections()))
            for _ in range(20):
                other.request("GET", "/ping")
                assert other.read_response().json() == {"pong": True}
