"""Logs over real sockets: every line about a request names its id (the one in ``x-request-id``),
from the handler's task and the threads it starts too, and the access log as text or JSON lines,
down to what the command line writes to stderr."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import sys
import time

import pytest

from benchmarks.load import ServerProcess
from helios_raw import Config, ConfigError, EndpointBuilder, ServerBuilder
from helios_raw.config import config_from_dict
from helios_raw.logs import RequestIdFilter
from tests.support.rawhttp import Client, running

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
handler_log = logging.getLogger("tests.handler")


async def logs_in_its_task(request):
    handler_log.warning("async handler at work")
    await asyncio.sleep(0)
    handler_log.warning("async handler still at work")
    return {"ok": True}


def logs_in_a_thread(request):
    handler_log.warning("sync handler at work")
    return {"ok": True}


def fails(request):
    raise RuntimeError("broken")


def build(access_log_format: str = "text"):
    config = Config()
    config.server.access_log_format = access_log_format
    return (ServerBuilder(config).address("127.0.0.1:0")
            .endpoint(EndpointBuilder.get("/async").handle(logs_in_its_task).build())
            .endpoint(EndpointBuilder.get("/sync").handle(logs_in_a_thread).build())
            .endpoint(EndpointBuilder.get("/fail").handle(fails).build())
            .build())


@pytest.fixture(scope="module")
def server():
    with running(build()) as thread:
        yield thread


@pytest.fixture
def logged(caplog):
    """The records logged so far in the test, each given its request's id by a RequestIdFilter."""
    caplog.set_level(logging.INFO)
    caplog.handler.addFilter(RequestIdFilter())
    return lambda: caplog.records


def wait_for(condition, timeout: float = 10.0):
    """``condition()``'s first true value; the server logs its access line just after writing."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, "condition never became true"
        time.sleep(0.01)
    return value


def ask(port: int, target: str, headers=None):
    with Client(port) as client:
        client.request("GET", target, headers)
        return client.read_response()


@pytest.mark.parametrize("target, count", [("/async", 2), ("/sync", 1)])
def test_what_a_handler_logs_names_its_request(server, logged, target, count):
    answer = ask(server.port, target)
    request_id = answer.header("x-request-id")
    wait_for(lambda: any(r.name == "helios_raw.access" and r.request_id == request_id for r in logged()))
    lines = [r for r in logged() if r.name == "tests.handler"]
    assert len(lines) == count
    assert all(r.request_id == request_id and r.request_tag == f" [{request_id}]" for r in lines)


def test_a_handlers_failure_is_logged_with_its_request_id(server, logged):
    answer = ask(server.port, "/fail", [("X-Request-Id", "trace-fail-1")])
    assert answer.status == 500 and answer.header("x-request-id") == "trace-fail-1"
    failure = wait_for(lambda: [r for r in logged() if r.name == "helios_raw.error"])
    assert failure[0].request_id == "trace-fail-1" and failure[0].exc_info


def test_a_line_about_no_request_has_no_id(logged):
    handler_log.warning("between requests")
    assert logged()[-1].request_id == "" and logged()[-1].request_tag == ""


def test_the_json_access_log_is_one_object_a_line(logged):
    with running(build("json")) as thread:
        answer = ask(thread.port, "/sync?x=1", [("X-Request-Id", "json-1")])
        line = wait_for(lambda: [r for r in logged() if r.name == "helios_raw.access"])[0]
    entry = json.loads(line.getMessage())
    assert set(entry) == {"time", "client", "request_id", "method", "target", "http_version", "status", "bytes", "ms"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["time"])
    assert entry["request_id"] == "json-1" and entry["target"] == "/sync?x=1" and entry["method"] == "GET"
    assert entry["status"] == 200 and entry["bytes"] == len(answer.body) and entry["http_version"] == "1.1"
    assert re.fullmatch(r"127\.0\.0\.1:\d+", entry["client"]) and entry["ms"] >= 0


def test_an_unknown_access_log_format_is_one_sentence():
    with pytest.raises(ConfigError, match="access_log_format .* must be one of text, json, not 'xml'"):
        config_from_dict({"server": {"access_log_format": "xml"}})


@pytest.mark.parametrize("access_format", ["json", "text"])
def test_the_command_line_writes_the_access_log_with_request_ids(access_format):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), HELIOS_API_KEY="")
    process = ServerProcess([sys.executable, "-m", "helios_raw", "--no-model", "--bind", "127.0.0.1:0",
                             "--access-log-format", access_format], env=env, cwd=ROOT)
    try:
        answer = ask(process.port, "/health", [("X-Request-Id", "cli-7")])
        assert answer.status == 200
        line = wait_for(lambda: [entry for entry in process.output if "cli-7" in entry])[0]
    finally:
        assert process.stop() == 0
    if access_format == "json":
        entry = json.loads(line)
        assert entry["request_id"] == "cli-7" and entry["status"] == 200
    else:
        assert re.search(r' INFO +helios_raw\.access: 127\.0\.0\.1:\d+ - "GET /health HTTP/1\.1" 200 15 [\d.]+ms cli-7$',
                         line.rstrip("\n"))
