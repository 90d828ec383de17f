"""Embedding, graceful shutdown and clients that leave, over real sockets."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time

import pytest

from helios_raw import EndpointBuilder, Server, ServerBuilder, get
from helios_raw.cancel import ClientGone
from helios_raw.http.sse import sse_response
from tests.support.rawhttp import Client, ConnectionClosed, build_server, running


def _wait_until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition never became true"
        time.sleep(0.01)


# -- embedding ------------------------------------------------------------------------------------

async def _get(host: str, port: int, target: str) -> bytes:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    data = await reader.read()
    writer.close()
    return data


def test_start_and_stop_inside_a_running_event_loop():
    async def main():
        server = (ServerBuilder().address("127.0.0.1:0")
                  .endpoint(get("/hello", {"hello": "world"}))
                  .endpoints([get("/bye", {"bye": True})])
                  .build())
        host, port = await server.start()
        assert (host, port) == server.address and port != 0
        hello, bye = await asyncio.gather(_get(host, port, "/hello"), _get(host, port, "/bye"))
        await server.stop()
        with pytest.raises(OSError):
            await asyncio.open_connection(host, port)
        return hello, bye

    hello, bye = asyncio.run(main())
    assert hello.startswith(b"HTTP/1.1 200 ") and hello.endswith(b'{"hello":"world"}')
    assert bye.endswith(b'{"bye":true}')


def test_two_servers_in_one_loop_and_the_loop_keeps_running_after_stop():
    async def main():
        first, second = Server(), Server()
        first.http.port = second.http.port = 0
        (_, p1), (h2, p2) = await first.start(), await second.start()
        assert p1 != p2
        await first.stop()
        answer = await _get(h2, p2, "/health")
        await second.stop()
        await asyncio.sleep(0)  # the loop is still usable
        return answer

    assert asyncio.run(main()).endswith(b'{"status":"ok"}')


# -- graceful shutdown ----------------------------------------------------------------------------

def test_graceful_shutdown_lets_the_request_in_flight_finish():
    gate = threading.Event()
    hold = EndpointBuilder.get("/hold").handle(lambda request: {"held": gate.wait(10)}).build()
    server = build_server([hold], shutdown_timeout=10)
    with running(server) as thread:
        busy, idle = Client(thread.port), Client(thread.port)
        idle.request("GET", "/health")
        assert idle.read_response().status == 200
        busy.request("GET", "/hold")
        _wait_until(lambda: any(not c.idle for c in thread.connections()))
        stopping = thread.stop_async()
        assert idle.closed_by_server()  # idle keep-alive connections close at once
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", thread.port), timeout=2).close()
        assert not stopping.done()
        gate.set()
        answer = busy.read_response()
        assert answer.json() == {"held": True} and answer.header("connection") == "close"
        assert busy.closed_by_server()
        stopping.result(10)
        busy.close()
        idle.close()


def test_request_still_running_at_the_deadline_gets_a_503():
    seen = []

    async def hold(request):
        seen.append(request)
        await asyncio.sleep(30)
        return {"never": "sent"}

    endpoint = EndpointBuilder.get("/hold").handle(hold).build()
    with running(build_server([endpoint])) as thread, Client(thread.port) as client:
        client.request("GET", "/hold")
        _wait_until(lambda: any(not c.idle for c in thread.connections()))
        thread.stop_async(0.2).result(10)
        answer = client.read_response()
        assert answer.status == 503 and answer.error()["code"] == "server_shutting_down"
        assert seen[0].cancelled.is_set() and seen[0].cancelled.reason == "server shutting down"


def test_stream_open_at_the_deadline_ends_with_a_terminating_frame_not_a_cut():
    async def forever(request):
        async def produce(events):
            n = 0
            while True:
                events.send({"n": n})
                n += 1
                await events.drain()
                await asyncio.sleep(0.02)

        return sse_response(produce)

    endpoint = EndpointBuilder.get("/events").handle(forever).build()
    with running(build_server([endpoint])) as thread, Client(thread.port) as client:
        client.request("GET", "/events")
        head = client.read_head()
        assert head.status == 200 and head.header("content-type") == "text/event-stream"
        thread.stop_async(0.3).result(10)
        body = client._read_chunked()  # raises unless the chunked body ends properly
        frames = body.split(b"\n\n")
        assert frames[0] == b'data: {"n":0}'
        assert b'"code":"server_shutting_down"' in frames[-3] and frames[-2] == b"data: [DONE]"
        assert client.closed_by_server()


def test_sigterm_style_stop_with_nothing_in_flight_is_immediate():
    with running(build_server()) as thread:
        clients = [Client(thread.port) for _ in range(5)]
        for client in clients:
            client.request("GET", "/health")
            client.read_response()
        thread.stop_async(30).result(5)  # far less than the 30 s allowed: nothing to wait for
        for client in clients:
            assert client.closed_by_server()
            client.close()


# -- clients that leave ---------------------------------------------------------------------------

def test_client_leaving_mid_stream_is_noticed_at_once():
    noticed = threading.Event()

    async def stream(request):
        async def produce(events):
            watcher = asyncio.ensure_future(request.cancelled.wait())
            watcher.add_done_callback(lambda _: noticed.set())
            n = 0
            while True:
                events.send({"n": n})
                n += 1
                await events.drain()
                await asyncio.sleep(0.01)

        return sse_response(produce)

    endpoint = EndpointBuilder.get("/events").handle(stream).build()
    with running(build_server([endpoint])) as thread:
        client = Client(thread.port)
        client.request("GET", "/events")
        assert client.read_head().status == 200
        client.close()
        assert noticed.wait(10)
        _wait_until(lambda: not thread.connections())


def test_client_leaving_while_a_slow_handler_works_sets_cancelled():
    seen = threading.Event()

    def slow(request):  # a sync handler in a worker thread, polling as a model loop would
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if request.cancelled.is_set():
                seen.set()
                return {"stopped": True}
            time.sleep(0.01)
        return {"stopped": False}

    endpoint = EndpointBuilder.get("/slow").handle(slow).build()
    with running(build_server([endpoint])) as thread:
        client = Client(thread.port)
        client.request("GET", "/slow")
        _wait_until(lambda: any(not c.idle for c in thread.connections()))
        client.close()
        assert seen.wait(10)


def test_client_reset_mid_stream_does_not_disturb_others():
    async def stream(request):
        async def produce(events):
            for n in range(10_000):
                events.send({"n": n, "pad": "x" * 500})
                await events.drain()

        return sse_response(produce)

    endpoint = EndpointBuilder.get("/events").handle(stream).build()
    with running(build_server([endpoint])) as thread:
        for _ in range(5):
            sock = socket.create_connection(("127.0.0.1", thread.port))
            sock.sendall(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
            sock.recv(1000)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            sock.close()
        with Client(thread.port) as other:
            other.request("GET", "/health")
            assert other.read_response().status == 200
        _wait_until(lambda: not thread.connections())


def test_a_stream_stops_writing_once_its_client_resets(caplog):
    caplog.set_level(logging.WARNING, logger="asyncio")
    outcomes = []

    async def stream(request):
        async def produce(events):
            try:
                for n in range(10_000):
                    events.send({"n": n, "pad": "x" * 500})
                    await events.drain()  # returns at once while the transport takes more
                outcomes.append("all written")
            except ClientGone:
                outcomes.append("client gone")
                raise

        return sse_response(produce)

    endpoint = EndpointBuilder.get("/events").handle(stream).build()
    with running(build_server([endpoint])) as thread:
        sock = socket.create_connection(("127.0.0.1", thread.port))
        sock.sendall(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.recv(1000)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()  # RST
        _wait_until(lambda: outcomes)
    assert outcomes == ["client gone"]
    assert not [r for r in caplog.records if "socket.send() raised exception" in r.getMessage()]


def test_slow_sync_handler_does_not_stall_other_connections():
    gate = threading.Event()
    endpoint = EndpointBuilder.get("/block").handle(lambda request: {"done": gate.wait(10)}).build()
    with running(build_server([endpoint])) as thread:
        blocked = Client(thread.port)
        blocked.request("GET", "/block")
        with Client(thread.port) as other:
            for _ in range(10):
                other.request("GET", "/health")
                assert other.read_response().status == 200
        assert not gate.is_set()
        gate.set()
        assert blocked.read_response().json() == {"done": True}
        blocked.close()


def test_stream_that_fails_midway_ends_properly_with_an_error_event():
    async def broken(request):
        async def produce(events):
            events.send({"n": 0})
            raise RuntimeError("secret failure")

        return sse_response(produce)

    endpoint = EndpointBuilder.get("/broken").handle(broken).build()
    with running(build_server([endpoint])) as thread, Client(thread.port) as client:
        client.request("GET", "/broken")
        answer = client.read_response()
        assert answer.status == 200 and answer.chunked
        assert answer.body.startswith(b'data: {"n":0}\n\n') and b"secret" not in answer.body
        assert answer.body.endswith(b"data: [DONE]\n\n")
        with pytest.raises((ConnectionClosed, ConnectionResetError)):
            client.request("GET", "/health")
            client.read_response()


def test_shutdown_drops_a_connection_whose_head_is_still_arriving():
    with running(build_server(shutdown_timeout=30)) as thread, Client(thread.port) as client:
        client.send(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # no blank line yet
        _wait_until(lambda: any(not c.idle for c in thread.connections()))
        thread.stop_async().result(5)  # not held for the 30 s allowed to requests in hand
        assert client.closed_by_server()


def test_start_on_a_taken_port_raises_and_leaves_nothing_running():
    async def main():
        first = Server()
        first.http.port = 0
        _, port = await first.start()
        second = ServerBuilder().address(f"127.0.0.1:{port}").build()
        with pytest.raises(OSError):
            await second.start()
        await first.stop()

    asyncio.run(main())
