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
MAX_WORKERS = 64
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
    #: Responses kept in memory for ``GET /v1/responses/{id}`` and ``previous_response_id``
    #: (the oldest go first; all are lost on restart), and for how many seconds each.
    responses_store_size: int = 1000
    responses_store_ttl: float = 3600.0
    #: Serve ``GET /metrics`` (Prometheus text), behind the API key like every route but /health.
    metrics: bool = True
    #: Processes sharing the port (the remote and agent backends and custom endpoints; a local
    #: model is refused: each process would load its own copy).
    workers: int = 1
    #: Local models kept loaded at once; loading one more unloads the least recently used.
    max_loaded_models: int = 3
    #: Seconds a request waits for its model to load (or for room to load it) before a 503.
    load_wait_timeout: float = 120.0


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
    #: Requests that may wait for a slot; more are answered 429.
    max_queue: int = 16
    #: Seconds one generation may run before it ends with ``finish_reason: "length"``.
    request_timeout: float = 600.0
    seed: Optional[int] = None
    #: Requests generated at once (slots), each with its own ``context_size`` of KV cache.
    parallel: int = 4
    #: Prompt tokens evaluated per step beside the running streams (chunked prefill).
    prefill_chunk: int = 256
    #: llama.cpp's flash attention (makes answers independent of the cache's history).
    flash_attention: bool = True
    #: Seconds a stream whose client reads nothing keeps its slot while other requests wait.
    stall_timeout: float = 10.0


@dataclass
class RemoteConfig:
    """The ``[remote]`` section (also accepted under its older name ``[llm]``): the upstream, an
    OpenAI-compatible server the remote backend proxies."""

    #: The section's name as the user wrote it, for messages (not a setting).
    section = "remote"

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
    #: Pass ``/v1/responses`` straight through to the upstream's ``/responses`` (which then
    #: stores the responses); off: translate them to its chat completions.
    responses_passthrough: bool = True
    #: Seconds the upstream's model list is cached before it is asked again.
    models_refresh: float = 60.0


@dataclass
class ModelConfig:
    """One ``[[models]]`` entry: a model served under ``id`` (and its ``aliases``), either a local
    GGUF (``local``) or a remote upstream (``remote``).

    A local entry without ``id`` is served as its file's name; a remote entry without ``id``
    serves every model its upstream lists, under the upstream's ids. ``ttl`` (local only) unloads
    the model after that many idle seconds; ``preload`` loads it at start-up instead of on first
    use.
    """

    id: Optional[str] = None
    aliases: list = field(default_factory=list)
    local: Optional[LocalConfig] = None
    remote: Optional[RemoteConfig] = None
    ttl: Optional[float] = None
    preload: bool = False

    @property
    def kind(self) -> str:
        return "remote" if self.remote is not None else "local"


@dataclass
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    local: Optional[LocalConfig] = None
    remote: Optional[RemoteConfig] = None
    #: Custom endpoints declared inline (``[[endpoints]]``), same format as --custom-endpoints.
    endpoints: list = field(default_factory=list)
    #: Several models (``[[models]]``); empty when the config uses ``[local]`` or ``[remote]``.
    models: list = field(default_factory=list)

    @property
    def backend_kind(self) -> str:
        """``"models"`` when the config lists ``[[models]]``; else ``"local"`` when a ``[local]``
        section is present, else ``"remote"`` when ``[remote]`` is, else ``"local"`` with the
        default model (as the original chooses)."""
        if self.models:
            return "models"
        return "remote" if self.local is None and self.remote is not None else "local"

    @property
    def names_backend(self) -> bool:
        """Whether a backend section is present (an embedding program serves no model otherwise)."""
        return self.local is not None or self.remote is not None or bool(self.models)

    @property
    def strict_model_names(self) -> bool:
        """Whether a request naming another model is a 404 when one model is served (with
        several, an unknown model always is)."""
        if self.models:
            return any((m.local or m.remote).strict_model_names for m in self.models)
        section = self.local if self.local is not None else self.remote
        return bool(section is not None and section.strict_model_names)


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
    known = {"server", "local", "remote", "llm", "endpoints", "models"}
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
    if server.responses_store_size < 0 or server.responses_store_ttl <= 0:
        raise ConfigError(f"[server] in {where}: responses_store_size must be 0 or more and responses_store_ttl "
                          "positive.")
    if not 1 <= server.workers <= MAX_WORKERS:
        raise ConfigError(f"[server] workers in {where} must be between 1 and {MAX_WORKERS}.")
    if server.max_loaded_models < 1 or server.load_wait_timeout <= 0:
        raise ConfigError(f"[server] in {where}: max_loaded_models must be at least 1 and load_wait_timeout positive.")
    if server.access_log_format not in ACCESS_LOG_FORMATS:
        raise ConfigError(f"[server] access_log_format in {where} must be one of "
                          f"{', '.join(ACCESS_LOG_FORMATS)}, not {server.access_log_format!r}.")
    if server.log_level not in LOG_LEVELS:
        raise ConfigError(f"[server] log_level in {where} must be one of {', '.join(LOG_LEVELS)}, "
                          f"not {server.log_level!r}.")
    config = Config(server=server)
    if "local" in data:
        config.local = _build(LocalConfig, _table(data, "local", where), f"[local] in {where}")
        problem = local_problem(config.local)
        if problem:
            raise ConfigError(f"[local] in {where}: {problem}.")
    if "remote" in data and "llm" in data:
        raise ConfigError(f"{where} has both [remote] and [llm], two names for the same section; keep one.")
    for section in ("remote", "llm"):
        if section in data:
            config.remote = _build(RemoteConfig, _table(data, section, where), f"[{section}] in {where}")
            config.remote.section = section
    if "models" in data:
        if any(section in data for section in ("local", "remote", "llm")):
            raise ConfigError(f"{where} has both [[models]] and a [local] or [remote] section; list every model "
                              "under [[models]].")
        config.models = models_from_list(data["models"], where)
    endpoints = data.get("endpoints", [])
    if not isinstance(endpoints, list):
        raise ConfigError(f"'endpoints' in {where} must be an array of tables ([[endpoints]]).")
    config.endpoints = endpoints
    return config


def local_problem(local: LocalConfig) -> Optional[str]:
    """What is wrong with ``local``'s values, as a clause naming the key, or None."""
    checks = [
        ("context_size", local.context_size >= 16, "at least 16"),
        ("max_tokens", local.max_tokens >= 1, "at least 1"),
        ("temperature", 0.0 <= local.temperature <= 2.0, "between 0 and 2"),
        ("n_threads", local.n_threads is None or local.n_threads >= 1, "at least 1"),
        ("n_gpu_layers", local.n_gpu_layers >= -1, "-1 (all) or more"),
        ("max_queue", local.max_queue >= 0, "0 or more"),
        ("request_timeout", local.request_timeout > 0, "a positive number of seconds"),
        ("parallel", 1 <= local.parallel <= 64, "between 1 and 64"),
        ("prefill_chunk", 1 <= local.prefill_chunk <= 8192, "between 1 and 8192"),
        ("stall_timeout", local.stall_timeout > 0, "a positive number of seconds"),
    ]
    for key, ok, expected in checks:
        if not ok:
            return f"{key} must be {expected}, not {getattr(local, key)!r}"
    return None


def models_from_list(entries: Any, where: str) -> list:
    """The ``[[models]]`` entries, checked: one kind each, ids and aliases unique."""
    if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
        raise ConfigError(f"'models' in {where} must be a non-empty array of tables ([[models]]).")
    models, names = [], set()
    for number, entry in enumerate(entries, 1):
        model = _model_entry(dict(entry), f"[[models]] entry {number} in {where}")
        for name in ([model.id] if model.id else []) + model.aliases:
            if name in names:
                raise ConfigError(f"{where} serves two models as {name!r}; ids and aliases must be unique.")
            names.add(name)
        models.append(model)
    return models


def _model_entry(entry: dict, where: str) -> ModelConfig:
    model = ModelConfig()
    model.id = entry.pop("id", None)
    if model.id is not None and (not isinstance(model.id, str) or not model.id):
        raise ConfigError(f"{where}: id must be a non-empty string.")
    where = f"[[models]] entry {model.id!r}" + where[where.index(" in "):] if model.id else where
    model.aliases = entry.pop("aliases", [])
    if not isinstance(model.aliases, list) or not all(isinstance(a, str) and a for a in model.aliases):
        raise ConfigError(f"{where}: aliases must be a list of non-empty strings.")
    preload = entry.pop("preload", False)
    if not isinstance(preload, bool):
        raise ConfigError(f"{where}: preload must be true or false.")
    model.preload = preload
    ttl = entry.pop("ttl", None)
    if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or ttl <= 0):
        raise ConfigError(f"{where}: ttl must be a positive number of seconds.")
    model.ttl = None if ttl is None else float(ttl)
    kind = entry.pop("backend", "remote" if "base_url" in entry else "local")
    if kind == "remote":
        if ttl is not None or preload:
            raise ConfigError(f"{where}: ttl and preload apply to local models only.")
        model.remote = _build(RemoteConfig, entry, where)
        model.remote.section = where
        if model.id and "model_name" not in entry:
            model.remote.model_name = model.id
    elif kind == "local":
        if "model_name" in entry:
            raise ConfigError(f"{where}: a local model is named by id, not model_name.")
        model.local = _build(LocalConfig, entry, where)
        model.local.model_name = model.id
        problem = local_problem(model.local)
        if problem:
            raise ConfigError(f"{where}: {problem}.")
    else:
        raise ConfigError(f"{where}: backend must be \"local\" or \"remote\", not {kind!r}.")
    if model.aliases and not model.id:
        raise ConfigError(f"{where}: aliases need an id.")
    return model


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
