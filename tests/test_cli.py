"""The command line, run as a subprocess: start-up on port 0, serving, SIGTERM, and every mistake a
user can make ending in one sentence and a non-zero exit, never a traceback."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from benchmarks.load import ServerProcess
from helios_raw import __version__
from tests.support.rawhttp import Client

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), HELIOS_API_KEY="")


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "helios_raw", *args], capture_output=True, text=True,
                          timeout=timeout, env=ENV, cwd=ROOT)


def serve(*args: str) -> ServerProcess:
    return ServerProcess([sys.executable, "-m", "helios_raw", *args], env=ENV, cwd=ROOT)


def assert_one_sentence_failure(done: subprocess.CompletedProcess, fragment: str) -> None:
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("helios_raw: ") and fragment in lines[0], lines[0]


def test_version():
    done = cli("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"helios_raw {__version__}"


def test_help_lists_the_flags():
    done = cli("--help")
    assert done.returncode == 0
    for flag in ("--bind", "--host", "--port", "--config", "--custom-endpoints", "--log-level", "--no-access-log",
                 "--no-model", "--shutdown-timeout", "--version"):
        assert flag in done.stdout


@pytest.mark.parametrize("args, fragment", [
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--port", "eighty"], "invalid int value"),
    (["--log-level", "loud"], "invalid choice"),
    (["--bind", "127.0.0.1:99999", "--no-model"], "bad port"),
    (["--bind", "127.0.0.1:http", "--no-model"], "bad port"),
    (["--bind", "127.0.0.1", "--no-model"], "--bind needs HOST:PORT"),
    (["--threads", "0"], "--threads must be at least 1, not 0"),
    (["--parallel", "0"], "--parallel must be between 1 and 64, not 0"),
    (["--port", "70000", "--no-model"], "between 0 and 65535"),
    (["--shutdown-timeout", "-1", "--no-model"], "--shutdown-timeout"),
    (["--config", "/nonexistent/config.toml"], "does not exist"),
    (["--custom-endpoints", "/nonexistent/endpoints.toml", "--no-model"], "does not exist"),
    (["--no-model", "--backend", "remote"], "--no-model cannot be combined"),
    (["--model", "/nonexistent/model.gguf"], "does not exist"),
])
def test_user_mistakes_end_in_one_sentence(args, fragment):
    assert_one_sentence_failure(cli(*args), fragment)


def test_invalid_toml_config(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[server\nport = 1\n")
    assert_one_sentence_failure(cli("--config", str(path)), "is not valid TOML")


def test_invalid_config_value(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[server]\nport = 'eighty'\n")
    assert_one_sentence_failure(cli("--config", str(path)), "port must be an integer")


@pytest.mark.parametrize("text, fragment", [
    ("[[endpoints]]\nmethod = 'FETCH'\npath = '/x'\nresponse = 1\n", "'FETCH' is not one of"),
    ("[[endpoints]]\nmethod = 'GET'\npath = '/x'\nresponse = 1\nstatus_code = 1000\n", "status 1000"),
    ("[[endpoints]]\nmethod = 'GET'\npath = '/x'\nresponse = 1\n\n"
     "[[endpoints]]\nmethod = 'GET'\npath = '/x'\nresponse = 2\n", "conflicts with"),
    ("[[endpoints]]\nmethod = 'GET'\npath = '/health'\nresponse = 1\n", "conflicts with"),
    ("[[endpoints\n", "is not valid TOML"),
])
def test_invalid_custom_endpoints(tmp_path, text, fragment):
    path = tmp_path / "endpoints.toml"
    path.write_text(text)
    assert_one_sentence_failure(cli("--no-model", "--bind", "127.0.0.1:0", "--custom-endpoints", str(path)), fragment)


def test_port_in_use():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert_one_sentence_failure(cli("--no-model", "--bind", f"127.0.0.1:{port}"), "already in use")


def test_serves_custom_endpoints_without_a_model_then_exits_0_on_sigterm(tmp_path):
    endpoints = tmp_path / "endpoints.toml"
    endpoints.write_text("[[endpoints]]\nmethod = 'GET'\npath = '/api/version'\nresponse = { version = '1' }\n")
    server = serve("--no-model", "--bind", "127.0.0.1:0", "--custom-endpoints", str(endpoints))
    try:
        assert server.port != 0
        with Client(server.port) as client:
            client.request("GET", "/health")
            assert client.read_response().json() == {"status": "ok"}
            client.request("GET", "/api/version")
            assert client.read_response().json() == {"version": "1"}
            client.request("POST", "/v1/chat/completions", body=b"{}")
            assert client.read_response().status == 404  # no model, no chat route
    finally:
        code = server.stop()
    assert code == 0
    output = "".join(server.output)
    assert "Traceback" not in output
    assert "route GET    /api/version" in output  # the start-up lines list the routes
    assert '"GET /api/version HTTP/1.1" 200' in output  # the access log line
    assert "shutting down" in output


def test_host_and_port_flags_and_no_access_log():
    server = serve("--no-model", "--host", "127.0.0.1", "--port", "0", "--no-access-log")
    try:
        with Client(server.port) as client:
            client.request("GET", "/health")
            assert client.read_response().status == 200
    finally:
        assert server.stop() == 0
    assert not any('"GET /health' in line for line in server.output)


def test_sigterm_lets_a_request_in_flight_finish(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text("[server]\nshutdown_timeout = 10\n")
    server = serve("--no-model", "--bind", "127.0.0.1:0", "--config", str(config))
    try:
        client = Client(server.port)
        client.request("POST", "/health", [("Expect", "100-continue"), ("Content-Length", "10")])
        assert client.read_head().status == 100  # the server holds the request; its body is to come
        client.send(b"12345")
        server.process.send_signal(signal.SIGTERM)
        _wait_for_line(server, "shutting down")
        assert server.process.poll() is None  # the request in hand holds the shutdown
        client.send(b"67890")
        answer = client.read_response()
        assert answer.status == 405 and answer.header("connection") == "close"
        assert server.process.wait(10) == 0
        client.close()
    finally:
        server.stop()


def test_second_signal_during_a_graceful_stop_ends_it_at_once(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text("[server]\nshutdown_timeout = 60\n")
    server = serve("--no-model", "--bind", "127.0.0.1:0", "--config", str(config))
    try:
        client = Client(server.port)
        client.request("POST", "/health", [("Expect", "100-continue"), ("Content-Length", "10")])
        assert client.read_head().status == 100  # a request in hand would hold the stop for 60 s
        server.process.send_signal(signal.SIGTERM)
        _wait_for_line(server, "shutting down")
        server.process.send_signal(signal.SIGINT)
        assert server.process.wait(10) == 130
        client.close()
    finally:
        server.stop()
    assert "Traceback" not in "".join(server.output)


def _wait_for_line(server: ServerProcess, fragment: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not any(fragment in line for line in server.output):
        assert time.monotonic() < deadline, f"the server never logged {fragment!r}"
        time.sleep(0.01)


def test_remote_backend_without_an_upstream_is_one_sentence():
    assert_one_sentence_failure(cli("--backend", "remote", "--bind", "127.0.0.1:0"), "needs a [remote] section")


def test_remote_backend_needs_no_model_and_health_says_whether_the_upstream_answers(tmp_path):
    """The upstream here refuses connections: once its model list could not be asked for,
    /health says so with a 503 a load balancer acts on (a live upstream is tested with the remote
    backend)."""
    config = tmp_path / "remote.toml"
    config.write_text('[remote]\nbase_url = "http://127.0.0.1:1/v1"\n')
    server = serve("--backend", "remote", "--config", str(config), "--bind", "127.0.0.1:0")
    try:
        deadline = time.monotonic() + 10
        while True:
            with Client(server.port) as client:
                client.request("GET", "/health")
                answer = client.read_response()
            if answer.status == 503 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert answer.status == 503 and answer.json()["status"] == "error"
        assert answer.json()["error"]["code"] == "upstream_unavailable"
    finally:
        assert server.stop() == 0


def test_a_model_file_llama_cpp_rejects_is_one_sentence(tmp_path):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + bytes(196))  # the magic, then nothing a model needs
    assert_one_sentence_failure(cli("--model", str(broken), "--bind", "127.0.0.1:0", "--log-level", "warning"),
                                "llama.cpp could not load")
