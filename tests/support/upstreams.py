"""Real OpenAI-compatible engines as upstreams for the remote backend, run as processes on
loopback: llama-cpp-python's own server (``python -m llama_cpp.server``, always installed with the
test extra) and llama.cpp's ``llama-server`` (built from the llama-cpp-python sdist's sources;
present only where it has been built, see :data:`LLAMA_SERVER`).

Both serve a tiny GGUF with a pooling type, so that the same process answers chat, text
completions and embeddings.
"""

from __future__ import annotations

import json
import pathlib
import socket
import subprocess
import sys
import time
import urllib.request
from typing import Optional

from benchmarks.llama_server import cache_dir

#: Where ``python -m benchmarks.llama_server build`` caches llama-server (the llama.cpp of the
#: pinned llama-cpp-python).
LLAMA_SERVER = cache_dir() / "llama-server"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EngineProcess:
    """An engine started with ``args`` (``{port}`` replaced by a free port), ready once
    ``GET /v1/models`` answers; :meth:`stop` ends it. ``log`` holds what it printed."""

    def __init__(self, args: list, cwd: pathlib.Path, timeout: float = 120.0) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.log_path = cwd / f"engine-{self.port}.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen([a.replace("{port}", str(self.port)) for a in args], cwd=cwd,
                                            stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while self.models() is None:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{args[0]} did not start: {self.log()[-2000:]}")
            time.sleep(0.1)

    def models(self) -> Optional[dict]:
        try:
            with urllib.request.urlopen(self.base_url + "/models", timeout=2) as answer:
                return json.loads(answer.read())
        except (OSError, ValueError):
            return None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def llama_cpp_server(model: pathlib.Path, cwd: pathlib.Path) -> EngineProcess:
    """llama-cpp-python's server on ``model``, embeddings on, one thread."""
    return EngineProcess([sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1",
                          "--port", "{port}", "--embedding", "true", "--n_ctx", "512", "--n_threads", "1"], cwd)


def llama_server(model: pathlib.Path, cwd: pathlib.Path, context: int = 512) -> EngineProcess:
    """llama.cpp's llama-server on ``model``: one slot, one thread, embeddings on."""
    return EngineProcess([str(LLAMA_SERVER), "-m", str(model), "--host", "127.0.0.1", "--port", "{port}",
                          "-c", str(context), "-np", "1", "-t", "1", "--embeddings"], cwd)
