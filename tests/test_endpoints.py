"""Custom endpoints from TOML and from Python, served over real sockets; their validation errors
at start-up."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from helios_raw import (
    APIError,
    ConfigError,
    EndpointBuilder,
    EndpointResponse,
    Response,
    Server,
    delete,
    endpoints_from_toml,
    get,
    patch,
    post,
    put,
)
from helios_raw.http.router import RouteConflict
from tests.support.rawhttp import Client, build_server, running

TOML = """
[[endpoints]]
method = "GET"
path = "/api/version"
response = { version = "1.0", features = ["a", "b"] }

[[endpoints]]
method = "post"
path = "/api/items"
response = { created = true }
status_code = 201
description = "create an item"

[[endpoints]]
method = "GET"
path = "/api/list"
response = [1, 2, 3]

[[endpoints]]
method = "DELETE"
path = "/api/items/{id}"
response = "gone"

[[endpoints]]
method = "PATCH"
path = "/api/items/:id/name"
response = 42
status_code = 202
"""


def _ask(port, method="GET", target="/", headers=(), body=b""):
    with Client(port) as client:
        client.request(method, target, list(headers), body)
        return client.read_response(method)


def _write(tmp_path, text: str):
    path = tmp_path / "endpoints.toml"
    path.write_text(text)
    return str(path)


# -- TOML -----------------------------------------------------------------------------------------

def test_toml_endpoints_are_served(tmp_path):
    endpoints = endpoints_from_toml(_write(tmp_path, TOML))
    with running(build_server(endpoints)) as server:
        version = _ask(server.port, target="/api/version")
        assert version.status == 200 and version.json() == {"version": "1.0", "features": ["a", "b"]}
        assert version.header("content-type") == "application/json"
        created = _ask(server.port, "POST", "/api/items", body=b"{}")
        assert created.status == 201 and created.json() == {"created": True}
        assert _ask(server.port, target="/api/list").json() == [1, 2, 3]
        assert _ask(server.port, "DELETE", "/api/items/7").json() == "gone"
        patched = _ask(server.port, "PATCH", "/api/items/7/name")
        assert patched.status == 202 and patched.json() == 42
        head = _ask(server.port, "HEAD", "/api/version")
        assert head.status == 200 and head.body == b"" and head.header("content-length") == str(len(version.body))


def test_toml_endpoints_inside_the_config_file(tmp_path):
    from helios_raw import load_config

    config = load_config(_write(tmp_path, "[server]\nport = 0\n" + TOML))
    with running(Server(config)) as server:
        assert _ask(server.port, target="/api/version").json()["version"] == "1.0"


@pytest.mark.parametrize("text, fragment", [
    ("[[endpoints]\nmethod = 'GET'", "not valid TOML"),
    ("[[endpoints]]\nmethod = 'FETCH'\npath = '/x'\nresponse = 1", "'FETCH' is not one of"),
    ("[[endpoints]]\nmethod = 'OPTIONS'\npath = '/x'\nresponse = 1", "'OPTIONS' is not one of"),
    ("[[endpoints]]\nmethod = 'GET'\npath = '/x'\nresponse = 1\nstatus_code = 99", "status 99"),
    ("[[endpoints]]\nmethod = 'GET'\npath = '/x'\nresponse = 1\nstatus_code = 700", "status 700"),
    ("[[endpoints]]\nmethod = 'GET'\npath = '/x'\nresponse = 1\nstatus_code = 204", "status 204"),
    ("[[endpoints]]\nmethod = 'GET'\npath = '/x'\nresponse = 1\nstatus_code = '200'", "must be an integer"),
    ("[[endpoints]]\nmethod = 'GET'\npath = '/x'\nresponse = 1\nstatus_code = true", "must be an integer"),
    ("[[endpoints]]\nmethod = 'GET'\npath = '/x'", "needs a 'response'"),
    ("[[endpoints]]\nmethod = 'GET'\nresponse = 1", "needs a string 'path'"),
    ("[[endpoints]]\npath = '/x'\nresponse = 1", "needs a string 'method'"),
    ("[[endpoints]]\nmethod = 'GET'\npath = 'x'\nresponse = 1", "must be a string starting with '/'"),
    ("[[endpoints]]\nmethod = 'GET'\npath = '/x'\nresponse = 1\nbody = 2", "unknown key 'body'"),
    ("endpoints = 3", "array of tables"),
    ("endpoints = [1]", "must be a table"),
])
def test_bad_toml_is_one_clear_error_naming_the_entry(tmp_path, text, fragment):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        endpoints_from_toml(path)
    message = str(caught.value)
    assert fragment in message and path in message
    assert "\n" not in message


def test_missing_toml_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        endpoints_from_toml(str(tmp_path / "nope.toml"))


# -- Python ---------------------------------------------------------------------------------------

def echo_sync(request):
    return {"method": request.method, "path": request.path, "query": request.query, "params": request.params,
            "body": request.body, "agent": request.headers.get("user-agent")}


async def echo_async(request):
    await asyncio.sleep(0)
    return EndpointResponse.created({"params": request.params, "body": request.body})


def helper_status(request):
    kind = request.params["kind"]
    if kind == "raise":
        raise APIError(409, "conflict!", code="conflict")
    return {
        "ok": EndpointResponse.ok({"k": 1}),
        "accepted": EndpointResponse.accepted({"k": 2}),
        "bad": EndpointResponse.bad_request("bad thing"),
        "missing": EndpointResponse.not_found("no such thing"),
        "broken": EndpointResponse.internal_error("it broke"),
        "teapot": EndpointResponse.with_status(418, {"tea": True}),
        "raw": Response(b"plain text", content_type="text/plain"),
    }[kind]


@pytest.fixture(scope="module")
def python_server():
    endpoints = [
        get("/static/get", {"m": "get"}),
        post("/static/post", {"m": "post"}),
        put("/static/put", {"m": "put"}),
        delete("/static/delete", {"m": "delete"}),
        patch("/static/patch", {"m": "patch"}),
        EndpointBuilder.get("/built").json({"built": True}).status(203).description("a built one").build(),
        EndpointBuilder.post("/sync/{user}/items/:item").handle(echo_sync).build(),
        EndpointBuilder.put("/async/{id}").handle(echo_async).build(),
        EndpointBuilder.get("/status/{kind}").handle(helper_status).build(),
        EndpointBuilder.delete("/plain").handle(lambda request: None).build(),
        EndpointBuilder.patch("/patched").handle(lambda request: [request.body]).build(),
    ]
    with running(build_server(endpoints)) as thread:
        yield thread


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE", "PATCH"])
def test_static_helpers_for_each_method(python_server, method):
    answer = _ask(python_server.port, method, f"/static/{method.lower()}")
    assert answer.status == 200 and answer.json() == {"m": method.lower()}


def test_builder_json_status_and_description(python_server):
    answer = _ask(python_server.port, target="/built")
    assert answer.status == 203 and answer.json() == {"built": True}


def test_sync_handler_sees_path_params_query_body_and_headers(python_server):
    answer = _ask(python_server.port, "POST", "/sync/ada/items/42?x=1&y=caf%C3%A9&x=2",
                  [("Content-Type", "application/json"), ("User-Agent", "pytest")], b'{"n": [1, 2]}')
    assert answer.status == 200
    assert answer.json() == {"method": "POST", "path": "/sync/ada/items/42", "query": {"x": "2", "y": "café"},
                             "params": {"user": "ada", "item": "42"}, "body": {"n": [1, 2]}, "agent": "pytest"}


def test_path_parameters_are_percent_decoded(python_server):
    answer = _ask(python_server.port, "POST", "/sync/caf%C3%A9/items/a%20b")
    assert answer.json()["params"] == {"user": "café", "item": "a b"}


def test_async_handler(python_server):
    answer = _ask(python_server.port, "PUT", "/async/9", body=b'{"v": true}')
    assert answer.status == 201 and answer.json() == {"params": {"id": "9"}, "body": {"v": True}}


def test_body_is_none_when_empty_and_raw_when_not_json(python_server):
    assert _ask(python_server.port, "PATCH", "/patched").json() == [None]
    text = _ask(python_server.port, "PATCH", "/patched", [("Content-Type", "text/plain")], b"hello")
    assert text.json() == [None]


def test_invalid_json_body_is_400(python_server):
    answer = _ask(python_server.port, "PATCH", "/patched", [("Content-Type", "application/json")], b"{nope")
    assert answer.status == 400 and answer.error()["code"] == "invalid_json"


def test_handler_returning_none_answers_json_null(python_server):
    assert _ask(python_server.port, "DELETE", "/plain").json() is None


@pytest.mark.parametrize("kind, status", [
    ("ok", 200), ("accepted", 202), ("bad", 400), ("missing", 404), ("broken", 500), ("teapot", 418),
    ("raise", 409), ("raw", 200),
])
def test_response_helpers(python_server, kind, status):
    answer = _ask(python_server.port, target=f"/status/{kind}")
    assert answer.status == status
    if kind in ("bad", "missing", "broken", "raise"):
        assert answer.error()["message"]
    if kind == "raw":
        assert answer.body == b"plain text" and answer.header("content-type") == "text/plain"


def test_unknown_path_and_wrong_method_next_to_custom_routes(python_server):
    assert _ask(python_server.port, target="/sync/ada/items").status == 404
    wrong = _ask(python_server.port, "GET", "/sync/ada/items/1")
    assert wrong.status == 405 and "POST" in wrong.header("allow")


def test_start_up_log_lists_routes_with_descriptions(caplog):
    caplog.set_level(logging.INFO, logger="helios_raw")
    endpoint = EndpointBuilder.get("/described").json(1).description("the described route").build()
    with running(build_server([endpoint])):
        pass
    lines = [r.getMessage() for r in caplog.records if r.name == "helios_raw"]
    assert any("/described" in line and "the described route" in line for line in lines)
    assert any("/health" in line for line in lines)
    assert any(line.startswith("listening on http://127.0.0.1:") for line in lines)


# -- validation at start-up -------------------------------------------------------------------------

@pytest.mark.parametrize("endpoints", [
    [get("/dup", 1), get("/dup", 2)],
    [get("/items/{id}", 1), get("/items/:other", 2)],
    [get("/health", {"mine": True})],
    [post("/a/{x}/b", 1), post("/a/{y}/b/", 2)],
], ids=["same-path", "same-shape", "built-in", "trailing-slash"])
def test_duplicate_or_conflicting_routes_fail_at_start_up(endpoints):
    with pytest.raises(RouteConflict, match="conflicts with"):
        Server(endpoints=endpoints)


def test_same_path_with_different_methods_is_fine():
    server = Server(endpoints=[get("/x", 1), post("/x", 2), EndpointBuilder.put("/x/{id}").json(3).build()])
    assert {(r.method, r.template) for r in server.app.routes} >= {("GET", "/x"), ("POST", "/x"), ("PUT", "/x/{id}")}


@pytest.mark.parametrize("build", [
    lambda: EndpointBuilder("TRACE", "/x").json(1).build(),
    lambda: get("no-slash", 1),
    lambda: get("/x", {1, 2}),
    lambda: EndpointBuilder.get("/x").json(1).status(1000).build(),
    lambda: EndpointResponse.with_status(99, {}),
    lambda: get("/a/{}", 1),
    lambda: get("/a/{x}/{x}", 1),
], ids=["method", "path", "not-json", "status", "with-status", "empty-param", "repeated-param"])
def test_invalid_python_endpoints_raise_value_error(build):
    with pytest.raises(ValueError):
        endpoint = build()
        Server(endpoints=[endpoint])


def test_endpoint_response_body_round_trips_as_json():
    response = EndpointResponse.ok({"a": [1, "b"]}).to_response()
    assert response.status == 200 and json.loads(response.body) == {"a": [1, "b"]}
