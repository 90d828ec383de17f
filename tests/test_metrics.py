"""``GET /metrics``: Prometheus text read back by ``prometheus_client``'s own parser, over real
sockets, after a mixed load on a real server (custom endpoints, the tiny model, errors); the
counters must add up to what the clients sent and saw.

The model-level families (tokens, time to first token, queue gauges) are filled by the local
engine and the remote backend through :class:`helios_raw.metrics.Metrics`. A test marked
``xfail(strict=True)`` is written against that interface for a backend that does not call it yet,
so that it starts failing (and must be unmarked) the day it passes.
"""

from __future__ import annotations

import collections
import contextlib
import json
import math
import socket

import pytest

from helios_raw import Config, EndpointBuilder, LocalConfig, RemoteConfig, Server, get
from helios_raw.backends.remote import RemoteBackend
from helios_raw.http.limits import Limits
from helios_raw.metrics import Metrics, render
from tests.conftest import (
    JSON,
    chat_body,
    connect,
    post_chat,
    send_chat,
    shrink_server_send_buffer,
    sse_events,
)
from tests.support.rawhttp import Client, running
from tests.support.scrape import Scrape, scrape
from tests.support.waiting import wait_for

CHAT = "/v1/chat/completions"



@contextlib.contextmanager
def model_server(model_path, api_key=None, limits=None, metrics=True):
    """The tiny model as ``tiny`` plus two custom endpoints, on 127.0.0.1:0."""
    from helios_raw.backends.local import LocalBackend

    config = Config()
    config.server.host, config.server.port, config.server.access_log = "127.0.0.1", 0, False
    config.server.api_key, config.server.metrics = api_key, metrics
    if limits is not None:
        config.server.limits = limits
    backend = LocalBackend(LocalConfig(model_path=str(model_path), model_name="tiny"))
    item = EndpointBuilder.get("/api/items/{item}").handle(lambda request: {"item": request.params["item"]}).build()
    with running(Server(config, backend, [get("/api/version", {"version": "1"}), item])) as thread:
        thread.call(backend.wait_ready(), 60)
        thread.backend = backend
        yield thread


@pytest.fixture(scope="module")
def server(tiny_model_path):
    with model_server(tiny_model_path) as server:
        yield server


def request(port: int, method: str, target: str, headers=None, body: bytes = b""):
    with Client(port) as client:
        client.request(method, target, headers, body)
        return client.read_response(method)


def http_counts(scraped: Scrape) -> dict:
    return {(dict(labels)["method"], dict(labels)["route"], dict(labels)["status"]): value
            for labels, value in scraped.series("helios_http_requests_total").items()}


# -- the mixed load ------------------------------------------------------------------------------


def test_requests_by_route_and_status_add_up_to_what_was_sent(server) -> None:
    sent: collections.Counter = collections.Counter()

    def expect(method: str, target: str, status: int, route: str, label: str = "", headers=None, body=b""):
        answer = request(server.port, method, target, headers, body)
        assert answer.status == status, answer.body[:300]
        sent[(label or method, route, str(status))] += 1
        return answer

    for _ in range(3):
        expect("GET", "/health", 200, "/health")
    expect("HEAD", "/health", 200, "/health")
    expect("GET", "/api/version", 200, "/api/version")
    for n in range(2):
        expect("GET", f"/api/items/{n}", 200, "/api/items/{item}")
    expect("GET", "/v1/models/tiny", 200, "/v1/models/{model}")
    for stream in (False, True):
        for _ in range(2):
            body = json.dumps({**chat_body(max_tokens=5), "stream": stream,
                               "stream_options": {"include_usage": True}} if stream else chat_body(max_tokens=5))
            expect("POST", CHAT, 200, CHAT, headers=JSON, body=body.encode())
    expect("POST", CHAT, 400, CHAT, headers=JSON, body=b"{not json")
    expect("POST", CHAT, 400, CHAT, headers=JSON, body=json.dumps({"model": "tiny"}).encode())
    expect("GET", "/nope", 404, "unmatched")
    expect("DELETE", "/health", 405, "unmatched")
    expect("BREW", "/health", 405, "unmatched", label="other")  # any method a client invents counts as one
    expect("OPTIONS", CHAT, 204, CHAT, headers=[("Origin", "http://app.example"),
                                                ("Access-Control-Request-Method", "POST")])

    first = scrape(server.port)
    assert http_counts(first) == sent  # the scrape itself is counted once its answer is sent
    for (method, route), count in _sum_by(sent, 2).items():
        assert first.value("helios_http_request_duration_seconds_count", method=method, route=route) == count
        buckets = _buckets(first, "helios_http_request_duration_seconds", method=method, route=route)
        assert buckets[-1] == (math.inf, count) and [c for _, c in buckets] == sorted(c for _, c in buckets)
    assert first.series("helios_requests_cancelled_total") == {}

    second = scrape(server.port)
    sent[("GET", "/metrics", "200")] += 1
    assert http_counts(second) == sent


def test_token_counters_equal_the_usage_the_clients_saw(tiny_model_path) -> None:
    """What the local engine counts is what its usage told the clients, request by request; its
    queue and cache gauges read idle once every answer is done."""
    with model_server(tiny_model_path) as server:
        usages = []
        for stream in (False, True, False, True):
            body = chat_body(f"count to {len(usages)}", max_tokens=6 + len(usages))
            if stream:
                body.update(stream=True, stream_options={"include_usage": True})
            answer = post_chat(server.port, body)
            assert answer.status == 200
            usages.append(sse_events(answer.body)[-2]["usage"] if stream else answer.json()["usage"])
        scraped = scrape(server.port)
    labels = {"model_name": "tiny"}
    assert scraped.value("helios_generation_tokens_total", **labels) == sum(u["completion_tokens"] for u in usages)
    assert scraped.value("helios_prompt_tokens_total", **labels) == sum(u["prompt_tokens"] for u in usages)
    assert scraped.value("helios_prefix_cache_queries_total", **labels) == sum(u["prompt_tokens"] for u in usages)
    assert scraped.total("helios_request_success_total", **labels) == len(usages)
    for name in ("helios_time_to_first_token_seconds", "helios_e2e_request_latency_seconds",
                 "helios_request_queue_time_seconds"):
        assert scraped.value(f"{name}_count", **labels) == len(usages), name
    assert scraped.value("helios_inter_token_latency_seconds_count", **labels) == \
        sum(u["completion_tokens"] - 1 for u in usages)
    for gauge in ("helios_num_requests_running", "helios_num_requests_waiting"):
        assert scraped.value(gauge, **labels) == 0, gauge
    assert 0 <= scraped.value("helios_kv_cache_usage_perc", **labels) <= 1


# -- a client that leaves ------------------------------------------------------------------------


def test_a_client_leaving_a_stream_is_counted_as_cancelled(tiny_model_path) -> None:
    """The stream is held by a client that reads nothing (the server has to pause writing to it),
    so it cannot end before the client leaves."""
    with model_server(tiny_model_path, limits=Limits(write_buffer_high=4096, write_buffer_low=1024)) as server:
        sock = connect(server.port, rcvbuf=2048)
        shrink_server_send_buffer(server, sock)
        send_chat(sock, chat_body("tell me a story", max_tokens=1800))
        address = sock.getsockname()
        wait_for(lambda: any(c.client == address and c.flow.paused for c in server.connections()),
                 "the server to wait for the client")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()
        scraped = wait_for(lambda: _if(scrape(server.port), lambda s: s.series("helios_requests_cancelled_total")),
                           "the cancelled request to be counted")
        assert scraped.value("helios_requests_cancelled_total", route=CHAT) == 1
        assert scraped.value("helios_http_requests_total", method="POST", route=CHAT, status="200") == 1


# -- the remote backend's upstream errors --------------------------------------------------------


def test_upstream_errors_are_counted_by_kind() -> None:
    """An upstream that refuses connections: its model list could not be asked for, nor the chat
    request sent; each is one ``connect`` error. (The other kinds are counted where they arise.)"""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    config = Config()
    config.server.access_log = False
    config.server.host, config.server.port = "127.0.0.1", 0
    backend = RemoteBackend(RemoteConfig(base_url=f"http://127.0.0.1:{port}/v1", model_name="up"))
    with running(Server(config, backend)) as proxy:
        wait_for(lambda: request(proxy.port, "GET", "/health").status == 503, "the model list to be asked for")
        before = scrape(proxy.port).value("helios_upstream_errors_total", kind="connect")
        assert post_chat(proxy.port, chat_body()).status == 502
        scraped = scrape(proxy.port)
    assert before >= 1 and scraped.value("helios_upstream_errors_total", kind="connect") == before + 1


# -- protection and switching it off -------------------------------------------------------------


def test_metrics_need_the_api_key_like_every_route_but_health(tiny_model_path) -> None:
    with model_server(tiny_model_path, api_key="sekret") as server:
        refused = request(server.port, "GET", "/metrics")
        assert refused.status == 401 and refused.error()["code"] == "invalid_api_key"
        assert request(server.port, "GET", "/health").status == 200
        scraped = scrape(server.port, [("Authorization", "Bearer sekret")])
    assert scraped.value("helios_http_requests_total", method="GET", route="/metrics", status="401") == 1


def test_metrics_off_serves_no_route_and_counts_nothing(tiny_model_path) -> None:
    with model_server(tiny_model_path, metrics=False) as server:
        assert request(server.port, "GET", "/health").status == 200
        assert request(server.port, "GET", "/metrics").status == 404
        assert server.server.metrics.http_requests.cells == {}


def test_a_server_without_a_model_has_no_model_level_families() -> None:
    config = Config()
    config.server.access_log, config.server.host, config.server.port = False, "127.0.0.1", 0
    with running(Server(config, endpoints=[get("/hi", {"hi": 1})])) as server:
        assert request(server.port, "GET", "/hi").status == 200
        scraped = scrape(server.port)
    assert scraped.value("helios_http_requests_total", method="GET", route="/hi", status="200") == 1
    assert not [name for name in scraped.families if "token" in name or "num_requests" in name]


# -- the recording interface and the text format, read back by the parser ------------------------


def test_a_requests_reports_become_counters_and_histograms() -> None:
    metrics = Metrics('model "x" \\ 1')
    request = metrics.request()
    request.started()
    request.token()
    request.token()
    request.token(2)  # two tokens that arrived together: two inter-token latencies
    request.finished(prompt_tokens=11, completion_tokens=4, cached_tokens=7, reason="length")
    quiet = metrics.request()
    quiet.finished(prompt_tokens=3, completion_tokens=5, reason="something new")  # usage only, no tokens
    metrics.upstream_error("read_timeout")
    scraped = Scrape(render([(None, metrics.snapshot())]).decode())
    model = {"model_name": 'model "x" \\ 1'}
    assert scraped.value("helios_generation_tokens_total", **model) == 9
    assert scraped.value("helios_prompt_tokens_total", **model) == 14
    assert scraped.value("helios_prefix_cache_queries_total", **model) == 14
    assert scraped.value("helios_prefix_cache_hits_total", **model) == 7
    assert scraped.value("helios_request_success_total", finished_reason="length", **model) == 1
    assert scraped.value("helios_request_success_total", finished_reason="other", **model) == 1
    assert scraped.value("helios_time_to_first_token_seconds_count", **model) == 1
    assert scraped.value("helios_inter_token_latency_seconds_count", **model) == 3
    assert scraped.value("helios_e2e_request_latency_seconds_count", **model) == 2
    assert scraped.value("helios_request_queue_time_seconds_count", **model) == 1
    assert scraped.value("helios_upstream_errors_total", kind="read_timeout") == 1
    assert scraped.families["helios_time_to_first_token_seconds"].type == "histogram"
    assert scraped.families["helios_generation_tokens"].type == "counter"


def test_gauges_are_read_at_each_scrape_and_a_failing_one_is_left_out() -> None:
    metrics = Metrics("m")
    waiting = [3]
    metrics.gauge("num_requests_waiting", lambda: waiting[0])
    metrics.gauge("kv_cache_usage_perc", lambda: 1 / 0)
    first = Scrape(render([(None, metrics.snapshot())]).decode())
    waiting[0] = 0
    second = Scrape(render([(None, metrics.snapshot())]).decode())
    assert first.value("helios_num_requests_waiting", model_name="m") == 3
    assert second.value("helios_num_requests_waiting", model_name="m") == 0
    assert "helios_kv_cache_usage_perc" not in second.families
    assert second.families["helios_num_requests_waiting"].type == "gauge"
    with pytest.raises(ValueError, match="unknown gauge"):
        metrics.gauge("queue", lambda: 1)
    with pytest.raises(ValueError, match="unknown upstream error kind"):
        metrics.upstream_error("oops")


def test_several_workers_render_as_one_exposition_with_a_worker_label() -> None:
    workers = []
    for n in range(2):
        metrics = Metrics("m")
        for _ in range(n + 1):
            metrics.http_request("GET", "/health", 200, 0.002, False)
        workers.append((str(n), metrics.snapshot()))
    scraped = Scrape(render(workers).decode())
    assert scraped.value("helios_http_requests_total", method="GET", route="/health", status="200", worker="0") == 1
    assert scraped.value("helios_http_requests_total", method="GET", route="/health", status="200", worker="1") == 2
    assert scraped.text.count("# TYPE helios_http_requests_total counter") == 1


# -- helpers -------------------------------------------------------------------------------------


def _sum_by(counts: dict, width: int) -> dict:
    out: collections.Counter = collections.Counter()
    for key, value in counts.items():
        out[key[:width]] += value
    return out


def _buckets(scraped: Scrape, name: str, **labels: str) -> list:
    found = []
    for key, value in scraped.series(f"{name}_bucket").items():
        pairs = dict(key)
        if all(pairs.get(k) == v for k, v in labels.items()):
            found.append((float(pairs["le"]), value))
    return sorted(found)


def _if(value, predicate):
    return value if predicate(value) else None
