"""``--workers N`` over real sockets: requests spread over the worker processes, a killed worker
is replaced, SIGTERM drains every worker, ``/metrics`` covers them all, and what cannot run in
several processes is refused in one sentence."""

from __future__ import annotations

import os
import re
import signal
import socket
import sys

import pytest

from benchmarks.load import ServerProcess
from tests.support.rawhttp import TIMEOUT, Client
from tests.support.scrape import scrape
from tests.support.waiting import wait_for
from tests.support.worker_app import UNREACHABLE
from tests.test_cli import ENV, ROOT, assert_one_sentence_failure, cli

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="several workers need Linux")

STARTED = re.compile(r"worker (\d+) started \(pid (\d+)\)")


def serve_app(*args: str) -> ServerProcess:
    """``tests/support/worker_app.py`` (two workers unless ``args`` say otherwise) on port 0."""
    args = args or ("2",)
    return ServerProcess([sys.executable, "-m", "tests.support.worker_app", "127.0.0.1:0", *args], env=ENV, cwd=ROOT)



def workers(server: ServerProcess, count: int = 2) -> dict:
    """Worker index -> pid of its latest process, once ``count`` workers have started."""
    def started():
        found = {}
        for line in list(server.output):
            match = STARTED.search(line)
            if match:
                found[int(match.group(1))] = int(match.group(2))
        return found if len(found) == count else None

    return wait_for(started, f"{count} workers to start")


def serving(server: ServerProcess, count: int = 2) -> dict:
    """:func:`workers`, once each of them has answered a request (a worker that dies before it
    serves counts as a failed start, which stops everything)."""
    pids = workers(server, count)
    seen: set = set()
    wait_for(lambda: seen.add(pid_of(server.port)) or seen == set(pids.values()), "every worker to serve")
    return pids


def pid_of(port: int) -> int:
    with Client(port) as client:
        client.request("GET", "/pid")
        answer = client.read_response()
    assert answer.status == 200, answer.body
    return answer.json()["pid"]


def logged(server: ServerProcess, fragment: str) -> bool:
    return any(fragment in line for line in list(server.output))


def test_requests_spread_over_the_workers_and_metrics_cover_them_all() -> None:
    server = serve_app()
    try:
        pids = workers(server)
        served = [pid_of(server.port) for _ in range(40)]  # each on a new connection
        assert set(served) == set(pids.values())
        scraped = scrape(server.port)
        for index, pid in pids.items():
            assert scraped.value("helios_worker_up", worker=str(index)) == 1
            assert scraped.value("helios_http_requests_total", method="GET", route="/pid", status="200",
                                 worker=str(index)) == served.count(pid)
    finally:
        assert server.stop() == 0
    output = "".join(server.output)
    assert "listening on http://127.0.0.1:" in output and "with 2 workers" in output
    assert output.count("listening on") == 1 and output.count("route GET    /pid") == 1
    assert "Traceback" not in output


def test_a_killed_worker_is_replaced_and_serves() -> None:
    server = serve_app()
    try:
        old = serving(server)
        os.kill(old[0], signal.SIGKILL)
        wait_for(lambda: logged(server, f"worker 0 (pid {old[0]}) was killed by SIGKILL; starting a new one"),
                 "the parent to notice")
        new = wait_for(lambda: _if(workers(server), lambda w: w[0] != old[0]), "a new worker 0")
        assert new[1] == old[1]
        served = {pid_of(server.port) for _ in range(40)}
        assert served == {new[0], new[1]}
    finally:
        assert server.stop() == 0


def test_sigterm_lets_requests_in_flight_on_every_worker_finish() -> None:
    server = serve_app("2", "10")
    held: dict = {}
    try:
        pids = workers(server)
        for _ in range(200):  # a connection per worker, each holding a request whose body is half sent
            client = Client(server.port)
            client.request("GET", "/pid")
            pid = client.read_response().json()["pid"]
            if pid in held:
                client.close()
                continue
            client.request("POST", "/health", [("Expect", "100-continue"), ("Content-Length", "10")])
            assert client.read_head().status == 100
            client.send(b"12345")
            held[pid] = client
            if len(held) == len(pids):
                break
        assert set(held) == set(pids.values())
        server.process.send_signal(signal.SIGTERM)
        for index in pids:
            wait_for(lambda: logged(server, f"[worker {index}] shutting down"), f"worker {index} to stop accepting")
        wait_for(lambda: _refused(server.port), "new connections to be refused")
        assert server.process.poll() is None  # the requests in hand hold the shutdown
        for client in held.values():
            client.send(b"67890")
            answer = client.read_response()
            assert answer.status == 405 and answer.header("connection") == "close"
        assert server.process.wait(TIMEOUT) == 0
    finally:
        for client in held.values():
            client.close()
        server.stop()
    for index, pid in pids.items():
        assert logged(server, f"worker {index} (pid {pid}) stopped (exited with status 0)")


def test_workers_stop_by_themselves_when_their_parent_is_killed() -> None:
    server = serve_app()
    try:
        pids = serving(server)
        server.process.kill()
        server.process.wait(TIMEOUT)
        for pid in pids.values():
            wait_for(lambda: not _running(pid), f"worker pid {pid} to stop")
    finally:
        server.stop()
    assert logged(server, "[worker 0] shutting down") and logged(server, "[worker 1] shutting down")


def test_workers_that_cannot_start_stop_everything_with_one_sentence() -> None:
    server = ServerProcess([sys.executable, "-m", "tests.support.worker_app", "127.0.0.1:0", "2", "10", "broken"],
                           env=ENV, cwd=ROOT)
    assert server.process.wait(TIMEOUT) == 1
    server.stop()
    output = "".join(server.output)
    assert output.count(UNREACHABLE) == 1 and "starting a new one" not in output
    assert "Traceback" not in output


def test_the_cli_serves_custom_endpoints_in_workers(tmp_path) -> None:
    endpoints = tmp_path / "endpoints.toml"
    endpoints.write_text("[[endpoints]]\nmethod = 'GET'\npath = '/api/version'\nresponse = { version = '1' }\n")
    server = ServerProcess([sys.executable, "-m", "helios_raw", "--no-model", "--workers", "2", "--bind",
                            "127.0.0.1:0", "--custom-endpoints", str(endpoints)], env=ENV, cwd=ROOT)
    try:
        workers(server)
        for _ in range(10):
            with Client(server.port) as client:
                client.request("GET", "/api/version")
                assert client.read_response().json() == {"version": "1"}
        scraped = scrape(server.port)
        assert scraped.total("helios_http_requests_total", route="/api/version") == 10
        assert scraped.total("helios_worker_up") == 2
    finally:
        assert server.stop() == 0


def test_a_local_model_is_refused_with_several_workers(tiny_model_path) -> None:
    done = cli("--workers", "2", "--model", str(tiny_model_path), "--bind", "127.0.0.1:0")
    assert_one_sentence_failure(done, "2 workers cannot serve a local model")


@pytest.mark.parametrize("value", ["0", "65"])
def test_a_worker_count_out_of_range_is_one_sentence(value, tmp_path) -> None:
    assert_one_sentence_failure(cli("--no-model", "--workers", value), "--workers must be between 1 and 64")
    config = tmp_path / "config.toml"
    config.write_text(f"[server]\nworkers = {value}\n")
    assert_one_sentence_failure(cli("--no-model", "--config", str(config)), "workers in")


def test_a_port_in_use_is_one_sentence_with_workers() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert_one_sentence_failure(cli("--no-model", "--workers", "2", "--bind", f"127.0.0.1:{port}"),
                                    "already in use")


def _running(pid: int) -> bool:
    """Whether process ``pid`` still runs (a zombie nobody has reaped yet has stopped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def _if(value, predicate):
    return value if predicate(value) else None
