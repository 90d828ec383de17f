"""What real clients send, over real sockets: curl's form content type on a JSON body, targets in
absolute form (as sent to a proxy), and request ids as the official ``openai`` SDK reads them."""

from __future__ import annotations

import json
import re

import openai
import pytest

from tests.conftest import chat_body, post_chat
from tests.support.rawhttp import Client

ID = re.compile(r"req_[0-9a-f]{32}")


def test_a_json_body_sent_as_a_form_is_served(tiny_server):
    # What `curl -d '{...}' http://.../v1/chat/completions` sends.
    answer = post_chat(tiny_server.port, chat_body(max_tokens=4),
                       [("Content-Type", "application/x-www-form-urlencoded")])
    assert answer.status == 200 and answer.json()["object"] == "chat.completion"


@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded", "text/plain"])
def test_a_body_that_is_not_json_is_still_415(tiny_server, content_type):
    answer = post_chat(tiny_server.port, b"model=tiny&messages=hello", [("Content-Type", content_type)])
    assert answer.status == 415 and answer.error()["code"] == "unsupported_media_type"


@pytest.mark.parametrize("target", [
    "http://localhost/health", "https://localhost:8443/health", "HTTP://example.com/health?probe=1",
    "http://localhost/v1/models/tiny",
])
def test_an_absolute_form_target_is_routed_by_its_path(tiny_server, target):
    with Client(tiny_server.port) as client:
        client.request("GET", target)
        answer = client.read_response()
        assert answer.status == 200, answer.body


def test_an_absolute_url_without_a_path_is_the_root(tiny_server):
    with Client(tiny_server.port) as client:
        client.request("GET", "http://localhost")
        answer = client.read_response()
        assert answer.status == 404 and answer.error()["message"] == "Unknown request URL: GET /."


@pytest.mark.parametrize("target", ["health", "localhost:8000", "ftp://localhost/health"])
def test_a_target_that_is_neither_a_path_nor_an_absolute_url_is_400(tiny_server, target):
    with Client(tiny_server.port) as client:
        client.request("GET", target)
        answer = client.read_response()
        assert answer.status == 400 and "request target" in answer.error()["message"]


def test_options_asterisk_is_answered(tiny_server):
    with Client(tiny_server.port) as client:
        client.request("OPTIONS", "*")
        assert client.read_response().status == 204


@pytest.fixture
def sdk(tiny_server):
    with openai.OpenAI(base_url=f"http://127.0.0.1:{tiny_server.port}/v1", api_key="unused", max_retries=0) as client:
        yield client


def test_the_openai_sdk_reads_a_request_id_from_every_response(sdk):
    model = sdk.models.retrieve("tiny")
    completion = sdk.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                             max_tokens=4, temperature=0)
    ids = [model._request_id, completion._request_id]
    assert all(ID.fullmatch(i) for i in ids) and ids[0] != ids[1]
    with pytest.raises(openai.NotFoundError) as refused:
        sdk.models.retrieve("no-such-model")
    assert ID.fullmatch(refused.value.request_id)


def test_the_openai_sdk_sees_its_own_request_id_echoed(sdk):
    model = sdk.models.retrieve("tiny", extra_headers={"X-Request-Id": "trace-42/a.b_c"})
    assert model._request_id == "trace-42/a.b_c"


def test_a_model_id_with_a_slash_is_one_path_segment(tiny_model_path):
    from tests.conftest import local_server

    with local_server(tiny_model_path, model_name="org/tiny") as server:
        with openai.OpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key="unused") as client:
            # The SDK sends /v1/models/org%2Ftiny: one segment, decoded after routing.
            assert client.models.retrieve("org/tiny").id == "org/tiny"


def test_a_streamed_answer_carries_its_request_id(tiny_server):
    body = json.dumps({**chat_body(max_tokens=4), "stream": True}).encode()
    with Client(tiny_server.port) as client:
        client.request("POST", "/v1/chat/completions", [("Content-Type", "application/json"),
                                                         ("X-Request-Id", "stream-7")], body)
        answer = client.read_response("POST")
        assert answer.status == 200 and answer.header("x-request-id") == "stream-7"
        assert int(answer.header("openai-processing-ms")) >= 0
