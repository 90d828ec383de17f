"""A server for the worker tests: ``python -m tests.support.worker_app HOST:PORT WORKERS
[SHUTDOWN_TIMEOUT] [broken]`` serves, without a model, ``GET /pid`` (the id of the process that
answered) in WORKERS processes, through the library API (``ServerBuilder.workers``). With
``broken``, it serves a backend of its own whose start fails, as one whose model store cannot be
reached would."""

from __future__ import annotations

import logging
import os
import sys

from helios_raw import Config, EndpointBuilder, ServerBuilder
from helios_raw.backends.base import Backend, BackendError

UNREACHABLE = "The model store at 10.0.0.1 cannot be reached."


def pid(request) -> dict:
    return {"pid": os.getpid()}


class Unreachable(Backend):
    """A backend whose start fails (it never serves a request)."""

    async def start(self) -> None:
        raise BackendError(UNREACHABLE)

    async def complete(self, request, cancel):
        raise NotImplementedError

    async def open_stream(self, request, cancel):
        raise NotImplementedError


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    address, workers = sys.argv[1], int(sys.argv[2])
    config = Config()
    if len(sys.argv) > 3:
        config.server.shutdown_timeout = float(sys.argv[3])
    builder = ServerBuilder(config).address(address).workers(workers)
    if sys.argv[4:] == ["broken"]:
        builder.backend(Unreachable())
    try:
        return builder.endpoint(EndpointBuilder.get("/pid").handle(pid).build()).serve()
    except BackendError as exc:
        print(f"worker_app: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
