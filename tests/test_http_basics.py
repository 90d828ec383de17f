"""HTTP/1.1 behaviour over real sockets: keep-alive, pipelining, HTTP/1.0, 100-continue, chunked
uploads, HEAD, Connection: close, and the headers every response carries."""

from __future__ import annotations

import re
import socket
import time

import pytest

from helios_raw import EndpointBuilder, Response, get
from tests.support.rawhttp import Client, build_server, running


async def echo(request):
    return Response(request.raw_body, content_type="application/octet-stream")


async def sequence(request):
    return {"i": int(request.query["i"])}


@pytest.fixture(scope="module")
def server():
    endpoints = [
        get("/static", {"static": True}),
        EndpointBuilder.post("/echo").handle(echo).build(),
        EndpointBuilder.get("/seq").handle(sequence).build(),
    ]
    with running(build_server(endpoints)) as thread:
        yield thread


def test_keep_alive_connection_serves_many_requests(server):
    with Client(server.port) as client:
        for _ in range(5):
            client.request("GET", "/health")
            answer = client.read_response()
            assert answer.status == 200 and answer.json() == {"status": "ok"}
            assert answer.header("connection") is None
        local = client.sock.getsockname()
        assert any(c.client == local for c in server.connections())


def test_pipelined_requests_are_answered_in_order(server):
    with Client(server.port) as client:
        client.send(b"".join(b"GET /seq?i=%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(30)))
        assert [client.read_response().json()["i"] for _ in range(30)] == list(range(30))


def test_many_tiny_pipelined_requests_in_one_send(server):
    with Client(server.port) as client:
        client.send(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n" * 900)  # under the 1000 requests a connection may carry
        for _ in range(900):
            assert client.read_response().status == 200
        client.request("GET", "/static")
        assert client.read_response().json() == {"static": True}


def test_http_1_0_request_is_answered_and_closed(server):
    with Client(server.port) as client:
        client.send(b"GET /static HTTP/1.0\r\n\r\n")
        answer = client.read_response()
        assert answer.status == 200 and answer.json() == {"static": True}
        assert answer.header("connection").lower() == "close"
        assert client.closed_by_server()


def test_http_1_0_post_with_body(server):
    with Client(server.port) as client:
        client.send(b"POST /echo HTTP/1.0\r\nContent-Length: 4\r\n\r\nping")
        assert client.read_response().body == b"ping"


def test_expect_100_continue(server):
    with Client(server.port) as client:
        client.request("POST", "/echo", [("Expect", "100-continue"), ("Content-Length", "5")])
        interim = client.read_head()
        assert (interim.status, interim.reason) == (100, "Continue")
        client.send(b"hello")
        answer = client.read_response()
        assert answer.status == 200 and answer.body == b"hello"


def test_chunked_upload(server):
    with Client(server.port) as client:
        client.request("POST", "/echo", [("Transfer-Encoding", "chunked")])
        for piece in (b"4\r\nWiki\r\n", b"5\r\npedia\r\n", b"E\r\n in\r\n\r\nchunks.\r\n", b"0\r\n\r\n"):
            client.send(piece)
        assert client.read_response().body == b"Wikipedia in\r\n\r\nchunks."


def test_large_body_arrives_intact(server):
    body = bytes(range(256)) * 20_000  # 5 MB
    with Client(server.port) as client:
        client.request("POST", "/echo", body=body)
        assert client.read_response().body == body


def test_head_has_get_headers_and_no_body_and_keeps_the_connection_usable(server):
    with Client(server.port) as client:
        client.request("HEAD", "/static")
        head = client.read_response("HEAD")
        client.request("GET", "/static")
        full = client.read_response()
        assert head.status == full.status == 200
        assert head.header("content-length") == full.header("content-length") == str(len(full.body))
        assert full.json() == {"static": True}


def test_connection_close_is_honoured(server):
    with Client(server.port) as client:
        client.request("GET", "/health", [("Connection", "close")])
        answer = client.read_response()
        assert answer.status == 200 and answer.header("connection").lower() == "close"
        assert client.closed_by_server()


def test_half_closed_client_still_gets_its_answer(server):
    with Client(server.port) as client:
        client.request("POST", "/echo", body=b"half")
        client.sock.shutdown(socket.SHUT_WR)
        assert client.read_response().body == b"half"
        assert client.closed_by_server()


def test_half_closed_client_gets_every_pipelined_answer(server):
    with Client(server.port) as client:
        client.send(b"".join(b"GET /seq?i=%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(5)))
        client.sock.shutdown(socket.SHUT_WR)
        assert [client.read_response().json()["i"] for _ in range(5)] == list(range(5))
        assert client.closed_by_server()


def test_every_response_has_date_and_server_headers(server):
    with Client(server.port) as client:
        for target in ("/health", "/static", "/missing"):
            client.request("GET", target)
            answer = client.read_response()
            assert answer.header("server") == "helios_raw"
            assert re.fullmatch(r"\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT", answer.header("date"))


MINTED = re.compile(r"req_[0-9a-f]{32}")


def test_every_response_has_a_request_id_of_its_own_and_its_processing_time(server):
    with Client(server.port) as client:
        ids = []
        for target in ("/health", "/static", "/missing", "/static"):
            client.request("GET", target)
            answer = client.read_response()
            ids.append(answer.header("x-request-id"))
            assert MINTED.fullmatch(ids[-1]) and answer.header("openai-processing-ms").isdigit()
        assert len(set(ids)) == len(ids)


@pytest.mark.parametrize("given, echoed", [
    ("abc-123", True), ("req_" + "f" * 32, True), ("x" * 128, True), ("!~/.:_", True),
    ("x" * 129, False), ("two words", False), ("caf\xe9", False),
])
def test_a_sane_request_id_from_the_client_is_echoed_and_any_other_replaced(server, given, echoed):
    with Client(server.port) as client:
        client.request("GET", "/static", [("X-Request-Id", given)])
        answer = client.read_response()
        assert answer.status == 200
        assert answer.header("x-request-id") == given if echoed else MINTED.fullmatch(answer.header("x-request-id"))


def test_a_request_refused_before_it_was_parsed_still_has_a_request_id(server):
    with Client(server.port) as client:
        client.send(b"\x00garbage\r\n\r\n")
        answer = client.read_response()
        assert answer.status == 400 and MINTED.fullmatch(answer.header("x-request-id"))
        assert answer.header("openai-processing-ms") is None


def test_query_and_trailing_slash_reach_the_route(server):
    with Client(server.port) as client:
        client.request("GET", "/seq/?i=7&unused=")
        assert client.read_response().json() == {"i": 7}


def test_one_access_log_line_per_request(server, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="helios_raw.access")
    with Client(server.port) as client:
        client.request("GET", "/static?x=1")
        first = client.read_response()
        client.request("GET", "/missing")
        second = client.read_response()
        local = "%s:%d" % client.sock.getsockname()

    def lines():  # this client's: another test's last line may be logged as this one starts
        return [r.getMessage() for r in caplog.records if r.name == "helios_raw.access"
                and r.getMessage().startswith(local + " ")]

    deadline = time.monotonic() + 10  # the server logs just after writing: wait for its thread
    while len(lines()) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert len(lines()) == 2
    first_id, second_id = first.header("x-request-id"), second.header("x-request-id")
    assert re.fullmatch(re.escape(f'{local} - "GET /static?x=1 HTTP/1.1" 200 {len(first.body)} ')
                        + r"\d+\.\dms " + first_id, lines()[0])
    assert lines()[1].startswith(f'{local} - "GET /missing HTTP/1.1" 404 ') and lines()[1].endswith(" " + second_id)
