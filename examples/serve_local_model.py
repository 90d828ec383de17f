"""Serve a local GGUF model behind the OpenAI API.

    python examples/serve_local_model.py                              # the default small model
    python examples/serve_local_model.py models/model.gguf --bind 127.0.0.1:8080

Then talk to it with any OpenAI client, or::

    curl http://127.0.0.1:8000/v1/chat/completions -H 'content-type: application/json' \\
         -d '{"model": "local", "messages": [{"role": "user", "content": "Hello!"}]}'

The model loads in the background; /health answers "loading" until it is ready.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional

from helios_raw import Config, ConfigError, LocalConfig, Server, ServerBuilder
from helios_raw.backends import BackendError


def build_server(model_path: Optional[str] = None, address: str = "127.0.0.1:8000",
                 model_name: Optional[str] = None, max_tokens: int = 512) -> Server:
    """A server for the model at ``model_path`` (None: the default model) on ``address``."""
    config = Config(local=LocalConfig(model_path=model_path, model_name=model_name, max_tokens=max_tokens))
    return ServerBuilder(config).address(address).build()


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(description="Serve a local GGUF model behind the OpenAI API.")
    parser.add_argument("model", nargs="?", help="a .gguf file (default: the default small model)")
    parser.add_argument("--bind", default="127.0.0.1:8000", help="HOST:PORT to listen on")
    parser.add_argument("--model-name", help="the model id clients use (default: the file's name)")
    args = parser.parse_args(argv)
    try:
        build_server(args.model, args.bind, args.model_name).serve()
    except (BackendError, ConfigError, ValueError) as exc:
        print(f"serve_local_model: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
