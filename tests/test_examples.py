"""The scripts in ``examples/`` build servers that work: each one is started in-process on port 0
and answers real requests (the local model ones over the tiny test model)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import counts
from tests.support.tiny_model import build_tiny_gguf
from tests.test_agent import (
    ReplayUpstream,
    Serving,
    exchange,
    recorded_answer,
    recorded_tool_calls,
    run,
    stream_chat,
)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"examples_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    return str(build_tiny_gguf(tmp_path_factory.mktemp("model") / "tiny.gguf"))


def streamed_text(events: list) -> str:
    assert events[-1] == "[DONE]"
    return "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-1] if e["choices"])


def test_serve_local_model_and_proxy_remote_examples(tiny_model: str) -> None:
    local = load_example("serve_local_model").build_server(tiny_model, "127.0.0.1:0", model_name="tiny",
                                                            max_tokens=8)
    question = {"model": "tiny", "temperature": 0, "messages": [{"role": "user", "content": "Hello world"}]}

    async def scenario() -> None:
        async with Serving(local) as local_port:
            await local.backend.wait_ready()
            status, models = await exchange(local_port, "GET", "/v1/models")
            assert status == 200 and [m["id"] for m in models["data"]] == ["tiny"]
            status, direct = await exchange(local_port, "POST", "/v1/chat/completions", question)
            assert status == 200, direct
            assert direct["choices"][0]["message"]["content"]

            proxy = load_example("proxy_remote").build_server(
                f"http://127.0.0.1:{local_port}/v1", "tiny", upstream_key="sk-upstream", address="127.0.0.1:0",
                require_key="client-key")
            async with Serving(proxy) as proxy_port:
                status, refused = await exchange(proxy_port, "POST", "/v1/chat/completions", question)
                assert status == 401, refused
                status, proxied = await exchange(proxy_port, "POST", "/v1/chat/completions", question,
                                                 headers=(("authorization", "Bearer client-key"),))
                assert status == 200, proxied
                # Greedy decoding: the same answer whether asked directly or through the proxy.
                assert proxied["choices"][0]["message"]["content"] == direct["choices"][0]["message"]["content"]
                assert counts(proxied["usage"]) == counts(direct["usage"])

    run(scenario())


def test_agent_with_tools_example_runs_both_tools() -> None:
    example = load_example("agent_with_tools")
    question = "Weather and time in Paris, and the weather in Atlantis?"
    upstream = ReplayUpstream({question: [
        recorded_tool_calls(("get_weather", '{"city": "Paris"}'), ("get_time", '{"timezone": "Europe/Paris"}'),
                            ("get_weather", '{"city": "Atlantis"}'), ("get_time", '{"timezone": "Mars/Olympus"}')),
        recorded_answer("In Paris it is 18 degrees and sunny."),
    ]})

    async def scenario() -> None:
        async with Serving(upstream.server):
            async with Serving(example.build_server(upstream.config(), "127.0.0.1:0")) as port:
                body = {"model": "assistant", "messages": [{"role": "user", "content": question}]}
                status, answer = await exchange(port, "POST", "/v1/chat/completions", body)
                assert status == 200, answer
                assert answer["choices"][0]["message"]["content"] == "In Paris it is 18 degrees and sunny."
                assert streamed_text([e async for e in stream_chat(port, {**body, "stream": True})]) \
                    == "In Paris it is 18 degrees and sunny."

                sent = upstream.received[1]
                assert sent["messages"][0]["content"] == example.agent.system_prompt
                assert [t["function"]["name"] for t in sent["tools"]] == ["get_weather", "get_time"]
                weather, time_, atlantis, mars = [m["content"] for m in sent["messages"] if m["role"] == "tool"]
                assert weather == '{"city":"Paris","temperature":18,"unit":"celsius","sky":"sunny"}'
                assert re.fullmatch(r"\w+day \d\d \w+ \d{4}, \d\d:\d\d \((CET|CEST)\)", time_), time_
                assert atlantis.startswith("Error: get_weather failed: ValueError: no weather data for Atlantis")
                assert "unknown time zone 'Mars/Olympus'" in mars

    run(scenario())


def test_custom_endpoints_example() -> None:
    server = load_example("custom_endpoints").build_server("127.0.0.1:0")

    async def scenario() -> None:
        async with Serving(server) as port:
            assert await exchange(port, "GET", "/api/version") == (
                200, {"name": "weather-service", "version": "1.2.0"})
            assert await exchange(port, "GET", "/api/status") == (
                200, {"status": "operational", "regions": ["eu", "us"]})
            status, gone = await exchange(port, "POST", "/api/deprecated", {})
            assert status == 410 and "removed" in gone["error"]
            assert await exchange(port, "GET", "/api/ping") == (200, {"pong": True})
            assert await exchange(port, "POST", "/api/echo/ada?shout=1", {"greeting": "hello"}) == (
                200, {"name": "ADA", "query": {"shout": "1"}, "body": {"greeting": "hello"}})
            status, error = await exchange(port, "POST", "/api/echo/ada", [1, 2])
            assert status == 400 and error["error"]["message"] == "Send a JSON object as the body."
            status, stats = await exchange(port, "GET", "/api/stats")
            assert status == 200 and stats["uptime_seconds"] >= 0
            assert (await exchange(port, "GET", "/health"))[0] == 200
            assert (await exchange(port, "POST", "/v1/chat/completions", {}))[0] == 404  # no model here

    run(scenario())


@pytest.mark.parametrize("name", ["serve_local_model", "proxy_remote", "agent_with_tools", "custom_endpoints"])
def test_examples_run_as_scripts(name: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, str(EXAMPLES / f"{name}.py"), "--help"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "--bind" in result.stdout


def test_a_served_example_says_where_it_listens_and_logs_each_request() -> None:
    """A script that serves without setting up logging still tells its user what it is doing."""
    from benchmarks.load import ServerProcess
    from tests.support.rawhttp import Client

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    server = ServerProcess([sys.executable, str(EXAMPLES / "custom_endpoints.py"), "--bind", "127.0.0.1:0"],
                           env=env, cwd=ROOT)
    try:
        with Client(server.port) as client:
            client.request("GET", "/api/version")
            assert client.read_response().status == 200
        deadline = time.monotonic() + 10
        while not any('"GET /api/version HTTP/1.1" 200' in line for line in server.output):
            assert time.monotonic() < deadline, server.output
            time.sleep(0.05)
    finally:
        assert server.stop() == 0
    assert any("listening on http://127.0.0.1:" in line for line in server.output)
