"""What the remote backend adds: client -> helios_raw (remote backend) -> upstream, against
client -> upstream directly, with the same upstream, in one run.

The upstream is a helios_raw process serving the tiny test model (``tests/support/tiny_model.py``),
which answers in a few milliseconds, so the proxy's cost is not hidden under generation time; with
``--upstream llama-server`` it is llama.cpp's llama-server on the same model (where it is built, see
``tests/support/upstreams.py``), whose objects the proxy normalises (llama-server closes its
connection after each stream: the direct path reconnects then, outside the timing). The proxy is a second
helios_raw process whose ``[llm]`` section points at it. Both run with one model thread and no
access log.

Requests alternate between the paths in ABBA order (direct, proxied, proxied, direct, ...), each path
on its own keep-alive connection, so drifts in machine load fall on both alike. Measured:

- **request**: a non-streamed completion of one token, from sending the request to having read the
  whole response;
- **stream**: a streamed completion of ``--tokens`` tokens: time to the first content event, the
  time per content event after it (first to last content event, over the events less one), and
  the whole stream (sending to ``[DONE]``). Events arrive in bursts (several per read) when the
  model outpaces the reader, so the gaps between single events say little; the time per event
  is the per-chunk cost.

The client reads raw bytes from a blocking socket and stamps each event with ``perf_counter`` when
the bytes holding it are read. Printed and written to ``benchmarks/results/proxy_bench.json``:
medians per path, proxied minus direct (the added milliseconds) and proxied over direct (a ratio).

Usage: ``python -m benchmarks.proxy_bench [--requests 200] [--streams 40] [--tokens 128]
[--upstream helios|llama-server]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator, Optional

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "proxy_bench.json"
MESSAGES = [{"role": "user", "content": "Tell me a story about a lighthouse."}]


class HeliosServer:
    """``python -m helios_raw --config FILE`` on a free port; stopped by its process id."""

    def __init__(self, config: Path) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        argv = [sys.executable, "-m", "helios_raw", "--bind", "127.0.0.1:0", "--config", str(config),
                "--no-access-log"]
        self.process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.port = self._port_from_output()
        self._drainer = threading.Thread(target=lambda: [None for _ in self.process.stdout], daemon=True)
        self._drainer.start()
        self._wait_ready()

    def _wait_ready(self, timeout: float = 60.0) -> None:
        """Poll ``/health`` until it says ``ok`` (a model loads after the server listens)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
                sock.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                answer = b""
                while chunk := sock.recv(65536):
                    answer += chunk
            if b'"status":"ok"' in answer:
                return
            time.sleep(0.05)
        raise RuntimeError(f"helios_raw on port {self.port} did not become ready in {timeout:g} seconds")

    def _port_from_output(self) -> int:
        lines = []
        for line in self.process.stdout:
            lines.append(line)
            found = re.search(r"listening on http://\S+:(\d+)", line)
            if found:
                return int(found.group(1))
        raise RuntimeError("helios_raw exited before listening:\n" + "".join(lines))

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._drainer.join(5)
        self.process.stdout.close()


class LlamaServer:
    """llama.cpp's ``llama-server`` on ``model`` (one slot, one thread) on a free port; stopped by
    its process id."""

    def __init__(self, model: Path) -> None:
        from tests.support.upstreams import LLAMA_SERVER, free_port

        if not LLAMA_SERVER.exists():
            raise RuntimeError(f"llama-server is not built at {LLAMA_SERVER}")
        self.port = free_port()
        self.process = subprocess.Popen([str(LLAMA_SERVER), "-m", str(model), "--host", "127.0.0.1", "--port",
                                         str(self.port), "-c", "2048", "-np", "1", "-t", "1"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
                    sock.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                    if b" 200 " in sock.recv(65536):
                        return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("llama-server did not become ready in 60 seconds")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            self.process.wait(15)


class KeepAlive:
    """One blocking keep-alive connection and a strict-enough HTTP/1.1 response reader."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reopen()

    def reopen(self) -> None:
        """A fresh connection (llama-server closes its own after a stream)."""
        if getattr(self, "sock", None) is not None:
            self.close()
        self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=60)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.file = self.sock.makefile("rb")

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    def post(self, body: bytes) -> dict:
        """Send a chat completion request; read the response head (its headers, lower-cased)."""
        self.sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:%d\r\n"
                          b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                          % (self.port, len(body), body))
        status = self.file.readline()
        if b" 200 " not in status:
            raise RuntimeError(f"unexpected answer {status!r}")
        headers = {}
        while True:
            line = self.file.readline().rstrip(b"\r\n")
            if not line:
                return headers
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()

    def settle(self, headers: dict) -> None:
        """After a whole response: a fresh connection if the server said it closes this one
        (llama-server does after 100 requests on a connection), outside any timing."""
        if headers.get("connection", "").lower() == "close":
            self.reopen()

    def body(self, headers: dict) -> Iterator[bytes]:
        """The body, one piece per chunk (chunked) or whole (Content-Length)."""
        if headers.get("transfer-encoding") == "chunked":
            while True:
                size = int(self.file.readline().split(b";")[0], 16)
                if size == 0:
                    self.file.readline()
                    return
                piece = self.file.read(size + 2)
                yield piece[:-2]
        else:
            yield self.file.read(int(headers["content-length"]))


def chat(max_tokens: int, stream: bool) -> bytes:
    return json.dumps({"model": "tiny", "messages": MESSAGES, "max_tokens": max_tokens, "temperature": 0,
                       "seed": 1, "stream": stream}).encode()


def time_request(connection: KeepAlive, body: bytes) -> float:
    """Milliseconds from sending a non-streamed request to having read its whole response."""
    start = time.perf_counter()
    headers = connection.post(body)
    for _ in connection.body(headers):
        pass
    elapsed = (time.perf_counter() - start) * 1e3
    connection.settle(headers)
    return elapsed


def time_stream(connection: KeepAlive, body: bytes) -> dict:
    """One stream: ms to the first content event, the content-event times, ms to ``[DONE]``."""
    start = time.perf_counter()
    headers = connection.post(body)
    stamps = []
    buffer = b""
    done = None
    for piece in connection.body(headers):
        now = time.perf_counter()
        buffer += piece
        while b"\n\n" in buffer:
            event, buffer = buffer.split(b"\n\n", 1)
            data = event[len(b"data: "):]
            if data == b"[DONE]":
                done = now
            elif b'"content":"' in data and b'"content":""' not in data:
                stamps.append(now)
    connection.settle(headers)
    if done is None or not stamps:
        raise RuntimeError("a stream ended without content or [DONE]")
    per_event = (stamps[-1] - stamps[0]) / max(1, len(stamps) - 1) * 1e3
    return {"first_ms": (stamps[0] - start) * 1e3, "per_event_ms": per_event,
            "total_ms": (done - start) * 1e3, "events": len(stamps)}


def compare(direct: list, proxied: list) -> dict:
    a, b = statistics.median(direct), statistics.median(proxied)
    return {"direct_median_ms": round(a, 4), "proxied_median_ms": round(b, 4),
            "direct_p90_ms": round(_quantile(direct, 0.9), 4), "proxied_p90_ms": round(_quantile(proxied, 0.9), 4),
            "added_ms": round(b - a, 4), "ratio": round(b / a, 3), "samples": len(direct)}


def _quantile(values: list, q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def abba(count: int) -> Iterator[bool]:
    """``count`` pairs in ABBA order; True means the proxied path."""
    for i in range(count):
        yield from ((False, True) if i % 2 == 0 else (True, False))


def run(requests: int, streams: int, tokens: int, workdir: Path, engine: str = "helios") -> dict:
    from tests.support.tiny_model import build_tiny_gguf

    model = build_tiny_gguf(workdir / "tiny.gguf", seed=0)
    (workdir / "upstream.toml").write_text(
        f'[local]\nmodel_path = "{model}"\nmodel_name = "tiny"\nn_threads = 1\nseed = 0\n')
    upstream = LlamaServer(model) if engine == "llama-server" else HeliosServer(workdir / "upstream.toml")
    proxy = None
    try:
        (workdir / "proxy.toml").write_text(
            f'[llm]\nmodel_name = "tiny"\nbase_url = "http://127.0.0.1:{upstream.port}/v1"\n')
        proxy = HeliosServer(workdir / "proxy.toml")
        paths = {False: KeepAlive(upstream.port), True: KeepAlive(proxy.port)}
        one_token, stream_body = chat(1, False), chat(tokens, True)

        def streamed(via_proxy: bool, body: bytes) -> dict:
            run = time_stream(paths[via_proxy], body)
            if engine == "llama-server" and not via_proxy:  # it closed the connection: reopen, untimed
                paths[False].reopen()
            return run

        for _ in range(20):  # warm up: model, pools, caches
            for via_proxy in (False, True):
                time_request(paths[via_proxy], one_token)
                streamed(via_proxy, chat(8, True))

        request_ms = {False: [], True: []}
        for via_proxy in abba(requests):
            request_ms[via_proxy].append(time_request(paths[via_proxy], one_token))
        stream_runs = {False: [], True: []}
        for via_proxy in abba(streams):
            stream_runs[via_proxy].append(streamed(via_proxy, stream_body))
        for connection in paths.values():
            connection.close()
    finally:
        if proxy is not None:
            proxy.stop()
        upstream.stop()

    events = {run["events"] for runs in stream_runs.values() for run in runs}
    return {
        "what": "client -> helios_raw (remote backend) -> upstream vs client -> upstream; upstream = "
                f"{'llama-server' if engine == 'llama-server' else 'helios_raw'} serving the tiny test model; "
                "ABBA-alternated on keep-alive connections; times in ms",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_average_1m": round(os.getloadavg()[0], 2)},
        "request_1_token": compare(request_ms[False], request_ms[True]),
        "stream": {
            "tokens": tokens,
            "content_events_per_stream": sorted(events),
            "first_event": compare(*[[r["first_ms"] for r in stream_runs[p]] for p in (False, True)]),
            "per_event": compare(*[[r["per_event_ms"] for r in stream_runs[p]] for p in (False, True)]),
            "whole_stream": compare(*[[r["total_ms"] for r in stream_runs[p]] for p in (False, True)]),
        },
    }


def report(results: dict) -> str:
    rows = [("request (1 token, whole response)", results["request_1_token"]),
            ("stream: first content event", results["stream"]["first_event"]),
            ("stream: per content event", results["stream"]["per_event"]),
            ("stream: whole stream", results["stream"]["whole_stream"])]
    lines = [f"{'':36} {'direct':>9} {'proxied':>9} {'added':>9} {'ratio':>6}"]
    for label, row in rows:
        lines.append(f"{label:36} {row['direct_median_ms']:9.3f} {row['proxied_median_ms']:9.3f} "
                     f"{row['added_ms']:9.3f} {row['ratio']:6.2f}")
    events = results["stream"]["content_events_per_stream"]
    lines.append(f"(medians in ms; {results['request_1_token']['samples']} requests and "
                 f"{results['stream']['whole_stream']['samples']} streams of {events} content events per path; "
                 f"{results['machine']['cpus']} CPUs, load {results['machine']['load_average_1m']})")
    return "\n".join(lines)


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200, help="non-streamed requests per path")
    parser.add_argument("--streams", type=int, default=40, help="streamed requests per path")
    parser.add_argument("--tokens", type=int, default=128, help="tokens per streamed request")
    parser.add_argument("--upstream", choices=("helios", "llama-server"), default="helios",
                        help="the engine behind the proxy (default: helios_raw on the tiny model)")
    parser.add_argument("--output", type=Path, help="where to write the JSON results (default: "
                        "results/proxy_bench.json, or proxy_bench_llama_server.json)")
    args = parser.parse_args(argv)
    if args.output is None:
        args.output = RESULTS if args.upstream == "helios" else RESULTS.with_name("proxy_bench_llama_server.json")
    with tempfile.TemporaryDirectory() as workdir:
        results = run(args.requests, args.streams, args.tokens, Path(workdir), args.upstream)
    print(report(results))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
