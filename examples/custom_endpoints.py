"""Add your own endpoints beside the OpenAI API: static JSON from a TOML file, and handlers in
Python that see the path parameters, the query and the body.

    python examples/custom_endpoints.py                     # endpoints and /health only
    python examples/custom_endpoints.py --model models/model.gguf   # ... plus a local model

    curl http://127.0.0.1:8000/api/version
    curl -X POST http://127.0.0.1:8000/api/echo/ada?shout=1 -d '{"greeting": "hello"}'
    curl http://127.0.0.1:8000/api/stats
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Optional

from helios_raw import (
    Config,
    ConfigError,
    EndpointBuilder,
    EndpointRequest,
    EndpointResponse,
    LocalConfig,
    Server,
    ServerBuilder,
    endpoints_from_toml,
    get,
)
from helios_raw.backends import BackendError

STATIC_ENDPOINTS = Path(__file__).with_name("custom_endpoints.toml")
STARTED = time.time()


def echo(request: EndpointRequest) -> EndpointResponse:
    """``POST /api/echo/{name}``: the name, the query and the JSON body back (sync: runs in a worker
    thread, so it may block)."""
    if not isinstance(request.body, dict):
        return EndpointResponse.bad_request("Send a JSON object as the body.")
    name = request.params["name"].upper() if request.query.get("shout") else request.params["name"]
    return EndpointResponse.ok({"name": name, "query": request.query, "body": request.body})


async def stats(request: EndpointRequest) -> dict:
    """``GET /api/stats``: an async handler; a plain dict is answered 200 as JSON."""
    await asyncio.sleep(0)
    return {"uptime_seconds": round(time.time() - STARTED, 3)}


def endpoints() -> list:
    return [
        *endpoints_from_toml(str(STATIC_ENDPOINTS)),
        get("/api/ping", {"pong": True}),
        EndpointBuilder.post("/api/echo/{name}").handle(echo).description("Echo a name and a body").build(),
        EndpointBuilder.get("/api/stats").handle(stats).description("Uptime").build(),
    ]


def build_server(address: str = "127.0.0.1:8000", model_path: Optional[str] = None) -> Server:
    """The endpoints on ``address``; with ``model_path``, a local model's OpenAI API beside them."""
    if model_path is None:
        return ServerBuilder().address(address).endpoints(endpoints()).build()
    config = Config(local=LocalConfig(model_path=model_path))
    return ServerBuilder(config).address(address).endpoints(endpoints()).build()


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(description="Serve custom endpoints (and optionally a local model).")
    parser.add_argument("--model", help="a .gguf file to serve beside the endpoints")
    parser.add_argument("--bind", default="127.0.0.1:8000", help="HOST:PORT to listen on")
    args = parser.parse_args(argv)
    try:
        build_server(args.bind, args.model).serve()
    except (BackendError, ConfigError, ValueError) as exc:
        print(f"custom_endpoints: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
