"""Proxy a remote OpenAI-compatible API: OpenAI, vLLM, llama-server, Ollama, another helios_raw.

    OPENAI_API_KEY=sk-... python examples/proxy_remote.py                     # OpenAI, gpt-4o-mini
    python examples/proxy_remote.py --base-url http://127.0.0.1:11434/v1 --model llama3.2   # Ollama

Clients talk to http://127.0.0.1:8000/v1 as they would to the upstream; every parameter they send
is passed through, streams are relayed chunk by chunk, and the upstream's key stays on the server.
With ``--require-key KEY`` our own clients must send ``Authorization: Bearer KEY``.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional

from helios_raw import Config, ConfigError, RemoteConfig, Server, ServerBuilder
from helios_raw.backends import BackendError


def build_server(base_url: str = "https://api.openai.com/v1", model_name: str = "gpt-4o-mini",
                 upstream_key: Optional[str] = None, address: str = "127.0.0.1:8000",
                 require_key: Optional[str] = None) -> Server:
    """A server on ``address`` that answers as ``model_name`` by asking ``base_url``."""
    config = Config(remote=RemoteConfig(model_name=model_name, base_url=base_url, api_key=upstream_key,
                                     read_timeout=300.0))
    return ServerBuilder(config).address(address).api_key(require_key).build()


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(description="Proxy a remote OpenAI-compatible API.")
    parser.add_argument("--base-url", default="https://api.openai.com/v1", help="the upstream's /v1 URL")
    parser.add_argument("--model", default="gpt-4o-mini", help="the upstream model to serve")
    parser.add_argument("--bind", default="127.0.0.1:8000", help="HOST:PORT to listen on")
    parser.add_argument("--require-key", help="an API key our own clients must send")
    args = parser.parse_args(argv)
    try:
        server = build_server(args.base_url, args.model, os.environ.get("OPENAI_API_KEY"), args.bind,
                              args.require_key)
        server.serve()
    except (BackendError, ConfigError, ValueError) as exc:
        print(f"proxy_remote: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
