"""``python -m helios_raw init``: write a commented example configuration.

The file shows every section and every key, with the defaults as values (a key whose default is
"unset" is shown commented out), so it loads as it is and serves the default local model.
"""

from __future__ import annotations

import os
from dataclasses import fields
from typing import Any

from .config import ConfigError, LocalConfig, RemoteConfig, ServerConfig
from .http.limits import Limits


def write_example_config(path: str, force: bool = False) -> str:
    """Write the example config to ``path`` and return the path. An existing file is kept unless
    ``force``; every failure is a :class:`ConfigError` of one sentence."""
    text = example_config()
    if os.path.isdir(path):
        raise ConfigError(f"{path} is a directory; give a file name with --output.")
    try:
        with open(path, "w" if force else "x", encoding="utf-8") as f:
            f.write(text)
    except FileExistsError:
        raise ConfigError(f"{path} already exists; pass --force to overwrite it.") from None
    except FileNotFoundError:
        raise ConfigError(f"Cannot write {path}: the directory {os.path.dirname(path) or '.'} does not exist.") from None
    except PermissionError:
        raise ConfigError(f"Cannot write {path}: permission denied.") from None
    return path


def toml_value(value: Any) -> str:
    """``value`` written as TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        pairs = ", ".join(f"{toml_value(str(k))} = {toml_value(v)}" for k, v in value.items())
        return "{ " + pairs + " }" if pairs else "{}"
    raise TypeError(f"no TOML form for {value!r}")


def example_config() -> str:
    """The text of the example config, with the current defaults filled in."""
    sections = {"server": ServerConfig(), "limits": Limits(), "local": LocalConfig(), "remote": RemoteConfig()}
    values = {f"{section}_{f.name}": toml_value(getattr(obj, f.name))
              for section, obj in sections.items() for f in fields(obj)
              if getattr(obj, f.name) is not None and not isinstance(getattr(obj, f.name), Limits)}
    return _TEMPLATE.format_map(values)


_TEMPLATE = """\
# helios_raw configuration, written by `python -m helios_raw init`.
#
# Run with:  python -m helios_raw --config config.toml
# Precedence: this file, then the environment (HELIOS_API_KEY), then command-line flags.
# Keys shown commented out are unset by default.
#
# The backend is [local] when that section is present, else [remote]. To proxy a remote
# OpenAI-compatible API instead, delete the [local] section (or run with --backend remote).
# To serve several models, replace both with [[models]] entries (see the end of this file).

[server]
host = {server_host}
# 0 picks a free port.
port = {server_port}
# When set, every route but /health needs "Authorization: Bearer <api_key>".
# api_key = "change-me"
# Origins allowed by CORS; ["*"] allows any.
cors_origins = {server_cors_origins}
# Seconds a graceful shutdown waits for the requests in flight.
shutdown_timeout = {server_shutdown_timeout}
# One log line per request, as "text" or "json" (one object a line).
access_log = {server_access_log}
access_log_format = {server_access_log_format}
# debug, info, warning or error.
log_level = {server_log_level}
# Responses kept in memory for GET /v1/responses/{{id}} and previous_response_id (the oldest
# go first; all are lost on restart), and for how many seconds each.
responses_store_size = {server_responses_store_size}
responses_store_ttl = {server_responses_store_ttl}
# Serve GET /metrics (Prometheus text), behind the API key like every route but /health.
metrics = {server_metrics}
# Processes sharing the port, for the remote and agent backends and custom endpoints (a local
# model needs 1: each process would load its own copy).
workers = {server_workers}
# With [[models]]: local models kept loaded at once (loading one more unloads the least
# recently used), and seconds a request waits for its model to load before a 503.
max_loaded_models = {server_max_loaded_models}
load_wait_timeout = {server_load_wait_timeout}

[server.limits]
# Bytes of a request line plus headers (more is answered 431), and header fields per request.
max_head_bytes = {limits_max_head_bytes}
max_header_count = {limits_max_header_count}
# Bytes of the path plus query (more is 414) and of a request body (more is 413).
max_target_bytes = {limits_max_target_bytes}
max_body_bytes = {limits_max_body_bytes}
# Seconds for a request head to arrive in full, that a request body may stall, and for a whole
# body to arrive.
head_timeout = {limits_head_timeout}
body_idle_timeout = {limits_body_idle_timeout}
body_timeout = {limits_body_timeout}
# Seconds an idle keep-alive connection stays open, and requests served on one connection.
keepalive_timeout = {limits_keepalive_timeout}
max_requests_per_connection = {limits_max_requests_per_connection}
# Connections open at once; at the cap a new one displaces an idle one, else the slowest to send.
max_connections = {limits_max_connections}
# Bytes buffered for a slow reader before writing pauses, and at which it resumes.
write_buffer_high = {limits_write_buffer_high}
write_buffer_low = {limits_write_buffer_low}
# Bytes of unsent output at which a connection that keeps being written to is dropped.
max_unsent_bytes = {limits_max_unsent_bytes}
# Seconds to wait for a client that reads nothing before giving up on it.
write_timeout = {limits_write_timeout}

# A GGUF model run in-process by llama.cpp. With neither model_path nor huggingface_repo set, the
# default small model is served.
[local]
# model_path = "models/model.gguf"
# Or a model already in the local Hugging Face cache (nothing is downloaded): the repository
# and a file name (or glob) in it.
# huggingface_repo = "Qwen/Qwen2.5-0.5B-Instruct-GGUF"
# model_file = "*q4_k_m.gguf"
# The id listed by /v1/models; by default the file's name without .gguf.
# model_name = "my-model"
context_size = {local_context_size}
# Defaults for requests that set none.
temperature = {local_temperature}
max_tokens = {local_max_tokens}
# CPU threads for generation; by default the machine's physical cores.
# n_threads = 4
n_gpu_layers = {local_n_gpu_layers}
# A llama-cpp-python chat format, overriding the model's own chat template.
# chat_format = "chatml"
# true: a request naming another model is answered 404 model_not_found.
strict_model_names = {local_strict_model_names}
# Requests that may wait for the model; more are answered 429.
max_queue = {local_max_queue}
# Seconds one generation may run.
request_timeout = {local_request_timeout}
# A fixed sampling seed.
# seed = 42
# Requests generated at once (slots). Each slot has its own context_size of KV cache, so the
# cache takes parallel * context_size tokens of memory.
parallel = {local_parallel}
# Prompt tokens evaluated per step beside the running streams: a long prompt arriving delays
# them by about one such chunk.
prefill_chunk = {local_prefill_chunk}
# llama.cpp's flash attention; with it an answer does not depend on what the cache held before.
flash_attention = {local_flash_attention}
# Seconds a stream whose client reads nothing keeps its slot while other requests wait for one.
stall_timeout = {local_stall_timeout}

# The upstream: a remote OpenAI-compatible API (OpenAI, vLLM, llama-server, Ollama ...) that the
# remote backend proxies, used when [local] is absent. ([llm] is accepted as an older name.)
[remote]
model_name = {remote_model_name}
base_url = {remote_base_url}
# Sent as "Authorization: Bearer <api_key>" whenever set.
# api_key = "sk-..."
# Defaults for requests that set none.
# temperature = 0.7
# max_tokens = 1024
# Seconds to connect to the upstream, and to wait for each piece of its answer.
connect_timeout = {remote_connect_timeout}
read_timeout = {remote_read_timeout}
# Extra headers sent upstream, e.g. {{ "OpenAI-Organization" = "org-..." }}.
headers = {remote_headers}
strict_model_names = {remote_strict_model_names}
# Connections to the upstream kept open for reuse.
max_connections = {remote_max_connections}
# Pass /v1/responses straight through to the upstream (which then stores the responses);
# false: translate them to its chat completions.
responses_passthrough = {remote_responses_passthrough}
# Seconds the upstream's model list (what /v1/models shows) is kept before it is asked again.
models_refresh = {remote_models_refresh}

# Several models instead of [local] / [remote]: one [[models]] entry each, routed by the
# request's "model". A local entry takes the [local] keys, a remote one (with base_url) the
# [remote] keys; model_name there is the upstream's name for it (by default the id). A remote
# entry without id serves every model its upstream lists.
# [[models]]
# id = "chat"
# aliases = ["gpt-4o-mini"]
# model_path = "models/chat.gguf"
# ttl = 600          # unload after 600 idle seconds
# preload = false    # true: load at start-up rather than on first use
#
# [[models]]
# id = "cloud"
# base_url = "https://api.openai.com/v1"
# api_key = "sk-..."
# model_name = "gpt-4o"

# Custom endpoints (they may also live in a file given with --custom-endpoints).
# [[endpoints]]
# method = "GET"
# path = "/api/version"
# response = {{ version = "1.0" }}
# status_code = 200
"""
