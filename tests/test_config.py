"""Configuration: TOML file, environment and validation into one Config; every problem is one
sentence naming where it is."""

from __future__ import annotations

import pytest

from helios_raw import Config, ConfigError, Limits, load_config
from helios_raw.config import config_from_dict


def _load(tmp_path, text: str, environ=None) -> Config:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return load_config(str(path), environ={} if environ is None else environ)


def test_no_file_gives_the_defaults():
    config = load_config(None, environ={})
    assert (config.server.host, config.server.port) == ("127.0.0.1", 8000)  # loopback by default
    assert config.server.api_key is None and config.server.cors_origins == ["*"]
    assert config.server.limits == Limits()
    assert config.local is None and config.remote is None and config.endpoints == []


def test_default_limits_are_the_documented_ones():
    limits = Limits()
    assert limits.max_head_bytes == 16 * 1024 and limits.max_header_count == 100
    assert limits.max_target_bytes == 8 * 1024 and limits.max_body_bytes == 16 * 1024 * 1024
    assert limits.head_timeout == 10 and limits.body_idle_timeout == 30 and limits.keepalive_timeout == 5
    assert limits.max_requests_per_connection == 1000


def test_full_server_section(tmp_path):
    config = _load(tmp_path, """
[server]
host = "0.0.0.0"
port = 9000
api_key = "k"
cors_origins = ["https://a.example"]
shutdown_timeout = 3
access_log = false
log_level = "warning"

[server.limits]
head_timeout = 2
max_body_bytes = 1024
keepalive_timeout = 0.5
""")
    server = config.server
    assert (server.host, server.port, server.api_key) == ("0.0.0.0", 9000, "k")
    assert server.cors_origins == ["https://a.example"] and server.access_log is False
    assert server.shutdown_timeout == 3.0 and isinstance(server.shutdown_timeout, float)
    assert server.limits.head_timeout == 2.0 and server.limits.max_body_bytes == 1024
    assert server.limits.keepalive_timeout == 0.5 and server.limits.max_header_count == 100


def test_environment_api_key_overrides_the_file(tmp_path):
    config = _load(tmp_path, '[server]\napi_key = "from-file"\n', environ={"HELIOS_API_KEY": "from-env"})
    assert config.server.api_key == "from-env"
    assert _load(tmp_path, '[server]\napi_key = "from-file"\n', environ={"HELIOS_API_KEY": ""}).server.api_key == "from-file"


def test_backend_sections_choose_the_backend(tmp_path):
    assert _load(tmp_path, '[llm]\nbase_url = "http://127.0.0.1:1/v1"\n').backend_kind == "remote"
    assert _load(tmp_path, '[local]\nmodel_path = "m.gguf"\n').backend_kind == "local"
    assert _load(tmp_path, "").backend_kind == "local"
    remote = _load(tmp_path, '[llm]\nmodel_name = "m"\ntemperature = 1\nmax_tokens = 5\nheaders = {x = "y"}\n').remote
    assert (remote.model_name, remote.temperature, remote.max_tokens, remote.headers) == ("m", 1.0, 5, {"x": "y"})


@pytest.mark.parametrize("text, fragment", [
    ("[nonsense]\n", "unknown section 'nonsense'"),
    ("[server]\nprot = 1\n", "unknown key 'prot'"),
    ('[server]\nport = "80"\n', "port must be an integer"),
    ("[server]\nport = 80.5\n", "port must be an integer"),
    ("[server]\nport = true\n", "port must be an integer"),
    ("[server]\nport = 70000\n", "between 0 and 65535"),
    ('[server]\nhost = ""\n', "host"),
    ("[server]\nshutdown_timeout = -1\n", "shutdown_timeout"),
    ('[server]\nlog_level = "loud"\n', "log_level"),
    ('[server]\ncors_origins = "*"\n', "cors_origins"),
    ("[server]\ncors_origins = [1]\n", "cors_origins"),
    ("[server]\naccess_log = 1\n", "access_log must be true or false"),
    ("[server.limits]\nhead_timeot = 1\n", "unknown limit 'head_timeot'"),
    ("[server.limits]\nhead_timeout = 0\n", "must be a positive number"),
    ("[server.limits]\nmax_body_bytes = -5\n", "must be a positive number"),
    ('[server.limits]\nmax_body_bytes = "big"\n', "must be a positive number"),
    ("[server.limits]\nmax_body_bytes = true\n", "must be a positive number"),
    ("server = 3\n", "'server'"),
    ("[local]\ncontext_size = 0\n", "context_size must be at least 16, not 0"),
    ("[local]\ntemperature = 5\n", "temperature must be between 0 and 2, not 5.0"),
    ("[local]\nn_threads = 0\n", "n_threads must be at least 1, not 0"),
    ("[local]\nparallel = 0\n", "parallel must be between 1 and 64, not 0"),
    ("[local]\nprefill_chunk = 0\n", "prefill_chunk must be between 1 and 8192, not 0"),
    ("[local]\nmodel_path = 3\n", "model_path must be a string"),
    ("[llm]\nmax_connections = 'many'\n", "max_connections must be an integer"),
    ("endpoints = {}\n", "array of tables"),
])
def test_invalid_config_is_one_sentence_naming_the_place(tmp_path, text, fragment):
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, text)
    message = str(caught.value)
    assert fragment in message, message
    assert "config.toml" in message and "\n" not in message and message.endswith(".")


@pytest.mark.parametrize("content, fragment", [
    (b"[server\nport = 1\n", "is not valid TOML"),
    (b"port = = 1\n", "is not valid TOML"),
    (b"\xff\xfe[server]\n", "not"),
])
def test_unparsable_file_is_one_sentence(tmp_path, content, fragment):
    path = tmp_path / "config.toml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        load_config(str(path), environ={})
    assert fragment in str(caught.value) and "\n" not in str(caught.value)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "missing.toml"), environ={})
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(str(tmp_path), environ={})


def test_config_from_dict_without_a_file():
    config = config_from_dict({"server": {"port": 0, "limits": {"max_connections": 7}}})
    assert config.server.port == 0 and config.server.limits.max_connections == 7


def test_write_buffer_low_must_not_exceed_high(tmp_path):
    with pytest.raises(ConfigError, match="write_buffer_low"):
        _load(tmp_path, "[server.limits]\nwrite_buffer_low = 100\nwrite_buffer_high = 10\n")
