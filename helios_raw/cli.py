"""The command line: ``python -m helios_raw [--bind HOST:PORT] ...`` and ``python -m helios_raw init``.

Every failure a user can cause ends with one sentence on stderr and a non-zero exit status.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import sys
from typing import Optional

from . import __version__
from .agent import Agent, AgentBackend
from .backends.base import BackendError
from .config import (
    MAX_WORKERS,
    Config,
    ConfigError,
    LocalConfig,
    load_config,
    local_problem,
)
from .endpoints import endpoints_from_toml
from .http.router import RouteConflict
from .server import Server, parse_address


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one sentence instead of usage + error
        self.exit(2, f"helios_raw: {message}; run with --help for usage.\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="helios_raw", description="An OpenAI-compatible LLM server on asyncio and h11.")
    parser.add_argument("--version", action="version", version=f"helios_raw {__version__}")
    parser.add_argument("--bind", metavar="HOST:PORT", help="address to listen on (default 127.0.0.1:8000; port 0 picks a free one)")
    parser.add_argument("--host", help="host to listen on (overrides --bind and the config)")
    parser.add_argument("--port", type=int, help="port to listen on (overrides --bind and the config)")
    parser.add_argument("--config", metavar="FILE", help="TOML config with [server], [local] or [remote] or [[models]], [[endpoints]]")
    parser.add_argument("--custom-endpoints", metavar="FILE", help="TOML file of [[endpoints]]")
    parser.add_argument("--backend", choices=("local", "remote"), help="force the local model or the remote upstream")
    parser.add_argument("--no-model", action="store_true",
                        help="serve no model: only /health and custom endpoints (no chat completions)")
    parser.add_argument("--model", metavar="PATH", help="GGUF model file to serve (implies the local backend)")
    parser.add_argument("--model-name", help="model id to serve it as (default: the file's name)")
    parser.add_argument("--chat-format", help="llama-cpp-python chat format, overriding the model's template")
    parser.add_argument("--threads", type=int, help="CPU threads for generation (default: the physical cores)")
    parser.add_argument("--parallel", type=int, metavar="N",
                        help="requests the local model generates at once (slots; default 4)")
    parser.add_argument("--agent", metavar="MODULE:OBJECT", help="serve an Agent (or a function returning one) from your code")
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"), help="logging level (default info)")
    parser.add_argument("--no-access-log", action="store_true", help="do not log one line per request")
    parser.add_argument("--workers", type=int, metavar="N",
                        help="processes sharing the port (remote and agent backends, custom endpoints; default 1)")
    parser.add_argument("--no-metrics", action="store_true", help="do not serve GET /metrics")
    parser.add_argument("--access-log-format", choices=("text", "json"),
                        help="access log lines as text (default) or as JSON objects, one a line")
    parser.add_argument("--shutdown-timeout", type=float, metavar="SECONDS",
                        help="on SIGINT/SIGTERM, how long requests in flight may take to finish (default 10)")
    sub = parser.add_subparsers(dest="command")
    init = sub.add_parser("init", help="write a commented example config")
    init.add_argument("--output", "-o", default="config.toml", help="where to write it (default config.toml)")
    init.add_argument("--force", action="store_true", help="overwrite an existing file")
    return parser


def main(argv: Optional[list] = None) -> int:
    args = build_parser().parse_args(argv)
    config = Config()
    try:
        if args.command == "init":
            from .init import write_example_config

            path = write_example_config(args.output, args.force)
            print(f"wrote {path}")
            return 0
        config = _config_from(args)
        _setup_logging(config.server.log_level, config.server.access_log_format)
        endpoints = endpoints_from_toml(args.custom_endpoints) if args.custom_endpoints else []
        agent = _agent_from(args.agent) if args.agent else None
        _choose_backend(args, config)
        backend = AgentBackend(agent, agent.name, config) if agent is not None else None
        return Server(config, backend, endpoints).serve()
    except (ConfigError, BackendError, RouteConflict) as exc:
        return _fail(str(exc))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return _fail(f"The address {config.server.host}:{config.server.port} is already in use.")
        if exc.errno == errno.EADDRNOTAVAIL or isinstance(exc, __import__("socket").gaierror):
            return _fail(f"Cannot listen on {config.server.host}:{config.server.port}: {exc.strerror or exc}.")
        if exc.errno == errno.EACCES:
            return _fail(f"Permission denied to listen on port {config.server.port}.")
        return _fail(f"{exc.strerror or exc}.")
    except KeyboardInterrupt:  # a second Ctrl-C during a graceful stop, or one during start-up
        return 130
    except Exception as exc:  # a bug, not a user's mistake: still one sentence, details in the log
        logging.getLogger("helios_raw").debug("unexpected error", exc_info=exc)
        return _fail(f"Unexpected error: {type(exc).__name__}: {exc} (run with --log-level debug for details)")


def _fail(sentence: str) -> int:
    sentence = sentence.rstrip()
    if not sentence.endswith((".", "!", "?")):
        sentence += "."
    print(f"helios_raw: {sentence}", file=sys.stderr)
    return 1


def _config_from(args: argparse.Namespace) -> Config:
    config = load_config(args.config)
    server = config.server
    if args.bind:
        if ":" not in args.bind or args.bind.endswith("]"):
            raise ConfigError(f"--bind needs HOST:PORT (for example 127.0.0.1:8000), not {args.bind!r}")
        try:
            server.host, server.port = parse_address(args.bind)
        except ValueError as exc:
            raise ConfigError(f"--bind: {exc}") from None
    if args.host:
        server.host = args.host
    if args.port is not None:
        if not 0 <= args.port <= 65535:
            raise ConfigError("--port must be between 0 and 65535")
        server.port = args.port
    if args.log_level:
        server.log_level = args.log_level
    if args.no_access_log:
        server.access_log = False
    if args.no_metrics:
        server.metrics = False
    if args.workers is not None:
        if not 1 <= args.workers <= MAX_WORKERS:
            raise ConfigError(f"--workers must be between 1 and {MAX_WORKERS}")
        server.workers = args.workers
    if args.access_log_format:
        server.access_log_format = args.access_log_format
    if args.shutdown_timeout is not None:
        if not args.shutdown_timeout >= 0:
            raise ConfigError("--shutdown-timeout must be a number of seconds, 0 or more")
        server.shutdown_timeout = args.shutdown_timeout
    if args.no_model and (args.model or args.agent or args.backend):
        raise ConfigError("--no-model cannot be combined with --model, --agent or --backend")
    local_flags = (args.model, args.model_name, args.chat_format, args.threads, args.parallel)
    if any(flag is not None for flag in local_flags):
        if config.local is None and (args.model or args.backend != "remote"):
            config.local = LocalConfig()
        if config.local is not None:
            local = config.local
            if args.model:
                if not os.path.exists(args.model):
                    raise ConfigError(f"The model file {args.model} does not exist")
                local.model_path, local.huggingface_repo, local.model_file = args.model, None, None
            local.model_name = args.model_name or local.model_name
            local.chat_format = args.chat_format or local.chat_format
            local.n_threads = local.n_threads if args.threads is None else args.threads
            local.parallel = local.parallel if args.parallel is None else args.parallel
            problem = local_problem(local)
            if problem:
                raise ConfigError(f"--{problem.replace('n_threads', 'threads')}")
    return config


def _choose_backend(args: argparse.Namespace, config: Config) -> None:
    """Leave in ``config`` the one backend section the flags and the file choose: none with
    ``--no-model``; ``--backend`` (or ``--model``, which means local) over the file's own choice;
    the default model when nothing names a backend."""
    if args.no_model:
        config.local = config.remote = None
        config.models = []
        return
    if config.models:
        if args.backend or args.model or args.model_name or args.chat_format or args.threads:
            raise ConfigError("--backend, --model, --model-name, --chat-format and --threads set up a single model, "
                              "but the config lists [[models]]; set these per model there")
        return
    kind = args.backend or ("local" if args.model else None) or config.backend_kind
    if kind == "remote":
        if config.remote is None:
            raise ConfigError("--backend remote needs a [remote] section with the upstream's base_url "
                              "in the file given with --config")
        config.local = None
    else:
        config.local = config.local or LocalConfig()
        config.remote = None


def _agent_from(spec: str) -> Agent:
    """The Agent ``spec`` names: an Agent, or a function that returns one when called with nothing."""
    agent = load_object(spec)
    if callable(agent) and not isinstance(agent, Agent):
        try:
            agent = agent()
        except Exception as exc:  # the user's function (or something else callable): say so, no traceback
            raise ConfigError(f"--agent {spec} is not an Agent, and calling it failed ({type(exc).__name__}: "
                              f"{exc})") from None
    if not isinstance(agent, Agent):
        raise ConfigError(f"--agent {spec} is not an Agent (nor a function returning one) but a "
                          f"{type(agent).__name__}")
    return agent


def load_object(spec: str):
    """``package.module:attribute`` -> the attribute; ConfigError with one sentence otherwise."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ConfigError(f"--agent must look like module.path:object, not {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # the user's module failed to import: say why, no traceback
        raise ConfigError(f"Cannot import {module_name}: {type(exc).__name__}: {exc}") from None
    try:
        obj = module
        for part in attribute.split("."):
            obj = getattr(obj, part)
    except AttributeError:
        raise ConfigError(f"{module_name} has no attribute {attribute}") from None
    return obj


def _setup_logging(level: str, access_format: str = "text") -> None:
    from .logs import setup_logging

    setup_logging(level, access_format)
