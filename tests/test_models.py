"""Several models in one server: ``[[models]]``, routing by ``model``, aliases, loading on demand,
LRU and idle unloading, ``/v1/models`` and ids with slashes, over real sockets.

The models are two different tiny GGUFs (weights from seeds 0 and 1, so their greedy answers
differ) and, where a test says so, a remote entry whose upstream is a second helios_raw server
serving the first of them. To watch the server while a model loads or unloads, some tests serve
the tiny model through :class:`GatedLocal`: the real local backend, whose loading and unloading
first wait at a gate the test opens.
"""

from __future__ import annotations

import concurrent.futures
import json
import pathlib
import threading
from typing import Optional

import pytest

from helios_raw import Server
from helios_raw.backends.local import LocalBackend
from helios_raw.config import ConfigError, LocalConfig, config_from_dict
from helios_raw.models import Entry, ModelRouter
from tests.conftest import chat_body, error_of, local_server, validate
from tests.support.apis import post_json
from tests.support.rawhttp import Client, running
from tests.support.tiny_model import build_tiny_gguf

HELLO = [{"role": "user", "content": "hello world"}]


@pytest.fixture(scope="module")
def second_model(tmp_path_factory) -> pathlib.Path:
    """A tiny GGUF with other weights than ``tiny_model_path`` (seed 1)."""
    return build_tiny_gguf(tmp_path_factory.mktemp("second-model") / "second.gguf", seed=1)


def models_server(models: list, **server) -> Server:
    """A server on 127.0.0.1:0 for a ``[[models]]`` list (and ``[server]`` settings)."""
    return Server(config_from_dict({"server": {"port": 0, "access_log": False, **server}, "models": models}))


def ask(port: int, model: str, **fields) -> dict:
    """A greedy 6-token chat answer from ``model`` (asserted 200 and schema-valid)."""
    answer = post_json(port, "/v1/chat/completions", {**chat_body(model=model, max_tokens=6), **fields})
    assert answer.status == 200, answer.body
    validate(answer.json(), "CreateChatCompletionResponse")
    return answer.json()


def text(port: int, model: str) -> str:
    return ask(port, model)["choices"][0]["message"]["content"]


def get(port: int, path: str):
    with Client(port) as client:
        client.request("GET", path)
        return client.read_response()


def listed(port: int) -> dict:
    """``/v1/models`` (schema-checked) by id."""
    answer = get(port, "/v1/models")
    assert answer.status == 200, answer.body
    validate(answer.json(), "ListModelsResponse")
    return {m["id"]: m for m in answer.json()["data"]}


def statuses(port: int) -> dict:
    return {model_id: m["status"] for model_id, m in listed(port).items()}


def wait_until(predicate, timeout: float = 30.0) -> None:
    done = threading.Event()
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return
        done.wait(0.02)
    assert predicate()


@pytest.fixture(scope="module")
def expected(tiny_model_path, second_model) -> dict:
    """Each model's greedy answer to :func:`ask`, from a server of that model alone."""
    answers = {}
    for name, path in (("first", tiny_model_path), ("second", second_model)):
        with local_server(path) as server:
            answers[name] = text(server.port, "tiny")
    assert answers["first"] != answers["second"]
    return answers


# -- configuration -------------------------------------------------------------------------------


def test_models_entries_are_checked_in_one_sentence(tmp_path) -> None:
    cases = [
        ({"models": []}, "non-empty array"),
        ({"models": [{"id": "a", "model_path": "x"}, {"id": "a", "model_path": "y"}]}, "two models as 'a'"),
        ({"models": [{"id": "a", "aliases": ["b"], "model_path": "x"}, {"id": "b", "model_path": "y"}]}, "'b'"),
        ({"models": [{"id": "a", "model_name": "x"}]}, "named by id"),
        ({"models": [{"id": "a", "base_url": "http://h/v1", "ttl": 5}]}, "local models only"),
        ({"models": [{"id": "a", "ttl": 0}]}, "ttl must be a positive"),
        ({"models": [{"id": "a", "backend": "cloud"}]}, "backend must be"),
        ({"models": [{"id": "a", "colour": "red"}]}, "unknown key 'colour'"),
        ({"models": [{"aliases": ["x"]}]}, "aliases need an id"),
        ({"models": [{"id": "a"}], "local": {}}, "both [[models]] and"),
        ({"server": {"max_loaded_models": 0}}, "max_loaded_models"),
    ]
    for data, words in cases:
        with pytest.raises(ConfigError) as caught:
            config_from_dict(data, "models.toml")
        message = str(caught.value)
        assert words in message and "\n" not in message, (data, message)


def test_a_local_and_a_remote_entry_parse_with_their_sections_keys() -> None:
    config = config_from_dict({"server": {"max_loaded_models": 2, "load_wait_timeout": 5},
                               "models": [{"id": "chat", "aliases": ["gpt-4o-mini"], "model_path": "m.gguf",
                                           "context_size": 512, "ttl": 60, "preload": True},
                                          {"id": "cloud", "base_url": "http://h/v1", "api_key": "k"},
                                          {"base_url": "http://up/v1", "model_name": "fallback"}]})
    chat, cloud, mirror = config.models
    assert chat.kind == "local" and chat.local.model_name == "chat" and chat.local.context_size == 512
    assert chat.aliases == ["gpt-4o-mini"] and chat.ttl == 60.0 and chat.preload
    assert cloud.kind == "remote" and cloud.remote.model_name == "cloud" and cloud.remote.api_key == "k"
    assert mirror.id is None and mirror.remote.model_name == "fallback"
    assert config.backend_kind == "models" and config.names_backend
    assert (config.server.max_loaded_models, config.server.load_wait_timeout) == (2, 5.0)


# -- routing -------------------------------------------------------------------------------------


def test_requests_are_routed_by_model_and_alias(tiny_model_path, second_model, expected) -> None:
    models = [{"id": "first", "aliases": ["gpt-4o-mini"], "model_path": str(tiny_model_path)},
              {"id": "second", "model_path": str(second_model)}]
    with running(models_server(models)) as server:
        assert text(server.port, "first") == expected["first"]
        assert text(server.port, "second") == expected["second"]
        by_alias = ask(server.port, "gpt-4o-mini")
        assert by_alias["choices"][0]["message"]["content"] == expected["first"]
        assert by_alias["model"] == "first"  # answers carry the id, as OpenAI's carry a dated one
        unknown = post_json(server.port, "/v1/chat/completions", chat_body(model="third"))
        assert error_of(unknown, 404, "model")["code"] == "model_not_found"
        assert "'third'" in unknown.error()["message"]
        for path in ("/v1/completions", "/v1/embeddings"):  # every route routes the same way
            body = {"model": "third", "prompt": "x", "input": "x"}
            assert error_of(post_json(server.port, path, body), 404, "model")["code"] == "model_not_found"


def test_one_model_answers_any_name_unless_strict(tiny_model_path, expected) -> None:
    lenient = [{"id": "only", "model_path": str(tiny_model_path)}]
    with running(models_server(lenient)) as server:
        answer = ask(server.port, "gpt-4o-mini")
        assert answer["model"] == "only" and answer["choices"][0]["message"]["content"] == expected["first"]
    strict = [{"id": "only", "model_path": str(tiny_model_path), "strict_model_names": True}]
    with running(models_server(strict)) as server:
        assert error_of(post_json(server.port, "/v1/chat/completions", chat_body(model="gpt-4o-mini")), 404,
                        "model")["code"] == "model_not_found"
        assert ask(server.port, "only")["model"] == "only"


def test_responses_and_messages_are_routed_and_name_the_model(tiny_model_path, second_model) -> None:
    models = [{"id": "first", "model_path": str(tiny_model_path)},
              {"id": "second", "aliases": ["claude"], "model_path": str(second_model)}]
    with running(models_server(models)) as server:
        response = post_json(server.port, "/v1/responses", {"model": "second", "input": "hi", "max_output_tokens": 4})
        assert response.status == 200, response.body
        assert response.json()["model"] == "second"
        message = post_json(server.port, "/v1/messages", {"model": "claude", "max_tokens": 4, "messages": HELLO},
                            [("anthropic-version", "2023-06-01")])
        assert message.status == 200, message.body
        assert message.json()["model"] == "second"


# -- /v1/models ----------------------------------------------------------------------------------


def test_models_are_listed_with_status_and_context_length_and_found_by_slash_ids(tiny_model_path,
                                                                                 second_model) -> None:
    models = [{"id": "HuggingFaceTB/SmolLM2-135M-Instruct", "aliases": ["smol"], "model_path": str(tiny_model_path),
               "context_size": 1024},
              {"id": "org/team/second", "model_path": str(second_model)}]
    with running(models_server(models)) as server:
        first = listed(server.port)
        assert list(first) == ["HuggingFaceTB/SmolLM2-135M-Instruct", "org/team/second"]
        assert {m["status"] for m in first.values()} == {"unloaded"}  # nothing is loaded before it is used
        assert first["HuggingFaceTB/SmolLM2-135M-Instruct"]["context_length"] == 1024
        assert first["org/team/second"]["context_length"] == 2048
        assert first["HuggingFaceTB/SmolLM2-135M-Instruct"]["aliases"] == ["smol"]
        ask(server.port, "smol")
        assert statuses(server.port) == {"HuggingFaceTB/SmolLM2-135M-Instruct": "loaded",
                                         "org/team/second": "unloaded"}
        for path in ("/v1/models/HuggingFaceTB/SmolLM2-135M-Instruct", "/v1/models/HuggingFaceTB%2FSmolLM2-135M-Instruct",
                     "/v1/models/smol"):
            one = get(server.port, path)
            assert one.status == 200, (path, one.body)
            validate(one.json(), "Model")
            assert one.json()["id"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and one.json()["status"] == "loaded"
        assert get(server.port, "/v1/models/org/team/second").json()["id"] == "org/team/second"
        missing = get(server.port, "/v1/models/org/team/third")
        assert error_of(missing, 404, "model")["code"] == "model_not_found"


def test_health_lists_every_model(tiny_model_path, second_model) -> None:
    models = [{"id": "first", "model_path": str(tiny_model_path)}, {"id": "second", "model_path": str(second_model)}]
    with running(models_server(models)) as server:
        ask(server.port, "second")
        facts = get(server.port, "/health").json()
    assert facts["status"] == "ok" and facts["models"] == {"first": "unloaded", "second": "loaded"}


# -- loading and unloading -----------------------------------------------------------------------


def test_least_recently_used_model_is_unloaded_for_another(tiny_model_path, second_model, expected) -> None:
    models = [{"id": "first", "model_path": str(tiny_model_path)}, {"id": "second", "model_path": str(second_model)}]
    with running(models_server(models, max_loaded_models=1)) as server:
        for _ in range(2):
            assert text(server.port, "first") == expected["first"]
            assert statuses(server.port) == {"first": "loaded", "second": "unloaded"}
            assert text(server.port, "second") == expected["second"]
            assert statuses(server.port) == {"first": "unloaded", "second": "loaded"}


def test_the_least_recently_used_one_goes_first(tiny_model_path, second_model, tmp_path) -> None:
    third = build_tiny_gguf(tmp_path / "third.gguf", seed=2)
    models = [{"id": "first", "model_path": str(tiny_model_path)}, {"id": "second", "model_path": str(second_model)},
              {"id": "third", "model_path": str(third)}]
    with running(models_server(models, max_loaded_models=2)) as server:
        ask(server.port, "first")
        ask(server.port, "second")
        ask(server.port, "first")  # now "second" is the least recently used
        ask(server.port, "third")
        assert statuses(server.port) == {"first": "loaded", "second": "unloaded", "third": "loaded"}


def test_an_idle_model_is_unloaded_after_its_ttl_and_reloads(tiny_model_path, second_model, expected) -> None:
    models = [{"id": "first", "model_path": str(tiny_model_path), "ttl": 0.2},
              {"id": "second", "model_path": str(second_model)}]
    with running(models_server(models)) as server:
        assert text(server.port, "first") == expected["first"]
        ask(server.port, "second")
        wait_until(lambda: statuses(server.port)["first"] == "unloaded")
        assert statuses(server.port)["second"] == "loaded"  # no ttl: stays
        assert text(server.port, "first") == expected["first"]


def test_a_model_that_fails_to_load_is_503_then_tried_again(tiny_model_path, tmp_path) -> None:
    broken = tmp_path / "later.gguf"
    broken.write_bytes(tiny_model_path.read_bytes()[:4000])  # a GGUF cut short: the header checks pass
    models = [{"id": "later", "model_path": str(broken)}, {"id": "first", "model_path": str(tiny_model_path)}]
    with running(models_server(models)) as server:
        refused = post_json(server.port, "/v1/chat/completions", chat_body(model="later"))
        assert error_of(refused, 503)["code"] == "model_unavailable"
        assert statuses(server.port) == {"later": "failed", "first": "unloaded"}
        assert get(server.port, "/health").json()["status"] == "ok"  # loaded on demand: the server is fine
        ask(server.port, "first")
        broken.write_bytes(tiny_model_path.read_bytes())
        assert ask(server.port, "later")["model"] == "later"
        assert statuses(server.port)["later"] == "loaded"


def test_a_missing_model_file_stops_the_start_in_one_sentence(tiny_model_path, tmp_path) -> None:
    import asyncio

    from helios_raw.backends.base import BackendError

    models = [{"id": "first", "model_path": str(tiny_model_path)}, {"id": "gone", "model_path": str(tmp_path / "x.gguf")}]
    with pytest.raises(BackendError, match="does not exist"):
        asyncio.run(models_server(models).start())


# -- while a model loads or unloads --------------------------------------------------------------


class Gates:
    """Named gates, shut until the test opens them; ``reached`` tells when one is first waited at."""

    def __init__(self, *names: str) -> None:
        self.open_ = {name: threading.Event() for name in names}
        self.reached = {name: threading.Event() for name in names}

    def open(self, name: str) -> None:
        self.open_[name].set()

    async def wait(self, name: str) -> None:
        import asyncio

        self.reached[name].set()
        await asyncio.get_running_loop().run_in_executor(None, self.open_[name].wait, 30)


class GatedLocal(LocalBackend):
    """The local backend; ``start`` (loading) and ``close`` (unloading) first pass a gate."""

    def __init__(self, config: LocalConfig, gates: Gates, load: Optional[str], unload: Optional[str]) -> None:
        super().__init__(config)
        self.gates, self.load_gate, self.unload_gate = gates, load, unload

    async def start(self) -> None:
        if self.load_gate:
            await self.gates.wait(self.load_gate)
        await super().start()

    async def close(self) -> None:
        if self.unload_gate:
            await self.gates.wait(self.unload_gate)
        await super().close()


def gated_server(entries: list, max_loaded: int = 3, wait: float = 60.0) -> Server:
    from helios_raw import Config

    config = Config()
    config.server.port, config.server.access_log = 0, False
    return Server(config, ModelRouter(entries, max_loaded, wait))


def gated_entry(model_id: str, path, gates: Gates, load: Optional[str] = None, unload: Optional[str] = None) -> Entry:
    config = LocalConfig(model_path=str(path), model_name=model_id)
    return Entry(model_id, lambda: GatedLocal(config, gates, load, unload), loadable=True,
                context_size=config.context_size)


def test_loading_blocks_neither_other_models_nor_health_and_waiters_get_the_loaded_model(
        tiny_model_path, second_model, expected) -> None:
    gates = Gates("load")
    entries = [gated_entry("slow", tiny_model_path, gates, load="load"), gated_entry("quick", second_model, gates)]
    pool = concurrent.futures.ThreadPoolExecutor(3)
    with running(gated_server(entries)) as server:
        waiting = [pool.submit(text, server.port, "slow") for _ in range(2)]
        assert gates.reached["load"].wait(30)
        assert text(server.port, "quick") == expected["second"]  # served while "slow" loads
        assert get(server.port, "/health").json()["status"] == "ok"
        assert statuses(server.port) == {"slow": "loading", "quick": "loaded"}
        assert not any(f.done() for f in waiting)
        gates.open("load")
        assert [f.result(60) for f in waiting] == [expected["first"]] * 2  # both waited for the whole model
    pool.shutdown()


def test_a_request_waits_for_a_loading_model_only_so_long(tiny_model_path) -> None:
    gates = Gates("load")
    with running(gated_server([gated_entry("slow", tiny_model_path, gates, load="load")], wait=0.3)) as server:
        refused = post_json(server.port, "/v1/chat/completions", chat_body(model="slow"))
        assert error_of(refused, 503)["code"] == "model_loading" and refused.header("retry-after") == "1"
        assert statuses(server.port) == {"slow": "loading"}
        gates.open("load")
        wait_until(lambda: statuses(server.port) == {"slow": "loaded"})
        assert ask(server.port, "slow")["model"] == "slow"


def test_requests_arriving_while_a_model_unloads_are_served(tiny_model_path, second_model, expected) -> None:
    # One model at a time. "first" is loaded; a request for "second" makes it unload, and its
    # unloading is held at a gate while a request for "first" itself arrives.
    gates = Gates("unload")
    entries = [gated_entry("first", tiny_model_path, gates, unload="unload"), gated_entry("second", second_model, gates)]
    pool = concurrent.futures.ThreadPoolExecutor(2)
    with running(gated_server(entries, max_loaded=1)) as server:
        assert text(server.port, "first") == expected["first"]
        for_second = pool.submit(text, server.port, "second")
        assert gates.reached["unload"].wait(30)
        assert statuses(server.port) == {"first": "unloaded", "second": "loading"}
        assert get(server.port, "/health").json()["status"] == "ok"
        for_first = pool.submit(text, server.port, "first")
        wait_until(lambda: statuses(server.port)["first"] == "loading")
        assert not for_second.done() and not for_first.done()
        gates.open("unload")
        assert for_second.result(60) == expected["second"]
        assert for_first.result(60) == expected["first"]
        assert statuses(server.port) == {"first": "loaded", "second": "unloaded"}
    pool.shutdown()


def test_a_model_in_use_is_not_unloaded_for_another(tiny_model_path, second_model, expected) -> None:
    # "first" streams to a client that has not read its answer yet; "second" must wait for it.
    entries = [gated_entry("first", tiny_model_path, Gates()), gated_entry("second", second_model, Gates())]
    with running(gated_server(entries, max_loaded=1, wait=0.5)) as server:
        with Client(server.port, timeout=60) as holder:
            holder.request("POST", "/v1/chat/completions", [("content-type", "application/json")],
                           json.dumps(chat_body(model="first", max_tokens=2000, stream=True)).encode())
            holder.sock.recv(1)  # the stream has started: "first" is in use until it ends
            refused = post_json(server.port, "/v1/chat/completions", chat_body(model="second"))
            assert error_of(refused, 503)["code"] == "models_busy" and refused.header("retry-after") == "1"
            assert statuses(server.port)["first"] == "loaded"
        # Once the client has gone, its stream ends and "first" may go: "second" is served (the
        # stream's end is not observable from here, so a request may still find it in use).
        for _ in range(100):
            answer = post_json(server.port, "/v1/chat/completions", chat_body(model="second", max_tokens=6))
            if answer.status != 503:
                break
        assert answer.status == 200 and answer.json()["choices"][0]["message"]["content"] == expected["second"]


# -- remote entries ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def upstream(tiny_model_path):
    """A second helios_raw serving the first tiny model as ``tiny``: a real OpenAI-compatible
    upstream for the remote entries."""
    config = config_from_dict({"server": {"port": 0, "access_log": False},
                               "local": {"model_path": str(tiny_model_path), "model_name": "tiny"}})
    server = Server(config)
    with running(server) as thread:
        thread.call(server.backend.wait_ready(), 60)
        yield f"http://127.0.0.1:{thread.port}/v1"


def test_a_remote_entry_serves_beside_local_ones(upstream, second_model, expected) -> None:
    models = [{"id": "second", "model_path": str(second_model)},
              {"id": "cloud", "aliases": ["gpt-4o"], "base_url": upstream, "model_name": "tiny"},
              {"id": "nowhere", "base_url": "http://127.0.0.1:9/v1"}]
    with running(models_server(models)) as server:
        assert text(server.port, "gpt-4o") == expected["first"]
        assert text(server.port, "second") == expected["second"]
        models = listed(server.port)
        assert models["cloud"]["status"] == "loaded" and models["cloud"]["owned_by"] == "remote"
        assert models["cloud"]["context_length"] == 2048 and models["cloud"]["aliases"] == ["gpt-4o"]
        assert models["nowhere"]["status"] == "failed" and models["nowhere"]["context_length"] is None
        assert get(server.port, "/health").json()["models"] == {"second": "loaded", "cloud": "loaded",
                                                                "nowhere": "failed"}


def test_a_remote_entry_without_id_serves_its_upstreams_models(upstream, second_model, expected) -> None:
    models = [{"id": "second", "model_path": str(second_model)}, {"base_url": upstream}]
    with running(models_server(models)) as server:
        models = listed(server.port)
        assert list(models) == ["second", "tiny"]  # the upstream's own id, not the config's default
        assert models["tiny"]["status"] == "loaded" and models["tiny"]["context_length"] == 2048
        answer = ask(server.port, "tiny")
        assert answer["choices"][0]["message"]["content"] == expected["first"] and answer["model"] == "tiny"
        assert error_of(post_json(server.port, "/v1/chat/completions", chat_body(model="gpt-4o-mini")), 404,
                        "model")["code"] == "model_not_found"


def test_cli_serves_models_and_names_the_upstream_and_its_models(upstream, tiny_model_path, tmp_path) -> None:
    from tests.test_remote import HeliosProcess, wait_for

    config = tmp_path / "models.toml"
    config.write_text(f'[[models]]\nid = "local/tiny"\nmodel_path = "{tiny_model_path}"\n\n'
                      f'[[models]]\nbase_url = "{upstream}"\n')
    process = HeliosProcess("--bind", "127.0.0.1:0", "--config", str(config), "--no-access-log")
    try:
        assert wait_for(lambda: any("serves 1 model(s): tiny" in line for line in process.output), 30), process.output
        models = get(process.port, "/v1/models").json()
    finally:
        process.stop()
    assert [m["id"] for m in models["data"]] == ["local/tiny", "tiny"]
    assert f"upstream {upstream} serves 1 model(s): tiny" in "".join(process.output)


def test_cli_refuses_single_model_flags_with_a_models_list(tiny_model_path, tmp_path) -> None:
    import subprocess
    import sys

    config = tmp_path / "models.toml"
    config.write_text(f'[[models]]\nid = "a"\nmodel_path = "{tiny_model_path}"\n')
    root = pathlib.Path(__file__).resolve().parent.parent
    result = subprocess.run([sys.executable, "-m", "helios_raw", "--config", str(config), "--backend", "remote"],
                            capture_output=True, text=True, timeout=60, env={"PYTHONPATH": str(root)})
    assert result.returncode != 0
    message = result.stderr.strip()
    assert "\n" not in message and "[[models]]" in message and "Traceback" not in message


def test_the_upstreams_list_is_asked_again_once_stale() -> None:
    """Stands for an upstream that starts serving another model (llama-server in router mode,
    Ollama after a pull): the new model is listed, and routed to, once the list is asked again."""
    from tests.test_remote import Exchange, FakeUpstream

    served = {"object": "list", "data": [{"id": "a", "object": "model", "created": 1, "owned_by": "o"}]}

    async def answer(exchange: Exchange) -> bool:
        body = json.loads(exchange.body)
        await exchange.send_json(200, {"id": "c", "object": "chat.completion", "created": 1, "model": body["model"],
                                       "choices": [{"index": 0, "finish_reason": "stop",
                                                    "message": {"role": "assistant", "content": "hi"}}]})
        return True

    upstream = FakeUpstream(answer, models=served)
    with running(upstream) as up:
        models = [{"id": "other", "base_url": "http://127.0.0.1:9/v1"},
                  {"base_url": f"http://127.0.0.1:{up.port}/v1", "models_refresh": 0}]
        with running(models_server(models)) as server:
            assert "a" in listed(server.port) and "b" not in listed(server.port)
            assert error_of(post_json(server.port, "/v1/chat/completions", chat_body(model="b")), 404, "model")
            served["data"].append({"id": "b", "object": "model", "created": 2, "owned_by": "o"})
            wait_until(lambda: "b" in listed(server.port))
            assert ask(server.port, "b")["model"] == "b"
