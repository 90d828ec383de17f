"""CORS (preflight before the key check, headers on every response) and the optional API key."""

from __future__ import annotations

import pytest

from helios_raw import EndpointBuilder, Limits, get, load_config
from helios_raw.http.sse import sse_response
from tests.support.rawhttp import Client, build_server, running

KEY = "sk-test-0123456789"
AUTH = [("Authorization", f"Bearer {KEY}")]
ORIGIN = [("Origin", "https://app.example")]


async def events(request):
    async def produce(stream):
        stream.send({"n": 1})
        stream.done()

    return sse_response(produce)


def _endpoints():
    return [get("/data", {"data": 1}), EndpointBuilder.get("/events").handle(events).build()]


@pytest.fixture(scope="module")
def keyed():
    with running(build_server(_endpoints(), api_key=KEY, limits=Limits(max_body_bytes=10))) as thread:
        yield thread


@pytest.fixture(scope="module")
def open_server():
    with running(build_server(_endpoints())) as thread:
        yield thread


def _ask(port, method="GET", target="/data", headers=(), body=b""):
    with Client(port) as client:
        client.request(method, target, list(headers), body)
        return client.read_response(method)


# -- CORS -----------------------------------------------------------------------------------------

def test_preflight_is_answered_before_the_api_key_check(keyed):
    answer = _ask(keyed.port, "OPTIONS", "/v1/chat/completions", ORIGIN + [
        ("Access-Control-Request-Method", "POST"),
        ("Access-Control-Request-Headers", "authorization, content-type")])
    assert answer.status == 204
    assert answer.header("access-control-allow-origin") == "*"
    allowed = {h.strip() for h in answer.header("access-control-allow-headers").split(",")}
    assert {"authorization", "content-type"} <= allowed
    assert "POST" in answer.header("access-control-allow-methods")


def test_preflight_without_requested_headers_still_allows_authorization_and_content_type(open_server):
    answer = _ask(open_server.port, "OPTIONS", "/data", ORIGIN + [("Access-Control-Request-Method", "GET")])
    allowed = {h.strip() for h in answer.header("access-control-allow-headers").split(",")}
    assert {"authorization", "content-type"} <= allowed


def test_preflight_asking_for_header_names_that_are_not_tokens_gets_the_usual_list(open_server):
    """A list that is no header names (bytes beyond ASCII, spaces inside) is not echoed back."""
    for requested in (b"caf\xc3\xa9, content-type", b"x y", b"a,,b"):
        with Client(open_server.port) as client:
            client.send(b"OPTIONS /data HTTP/1.1\r\nHost: x\r\nOrigin: https://app.example\r\n"
                        b"Access-Control-Request-Method: GET\r\nAccess-Control-Request-Headers: "
                        + requested + b"\r\n\r\n")
            answer = client.read_response("OPTIONS")
        assert answer.status == 204
        allowed = {h.strip() for h in answer.header("access-control-allow-headers").split(",")}
        assert {"authorization", "content-type"} <= allowed


@pytest.mark.parametrize("method, target, headers, body, status", [
    ("GET", "/data", AUTH, b"", 200),
    ("GET", "/data", [], b"", 401),
    ("GET", "/missing", AUTH, b"", 404),
    ("DELETE", "/data", AUTH, b"", 405),
    ("POST", "/data", AUTH, b"x" * 100, 413),
    ("GET", "/health", [], b"", 200),
])
def test_cors_header_on_every_response_errors_included(keyed, method, target, headers, body, status):
    answer = _ask(keyed.port, method, target, ORIGIN + headers, body)
    assert answer.status == status
    assert answer.header("access-control-allow-origin") == "*"


def test_cors_header_on_a_malformed_request(keyed):
    with Client(keyed.port) as client:
        client.send(b"GET /data HTTP/1.1\r\nHost: x\r\nBad header\r\n\r\n")
        answer = client.read_response()
        assert answer.status == 400 and answer.header("access-control-allow-origin") == "*"


def test_cors_header_on_a_stream(keyed):
    answer = _ask(keyed.port, "GET", "/events", ORIGIN + AUTH)
    assert answer.chunked and answer.header("access-control-allow-origin") == "*"
    assert answer.body == b'data: {"n":1}\n\ndata: [DONE]\n\n'


def test_configured_origins_are_echoed_and_others_get_none():
    server = build_server(_endpoints(), cors_origins=["https://app.example", "http://localhost:3000/"])
    with running(server) as thread:
        allowed = _ask(thread.port, headers=[("Origin", "http://localhost:3000")])
        assert allowed.header("access-control-allow-origin") == "http://localhost:3000"
        assert "Origin" in allowed.header("vary")
        other = _ask(thread.port, headers=[("Origin", "https://evil.example")])
        assert other.status == 200 and other.header("access-control-allow-origin") is None
        assert "Origin" in other.header("vary")


# -- API key --------------------------------------------------------------------------------------

@pytest.mark.parametrize("authorization", [
    None, "", "Bearer", "Bearer ", "Bearer wrong", f"Bearer {KEY}x", f"Bearer {KEY[:-1]}", f"Basic {KEY}", KEY,
])
def test_missing_or_wrong_key_is_401(keyed, authorization):
    headers = [] if authorization is None else [("Authorization", authorization)]
    answer = _ask(keyed.port, headers=headers)
    assert answer.status == 401
    error = answer.error()
    assert error["code"] == "invalid_api_key" and error["type"] == "invalid_request_error"
    assert answer.header("www-authenticate") == "Bearer"


@pytest.mark.parametrize("authorization", [f"Bearer {KEY}", f"bearer {KEY}", f"BEARER   {KEY}"])
def test_right_key_is_accepted(keyed, authorization):
    assert _ask(keyed.port, headers=[("Authorization", authorization)]).json() == {"data": 1}


def test_the_key_is_also_accepted_as_x_api_key(keyed):
    """Anthropic's clients send the key as ``x-api-key``."""
    assert _ask(keyed.port, headers=[("x-api-key", KEY)]).json() == {"data": 1}
    assert _ask(keyed.port, headers=[("x-api-key", KEY + "x")]).status == 401


def test_health_is_open_with_a_key_set(keyed):
    assert _ask(keyed.port, target="/health").json() == {"status": "ok"}


def test_no_key_configured_means_no_check(open_server):
    assert _ask(open_server.port, headers=[("Authorization", "Bearer anything")]).status == 200
    assert _ask(open_server.port).status == 200


def test_key_from_the_environment():
    config = load_config(None, environ={"HELIOS_API_KEY": KEY})
    assert config.server.api_key == KEY
    from helios_raw import Server

    config.server.port = 0
    with running(Server(config)) as thread:
        assert _ask(thread.port, target="/x").status == 401
        assert _ask(thread.port, target="/x", headers=[("Authorization", "Bearer no")]).status == 401
        assert _ask(thread.port, target="/x", headers=AUTH).status == 404  # past the key check
