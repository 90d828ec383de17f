"""Configuration: a TOML file, then environment variables, then command-line flags, validated
into one :class:`Config`. Any problem is a :class:`ConfigError` whose message is one sentence."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field, fields
from typing import Any, Optional

from .http.limits import Limits

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


LOG_LEVELS = ("debug", "info", "warning", "error")
ACCESS_LOG_FORMATS = ("text", "json")


class ConfigError(Exception):
    """The configuration is unusable; the message says why in one sentence."""


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    #: When set, every route but /health requires ``Authorization: Bearer <api_key>``.
    api_key: Optional[str] = None
    #: Origins allowed by CORS; ``["*"]`` allows any.
    cors_origins: list = field(default_factory=lambda: ["*"])
    #: Seconds a graceful shutdown waits for requests in flight.
    shutdown_timeout: float = 10.0
    access_log: bool = True
    #: The access log's lines: "text", or "json" (one object a line).
    access_log_format: str = "text"
    log_level: str = "info"
    limits: Limits = field(default_factory=Limits)


@dataclass
class LocalConfig:
    """The ``[local]`` section: a GGUF model run in-process by llama.cpp."""

    model_path: Optional[str] = None
    huggingface_repo: Optional[str] = None
    model_file: Optional[str] = None
    #: The id served in ``/v1/models``; defaults to the model file's name without ``.gguf``.
    model_name: Optional[str] = None
    context_size: int = 2048
    temperature: float = 0.7
    max_tokens: int = 2048
    n_threads: Optional[int] = None
    n_gpu_layers: int = 0
    #: A llama-cpp-python chat format name, overriding the model's own template.
    chat_format: Optional[str] = None
    #: Answer 404 ``model_not_found`` for a request naming another model.
    strict_model_names: bool = False
    #: Requests that may wait for the model; more are answered 429.
    max_queue: int = 16
    #: Seconds one generation may run before it ends with ``finish_reason: "length"``.
    request_timeout: float = 600.0
    seed: Optional[int] = None


@dataclass
class RemoteConfig:
    """The ``[llm]`` section: a remote OpenAI-compatible upstream."""

    model_name: str = "gpt-4o-mini"
    base_url: str = "https://api.openai.com/v1"
    api_key: Optional[str] = None
    temperature: Optional[float] = None
    max_tokens: Optional[int] = None
    connect_timeout: float = 10.0
    read_timeout: float = 120.0
    headers: dict = field(default_factory=dict)
    strict_model_names: bool = False
    max_connections: int = 32


@dataclass
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    local: Optional[LocalConfig] = None
    llm: Optional[RemoteConfig] = None
    #: Custom endpoints declared inline (``[[endpoints]]``), same format as --custom-endpoints.
    endpoints: list = field(default_factory=list)

    @property
    def backend_kind(self) -> str:
        """``local`` when a ``[local]`` section is present, else ``remote`` when ``[llm]`` is, else
        ``local`` with the default model (as the original chooses)."""
        if self.local is not None:
            return "local"
        if self.llm is not None:
            return "remote"
        return "local"


def read_toml(path: str) -> dict:
    """Parse a TOML file, turning every failure into one sentence."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"The file {path} does not exist.") from None
    except IsADirectoryError:
        raise ConfigError(f"{path} is a directory, not a TOML file.") from None
    except PermissionError:
        raise ConfigError(f"The file {path} cannot be read (permission denied).") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"The file {path} is not valid TOML: {exc}.") from None
    except UnicodeDecodeError:
        raise ConfigError(f"The file {path} is not UTF-8 text.") from None


def load_config(path: Optional[str] = None, environ: Optional[dict] = None) -> Config:
    """The config from ``path`` (if any) and the environment (``HELIOS_API_KEY``)."""
    data = read_toml(path) if path else {}
    config = config_from_dict(data, path or "the configuration")
    env = os.environ if environ is None else environ
    if env.get("HELIOS_API_KEY"):
        config.server.api_key = env["HELIOS_API_KEY"]
    return config


def config_from_dict(data: dict, where: str = "the configuration") -> Config:
    known = {"server", "local", "llm", "endpoints"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where} has an unknown section {unknown[0]!r} (known: {', '.join(sorted(known))}).")
    server_data = dict(_table(data, "server", where))
    limits_data = server_data.pop("limits", {})
    server = _build(ServerConfig, server_data, f"[server] in {where}")
    try:
        server.limits = Limits.from_mapping(_table({"limits": limits_data}, "limits", where))
    except ValueError as exc:
        raise ConfigError(f"[server.limits] in {where}: {exc}.") from None
    if not isinstance(server.cors_origins, list) or not all(isinstance(o, str) for o in server.cors_origins):
        raise ConfigError(f"[server] cors_origins in {where} must be a list of strings.")
    if not 0 <= server.port <= 65535:
        raise ConfigError(f"[server] port in {where} must be between 0 and 65535.")
    if not server.host:
        raise ConfigError(f"[server] host in {where} must not be empty.")
    if server.shutdown_timeout < 0:
        raise ConfigError(f"[server] shutdown_timeout in {where} must be 0 or more seconds.")
    if server.access_log_format not in ACCESS_LOG_FORMATS:
        raise ConfigError(f"[server] access_log_format in {where} must be one of "
                          f"{', '.join(ACCESS_LOG_FORMATS)}, not {server.access_log_format!r}.")
    if server.log_level not in LOG_LEVELS:
        raise ConfigError(f"[server] log_level in {where} must be one of {', '.join(LOG_LEVELS)}, "
                          f"not {server.log_level!r}.")
    config = Config(server=server)
    if "local" in data:
        config.local = _build(LocalConfig, _table(data, "local", where), f"[local] in {where}")
        if config.local.max_queue < 0 or config.local.context_size <= 0 or config.local.max_tokens <= 0:
            raise ConfigError(f"[local] in {where}: max_queue, context_size and max_tokens must be positive.")
    if "llm" in data:
        config.llm = _build(RemoteConfig, _table(data, "llm", where), f"[llm] in {where}")
    endpoints = data.get("endpoints", [])
    if not isinstance(endpoints, list):
        raise ConfigError(f"'endpoints' in {where} must be an array of tables ([[endpoints]]).")
    config.endpoints = endpoints
    return config


def _table(data: dict, key: str, where: str) -> dict:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"'{key}' in {where} must be a table.")
    return value


def _build(cls, values: dict, where: str):
    """Construct dataclass ``cls`` from ``values``, checking names and types."""
    specs = {f.name: f for f in fields(cls)}
    defaults = cls()
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in specs:
            raise ConfigError(f"{where} has an unknown key {key!r} (known: {', '.join(sorted(specs))}).")
        expected = type(getattr(defaults, key))
        if getattr(defaults, key) is None:
            expected = _OPTIONAL_TYPES.get(key, str)
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise ConfigError(f"{where}: {key} must be {_TYPE_NAMES.get(expected, expected.__name__)}, not {value!r}.")
        kwargs[key] = value
    return cls(**kwargs)


_OPTIONAL_TYPES = {"n_threads": int, "seed": int, "temperature": float, "max_tokens": int}
_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
               list: "a list", dict: "a table"}
