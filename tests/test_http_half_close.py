"""A client that half-closes (shutdown(SHUT_WR)) after its request still reads its answer, as HTTP
allows: its request is answered, not cancelled. One that closes altogether is noticed by the reset
its socket answers our next write with (an interim 102 before the response has begun)."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from helios_raw import EndpointBuilder
from tests.conftest import chat_body
from tests.support.rawhttp import Client, build_server, running


class Hold:
    """An endpoint answering once released, with whether its request was cancelled meanwhile."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.requests = []

    def handle(self, request) -> dict:
        self.requests.append(request)
        assert self.release.wait(10)
        return {"cancelled": request.cancelled.is_set()}


@pytest.fixture
def hold():
    return Hold()


@pytest.fixture
def server(hold):
    with running(build_server([EndpointBuilder.get("/hold").handle(hold.handle).build()])) as thread:
        yield thread


def _wait_until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition never became true"
        time.sleep(0.01)


def half_close_after(client: Client, server, head: bytes) -> None:
    """Send ``head``, then the client's EOF once the server holds the request; wait until the
    server has seen the EOF."""
    client.send(head)
    _wait_until(lambda: any(not c.idle for c in server.connections()))
    client.sock.shutdown(socket.SHUT_WR)
    _wait_until(lambda: any(c.half_closed for c in server.connections()))


@pytest.mark.parametrize("head", [
    b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /hold HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    b"GET /hold HTTP/1.0\r\n\r\n",
], ids=["http-1.1", "upgrade-declined", "http-1.0"])
def test_half_closed_client_gets_its_answer_and_its_request_is_not_cancelled(server, hold, head):
    with Client(server.port) as client:
        half_close_after(client, server, head)
        hold.release.set()
        answer = client.read_response(allow_informational=True)
        assert answer.status == 200 and answer.json() == {"cancelled": False}
        assert client.closed_by_server()


def test_half_closed_client_waiting_long_reads_102_processing_first(server, hold):
    with Client(server.port) as client:
        half_close_after(client, server, b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
        interim = client.read_head()  # about a second after the EOF
        assert (interim.status, interim.reason) == (102, "Processing")
        hold.release.set()
        answer = client.read_response(allow_informational=True)
        assert answer.json() == {"cancelled": False}


def test_client_that_closes_altogether_is_noticed_and_its_request_cancelled(server, hold):
    client = Client(server.port)
    half_close_after(client, server, b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
    assert not hold.requests[0].cancelled.is_set()
    client.close()  # no one reads any more: the probe written to it is answered with a reset
    _wait_until(lambda: not server.connections())
    assert hold.requests[0].cancelled.is_set()
    hold.release.set()


def test_half_closed_chat_request_is_answered_by_the_model(tiny_server):
    body = json.dumps(chat_body(max_tokens=8)).encode()
    with Client(tiny_server.port) as client:
        client.request("POST", "/v1/chat/completions", [("Content-Type", "application/json")], body)
        client.sock.shutdown(socket.SHUT_WR)
        answer = client.read_response("POST", allow_informational=True)
        assert answer.status == 200, answer.body
        assert answer.json()["object"] == "chat.completion"
