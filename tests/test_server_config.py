"""Embedding with a configuration serves what ``--config`` serves: the backend the config names,
with its strict-model setting, for the local and the remote backend."""

from __future__ import annotations

import pytest

from helios_raw import (
    Config,
    ConfigError,
    LocalConfig,
    RemoteConfig,
    Server,
    ServerBuilder,
)
from helios_raw.backends.local import LocalBackend
from helios_raw.backends.remote import RemoteBackend
from helios_raw.config import config_from_dict
from tests.conftest import chat_body, error_of, local_server, post_chat, validate
from tests.support.rawhttp import Client, running


def _config(**sections) -> Config:
    config = Config(**sections)
    config.server.host, config.server.port, config.server.access_log = "127.0.0.1", 0, False
    return config


def test_a_config_with_a_local_section_serves_that_model_strictly(tiny_model_path) -> None:
    server = Server(_config(local=LocalConfig(model_path=str(tiny_model_path), model_name="tiny",
                                              strict_model_names=True)))
    assert isinstance(server.backend.entries[0].backend, LocalBackend) and server.strict_models
    with running(server) as thread:
        thread.call(server.backend.wait_ready(), 60)
        answer = post_chat(thread.port, chat_body(max_tokens=2))
        assert answer.status == 200, answer.body
        validate(answer.json(), "CreateChatCompletionResponse")
        assert error_of(post_chat(thread.port, chat_body(model="other")), 404, "model")["code"] == "model_not_found"


def test_a_config_with_a_remote_section_serves_that_upstream_strictly(tiny_model_path) -> None:
    # The upstream is a second helios_raw serving the tiny model, as a remote OpenAI-compatible API.
    with local_server(tiny_model_path) as upstream:
        remote = RemoteConfig(model_name="tiny", base_url=f"http://127.0.0.1:{upstream.port}/v1",
                              strict_model_names=True)
        server = ServerBuilder(_config(remote=remote)).build()
        assert isinstance(server.backend.entries[0].backend, RemoteBackend) and server.strict_models
        with running(server) as thread:
            answer = post_chat(thread.port, chat_body(max_tokens=2))
            assert answer.status == 200, answer.body
            assert answer.json()["choices"][0]["message"]["role"] == "assistant"
            assert error_of(post_chat(thread.port, chat_body(model="other")), 404, "model")["code"] == \
                "model_not_found"


def test_a_config_naming_no_backend_serves_no_model() -> None:
    server = Server(_config())
    assert server.backend is None
    with running(server) as thread:
        assert post_chat(thread.port, chat_body()).status == 404
        with Client(thread.port) as client:
            client.request("GET", "/health")
            assert client.read_response().json() == {"status": "ok"}


def test_an_explicit_strict_setting_wins_over_the_config(tiny_model_path) -> None:
    config = _config(local=LocalConfig(model_path=str(tiny_model_path), strict_model_names=True))
    assert not Server(config, strict_models=False).strict_models
    assert not ServerBuilder(config).backend(LocalBackend(config.local), strict_models=False).build().strict_models


@pytest.mark.parametrize("section", ["remote", "llm"])
def test_the_remote_section_has_two_names(section: str) -> None:
    config = config_from_dict({section: {"base_url": "http://127.0.0.1:1/v1", "model_name": "m"}})
    assert config.remote.model_name == "m" and config.backend_kind == "remote"
    assert config.remote.section == section


def test_both_names_of_the_remote_section_at_once_are_refused() -> None:
    with pytest.raises(ConfigError, match="both"):
        config_from_dict({"remote": {}, "llm": {}})
