"""Request targets over real sockets: routing by the path's segments, each decoded on its own, and
the paths a proxy or client would have read as another path refused."""

from __future__ import annotations

import pytest

from helios_raw import EndpointBuilder, get
from tests.support.rawhttp import Client, build_server, running


@pytest.fixture(scope="module")
def server():
    endpoints = [
        get("/api/version", {"version": 1}),
        EndpointBuilder.get("/files/{name}").handle(lambda request: {"name": request.params["name"]}).build(),
    ]
    with running(build_server(endpoints)) as thread:
        yield thread


def answer_to(port: int, target: str):
    with Client(port) as client:
        client.request("GET", target)
        return client.read_response()


@pytest.mark.parametrize("target, name", [
    ("/files/a%2Fb", "a/b"),           # an encoded slash stays inside its segment
    ("/files/a%2fb%2F", "a/b/"),
    ("/files/caf%C3%A9", "café"),
    ("/files/..hidden", "..hidden"),   # dots inside a name are just characters
    ("/files/a.b", "a.b"),
])
def test_each_segment_is_decoded_after_the_path_is_split(server, target, name):
    answer = answer_to(server.port, target)
    assert answer.status == 200 and answer.json() == {"name": name}


def test_an_encoded_slash_does_not_join_two_segments(server):
    assert answer_to(server.port, "/api/version").json() == {"version": 1}
    answer = answer_to(server.port, "/api%2Fversion")
    assert answer.status == 404 and answer.error()["code"] == "unknown_url"


@pytest.mark.parametrize("target", [
    "/files/..", "/files/.", "/files/%2e%2e", "/files/%2E", "/files/.%2e", "/api/../api/version",
    "/api/./version", "/files/../files/x", "/files/..?q=1",
])
def test_dot_segments_are_refused(server, target):
    with Client(server.port) as client:
        client.request("GET", target)
        answer = client.read_response()
        assert answer.status == 400 and answer.header("connection") == "close"
        assert answer.error()["message"] == "The request path must not contain '.' or '..' segments."
        assert client.closed_by_server()
