"""Embeddings and loading models on demand, measured side by side in one run.

- **embeddings/s**: ``POST /v1/embeddings`` with a batch of 64 short texts, one request after
  another on a keep-alive connection, against helios_raw (a ``[[models]]`` local entry),
  llama-cpp-python's server (``--embedding true``) and llama.cpp's ``llama-server --embeddings``
  (where it is built, see ``tests/support/upstreams.py``), all on the same GGUF with the same
  threads and context. The targets take turns each round; the figure is the median of
  64 / (seconds per request), with each peer's ratio to helios_raw.
- **first-request latency**: helios_raw with two local models and ``max_loaded_models = 1``: a
  chat request (``max_tokens: 1``) to the model that is not loaded (it unloads the other, then
  loads this one) against the same request to the loaded one, alternating; medians and ratio.

The embedding model must have a pooling type (an embedding model; the default is the tiny test
model built with mean pooling). Printed, and written to ``benchmarks/results/models_bench.json``.

Usage: ``python -m benchmarks.models_bench [--model EMBED.gguf] [--chat-model CHAT.gguf]
[--threads 2] [--rounds 10]``
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from .peers import (
    ModelSetup,
    Server,
    ServerFailed,
    _project_path,
    free_port,
    llama_cpp_server,
    peer_missing,
    stop_all,
)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "models_bench.json"
LLAMA_SERVER = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "helios_raw" \
    / "llama-server-0.3.36" / "llama-server"
TEXTS = [f"Short text number {i}: the {w} sat on the mat." for i, w in
         enumerate(["cat", "dog", "fox", "owl", "bee", "elk", "yak", "emu"] * 8)]


def helios_models(models: list, setup: ModelSetup, workdir: str, name: str, max_loaded: int = 3) -> Server:
    """helios_raw serving ``models`` ((id, path) pairs) as ``[[models]]``, not yet started."""
    port = free_port()
    config = os.path.join(workdir, f"{name}.toml")
    with open(config, "w") as out:
        out.write(f"[server]\nmax_loaded_models = {max_loaded}\n")
        for model_id, path in models:
            out.write(f'\n[[models]]\nid = "{model_id}"\nmodel_path = "{path}"\ncontext_size = {setup.n_ctx}\n'
                      f"n_threads = {setup.threads}\n")
    argv = [sys.executable, "-m", "helios_raw", "--bind", f"127.0.0.1:{port}", "--config", config,
            "--no-access-log", "--log-level", "warning"]
    env = dict(os.environ, PYTHONPATH=_project_path())
    return Server(name, argv, port, "/health", lambda status, body: status == 200, env=env)


def llama_server(setup: ModelSetup) -> Server:
    """llama.cpp's llama-server on ``setup`` with embeddings on and one slot, not yet started."""
    port = free_port()
    argv = [str(LLAMA_SERVER), "-m", setup.model_path, "--host", "127.0.0.1", "--port", str(port), "-c",
            str(setup.n_ctx), "-t", str(setup.threads), "-np", "1", "--embeddings"]
    return Server("llama-server --embeddings", argv, port, "/health", lambda status, body: status == 200)


class KeepAlive:
    """One keep-alive connection timing JSON POSTs."""

    def __init__(self, port: int) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)

    def post(self, path: str, body: dict) -> tuple[float, int, bytes]:
        data = json.dumps(body).encode()
        started = time.perf_counter()
        self.connection.request("POST", path, data, {"content-type": "application/json"})
        response = self.connection.getresponse()
        answer = response.read()
        return time.perf_counter() - started, response.status, answer


def embeddings_per_second(targets: dict, rounds: int) -> dict:
    """Texts embedded per second per target (median over ``rounds``), or the error it answered."""
    connections = {name: KeepAlive(server.port) for name, server in targets.items()}
    samples: dict = {name: [] for name in targets}
    errors: dict = {}
    names = list(targets)
    for round_ in range(rounds + 1):  # the first round warms up and is not counted
        for name in names[round_ % len(names):] + names[:round_ % len(names)]:
            if name in errors:
                continue
            seconds, status, answer = connections[name].post("/v1/embeddings", {"model": "embed", "input": TEXTS})
            if status != 200 or len(json.loads(answer).get("data", [])) != len(TEXTS):
                errors[name] = f"{status}: {answer[:300].decode('utf-8', 'replace')}"
            elif round_:
                samples[name].append(len(TEXTS) / seconds)
    return {name: {"texts_per_second": statistics.median(values) if values else None, "samples": values,
                   "error": errors.get(name)} for name, values in samples.items()}


def first_request_latency(server: Server, rounds: int) -> dict:
    """Seconds of a one-token chat answer from an unloaded model against a loaded one."""
    connection = KeepAlive(server.port)
    body = {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 1, "temperature": 0}
    unloaded, loaded = [], []
    connection.post("/v1/chat/completions", {**body, "model": "b"})  # warm the file cache
    for _ in range(rounds):
        for model in ("a", "b"):
            seconds, status, answer = connection.post("/v1/chat/completions", {**body, "model": model})
            if status != 200:
                return {"error": f"{status}: {answer[:300].decode('utf-8', 'replace')}"}
            unloaded.append(seconds)
            seconds, status, _ = connection.post("/v1/chat/completions", {**body, "model": model})
            loaded.append(seconds)
    result = {"unloaded_ms": statistics.median(unloaded) * 1000, "loaded_ms": statistics.median(loaded) * 1000,
              "unloaded_samples": unloaded, "loaded_samples": loaded}
    result["ratio"] = result["unloaded_ms"] / result["loaded_ms"]
    return result


def default_embedding_model(workdir: str) -> str:
    from tests.support.tiny_model import build_tiny_gguf

    return str(build_tiny_gguf(Path(workdir) / "tiny-pooled.gguf", seed=3, pooling="mean"))


def default_chat_model(embedding_model: str) -> str:
    try:
        from helios_raw.backends.local.model_files import default_model_path

        return str(default_model_path())
    except Exception:
        return embedding_model


def run(args: argparse.Namespace, workdir: str) -> dict:
    embedding = ModelSetup(args.model or default_embedding_model(workdir), args.threads, args.n_ctx)
    chat_model = args.chat_model or default_chat_model(embedding.model_path)
    targets = {"helios_raw": helios_models([("embed", embedding.model_path)], embedding, workdir, "helios_raw")}
    notes = []
    if peer_missing():
        notes.append(f"llama_cpp.server left out: {', '.join(peer_missing())} missing")
    else:
        peer = llama_cpp_server(embedding)
        peer.env["EMBEDDING"] = "true"
        targets[peer.name] = peer
    if LLAMA_SERVER.exists():
        targets["llama-server"] = llama_server(embedding)
    else:
        notes.append(f"llama-server left out: not built at {LLAMA_SERVER}")
    for server in targets.values():
        server.start()
    for server in targets.values():
        server.wait_ready()
    results = {"embeddings": embeddings_per_second(targets, args.rounds)}
    for server in targets.values():
        server.stop()
    swapping = helios_models([("a", chat_model), ("b", chat_model)], ModelSetup(chat_model, args.threads, args.n_ctx),
                             workdir, "helios_raw-swapping", max_loaded=1).start()
    swapping.wait_ready()
    results["first_request"] = first_request_latency(swapping, args.rounds)
    swapping.stop()
    results.update(notes=notes, embedding_model=embedding.model_path, chat_model=chat_model, threads=args.threads,
                   n_ctx=args.n_ctx, machine={"python": platform.python_version(), "cpus": os.cpu_count(),
                                              "platform": platform.platform()})
    return results


def report(results: dict) -> str:
    lines = ["| target | embeddings/s (64 texts per request) | vs helios_raw |", "|---|---:|---:|"]
    base = results["embeddings"]["helios_raw"]["texts_per_second"]
    for name, row in results["embeddings"].items():
        rate = row["texts_per_second"]
        ratio = f"{rate / base:.2f}x" if rate and base else ""
        lines.append(f"| {name} | {f'{rate:,.0f}' if rate else row['error']} | {ratio} |")
    first = results["first_request"]
    lines.append("")
    if "error" in first:
        lines.append(f"first request: {first['error']}")
    else:
        lines.append(f"first request to an unloaded model: {first['unloaded_ms']:.1f} ms; to a loaded one: "
                     f"{first['loaded_ms']:.1f} ms ({first['ratio']:.1f}x)")
    lines.extend(f"note: {note}" for note in results["notes"])
    return "\n".join(lines)


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="embedding GGUF with a pooling type (default: the tiny test model, mean pooled)")
    parser.add_argument("--chat-model", help="GGUF for the first-request latency (default: the default model)")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--n-ctx", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args(argv)
    try:
        with tempfile.TemporaryDirectory(prefix="models-bench-") as workdir:
            results = run(args, workdir)
    except ServerFailed as exc:
        print(f"models_bench: {exc}", file=sys.stderr)
        return 1
    finally:
        stop_all()
    print(report(results))
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
