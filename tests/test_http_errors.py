"""Every error status over real sockets, each with its OpenAI error object, plus the raw-socket
hostile inputs a stranger would try; after each, the server keeps serving other connections."""

from __future__ import annotations

import logging
import socket
import threading

import pytest

from helios_raw import EndpointBuilder, Limits, get
from helios_raw.backends.base import Backend
from tests.support.rawhttp import Client, build_server, running


class UnreachableBackend(Backend):
    """A backend the error paths under test must never reach."""

    model_id = "test-model"

    async def complete(self, request, cancel):
        raise AssertionError("the request should have been refused before the backend")

    async def open_stream(self, request, cancel):
        raise AssertionError("the request should have been refused before the backend")


def fail_sync(request):
    raise RuntimeError("secret internals: /srv/keys.txt")


async def fail_async(request):
    raise RuntimeError("secret internals: /srv/keys.txt")


@pytest.fixture(scope="module")
def server():
    endpoints = [
        get("/static", {"ok": 1}),
        EndpointBuilder.post("/static").json({"posted": 1}).build(),
        EndpointBuilder.get("/fail-sync").handle(fail_sync).build(),
        EndpointBuilder.get("/fail-async").handle(fail_async).build(),
        EndpointBuilder.get("/bad-return").handle(lambda request: object()).build(),
        EndpointBuilder.post("/echo").handle(lambda request: request.body).build(),
    ]
    limits = Limits(max_body_bytes=100_000)
    with running(build_server(endpoints, limits=limits, backend=UnreachableBackend())) as thread:
        yield thread


@pytest.fixture
def bystander(server):
    """A keep-alive connection opened before the test and checked after it: one bad client must
    not disturb another connection."""
    client = Client(server.port)
    client.request("GET", "/health")
    assert client.read_response().status == 200
    yield client
    client.request("GET", "/static")
    assert client.read_response().json() == {"ok": 1}
    client.close()


def exchange(port: int, data: bytes, half_close: bool = False, wait_for_close: bool = True):
    """Send raw bytes on a fresh connection; the one answer, and whether the server then closed
    (only waited for when ``wait_for_close``)."""
    with Client(port) as client:
        client.send(data)
        if half_close:
            client.sock.shutdown(socket.SHUT_WR)
        answer = client.read_response()
        return answer, wait_for_close and client.closed_by_server()


def test_malformed_request_is_400_then_close(server, bystander):
    answer, closed = exchange(server.port, b"GET / HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n")
    assert answer.status == 400 and closed
    assert answer.error()["code"] == "bad_request"
    assert answer.header("connection") == "close"


def test_404_for_an_unknown_path(server, bystander):
    answer, _ = exchange(server.port, b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n", wait_for_close=False)
    assert answer.status == 404
    error = answer.error()
    assert error["code"] == "unknown_url" and error["type"] == "invalid_request_error"


def test_404_keeps_the_connection_alive(server):
    with Client(server.port) as client:
        client.request("GET", "/nowhere")
        assert client.read_response().status == 404
        client.request("GET", "/static")
        assert client.read_response().status == 200


def test_405_lists_allowed_methods(server, bystander):
    answer, _ = exchange(server.port, b"DELETE /static HTTP/1.1\r\nHost: x\r\n\r\n", wait_for_close=False)
    assert answer.status == 405
    assert answer.error()["code"] == "method_not_allowed"
    assert answer.header("allow") == "GET, HEAD, OPTIONS, POST"


def test_unknown_method_is_405(server, bystander):
    answer, _ = exchange(server.port, b"BREW /static HTTP/1.1\r\nHost: x\r\n\r\n", wait_for_close=False)
    assert answer.status == 405 and "GET" in answer.header("allow")


def test_415_when_a_json_body_is_required(server, bystander):
    with Client(server.port) as client:
        client.request("POST", "/v1/chat/completions", [("Content-Type", "text/plain")], b"hello")
        answer = client.read_response()
        assert answer.status == 415
        assert answer.error()["code"] == "unsupported_media_type"


@pytest.mark.parametrize("path", ["/fail-sync", "/fail-async", "/bad-return"])
def test_raising_handler_is_500_without_internals_and_logged(server, bystander, path, caplog):
    caplog.set_level(logging.ERROR, logger="helios_raw.error")
    with Client(server.port) as client:
        client.request("GET", path)
        answer = client.read_response()
        assert answer.status == 500
        error = answer.error()
        assert error["type"] == "server_error"
        assert b"secret" not in answer.body and b"Traceback" not in answer.body and b"object" not in answer.body
        client.request("GET", "/static")  # the connection survives the handler's failure
        assert client.read_response().status == 200
    logged = [r for r in caplog.records if r.exc_info]
    assert logged and path in logged[-1].getMessage()


def test_413_from_content_length_before_the_body_is_read(server, bystander):
    with Client(server.port) as client:
        client.request("POST", "/echo", [("Content-Length", "200000")])
        answer = client.read_response()  # answered without sending a byte of body
        assert answer.status == 413 and answer.error()["code"] == "request_too_large"
        assert answer.header("connection") == "close"


def test_413_with_lingering_close_lets_a_client_still_sending_read_the_answer(server, bystander):
    with Client(server.port) as client:
        body = b"x" * 2_000_000
        client.request("POST", "/echo", [("Content-Length", str(len(body)))])
        sender = threading.Thread(target=_send_ignoring_errors, args=(client.sock, body), daemon=True)
        sender.start()
        answer = client.read_response()
        assert answer.status == 413 and answer.error()["code"] == "request_too_large"
        sender.join(10)


def _send_ignoring_errors(sock: socket.socket, data: bytes) -> None:
    try:
        sock.sendall(data)
    except OSError:
        pass


def test_413_for_a_chunked_body_growing_past_the_limit(server, bystander):
    with Client(server.port) as client:
        client.request("POST", "/echo", [("Transfer-Encoding", "chunked")])
        client.send(b"%x\r\n%s\r\n" % (60_000, b"y" * 60_000) * 2 + b"0\r\n\r\n")
        assert client.read_response().status == 413


def test_431_for_a_complete_100kb_head_in_one_send(server, bystander):
    answer, closed = exchange(server.port, b"GET /static HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n")
    assert answer.status == 431 and closed
    assert answer.error()["code"] == "request_header_fields_too_large"


def test_431_for_5000_headers(server, bystander):
    head = b"GET /static HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(5000)) + b"\r\n"
    answer, closed = exchange(server.port, head)
    assert answer.status == 431 and closed
    assert "header fields" in answer.error()["message"]


def test_414_for_a_long_target(server, bystander):
    answer, closed = exchange(server.port, b"GET /" + b"p" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.status == 414 and closed
    assert answer.error()["code"] == "uri_too_long"


def test_error_answering_a_head_request_has_no_body(server, bystander):
    with Client(server.port) as client:
        client.send(b"HEAD /static HTTP/1.1\r\nHost: x\r\n" + b"X: y\r\n" * 300 + b"\r\n")
        answer = client.read_response("HEAD")
        assert answer.status == 431 and int(answer.header("content-length")) > 0
        assert client.read_until_close() == b""  # the length a GET would get, and no body


def test_content_length_and_transfer_encoding_is_400_and_the_request_behind_is_never_answered(server, bystander):
    smuggled = (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 44\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"0\r\n\r\nGET /static HTTP/1.1\r\nHost: x\r\n\r\n")
    with Client(server.port) as client:
        client.send(smuggled)
        answer = client.read_response()
        assert answer.status == 400 and "Content-Length and Transfer-Encoding" in answer.error()["message"]
        assert client.read_until_close() == b""  # nothing more, ever


def test_unsupported_transfer_coding_is_501(server, bystander):
    answer, closed = exchange(server.port, b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n")
    assert answer.status == 501 and closed
    assert answer.error()["code"] == "unsupported_transfer_encoding"


@pytest.mark.parametrize("request_line", [
    b"GET /static HTTP/2.0", b"GET /static HTTP/1.2", b"GET /static HTTP/9.9",
])
def test_other_versions_are_505(server, bystander, request_line):
    answer, closed = exchange(server.port, request_line + b"\r\nHost: x\r\n\r\n")
    assert answer.status == 505 and closed


@pytest.mark.parametrize("raw", [
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    b"GET /static HTTP/2\r\nHost: x\r\n\r\n",
    b"GET /static HTTPS/1.1\r\nHost: x\r\n\r\n",
    b"GET /static\r\n\r\n",
])
def test_http2_preface_and_odd_versions_are_never_200(server, bystander, raw):
    answer, closed = exchange(server.port, raw)
    assert answer.status in (400, 505) and closed
    answer.error()


def test_control_byte_in_a_header_value_is_400(server, bystander):
    answer, closed = exchange(server.port, b"GET /static HTTP/1.1\r\nHost: x\r\nX-Evil: a\x01b\r\n\r\n")
    assert answer.status == 400 and closed
    assert "control character" in answer.error()["message"]


@pytest.mark.parametrize("body", [b"zz\r\nabc\r\n0\r\n\r\n", b"3\r\nabcdef\r\n0\r\n\r\n", b"3\r\nabc"
                                  b"XX0\r\n\r\n"])
def test_malformed_chunked_body_is_400(server, bystander, body):
    answer, closed = exchange(server.port, b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
    assert answer.status == 400 and closed


# -- what a stranger with a raw socket might send -------------------------------------------------

@pytest.mark.parametrize("raw, status", [
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(64)) + b"\r\n\r\n", 400),  # a TLS hello
    (b"\xff\xfe\xfd garbage garbage\r\n\r\n", 400),
    (b"GET /sta\x00tic HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999999999999999999999\r\n\r\n", 400),
    (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n", 413),
    (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\nhello", 400),
    (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\nhello", 400),
    (b"GET /static HTTP/1.1\r\nHost: x\r\nThis header has no colon\r\n\r\n", 400),
    (b"GET /static HTTP/1.1\r\nHost: x\r\n: empty name\r\n\r\n", 400),
    (b"G" * 20_000 + b" /static HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    (b"GET /static HTTP/1.1\r\nHost: x\r\n" + b"X: y\r\n" * 300 + b"\r\n", 431),
], ids=["tls-hello", "binary-garbage", "nul-in-target", "absurd-length", "huge-length", "negative-length",
        "plus-length", "no-colon", "empty-name", "long-method", "300-headers"])
def test_hostile_bytes_get_an_error_object_and_a_close(server, bystander, raw, status):
    answer, closed = exchange(server.port, raw)
    assert answer.status == status and closed
    answer.error()


@pytest.mark.parametrize("raw", [
    b"GET /static HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n",  # obs-fold
    b"GET /static HTTP/1.1\nHost: x\n\n",                              # bare LF line endings
    b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length:\r\n 2\r\n\r\nhi",
    b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2 \r\nhi\r\n0\r\n\r\n",
], ids=["obs-fold", "bare-lf", "folded-content-length", "chunk-size-space"])
def test_framing_a_proxy_might_read_differently_is_400_and_close(server, bystander, raw):
    answer, closed = exchange(server.port, raw)
    assert answer.status == 400 and closed
    assert answer.error()["message"].startswith("Malformed HTTP request: ")


@pytest.mark.parametrize("raw", [
    b"GET /static HTTP/1.1\r\nHost: x\r\nX-Spaces:    v   \r\n\r\n",
    b"GET http://x/static HTTP/1.1\r\nHost: x\r\n\r\n".replace(b"http://x", b""),
])
def test_tolerated_oddities_are_served(server, bystander, raw):
    answer, closed = exchange(server.port, raw, half_close=True)
    assert answer.status == 200 and answer.json() == {"ok": 1}


def test_connection_that_sends_nothing_and_leaves_is_harmless(server, bystander):
    for _ in range(20):
        socket.create_connection(("127.0.0.1", server.port)).close()


def test_connection_reset_mid_head_is_harmless(server, bystander):
    for _ in range(10):
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Le")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()  # RST


def test_garbage_pipelined_after_a_good_request_answers_the_good_one_first(server, bystander):
    with Client(server.port) as client:
        client.send(b"GET /static HTTP/1.1\r\nHost: x\r\n\r\n\x00\x01garbage\r\n\r\n")
        assert client.read_response().json() == {"ok": 1}
        answer = client.read_response()
        assert answer.status == 400
        assert client.closed_by_server()
