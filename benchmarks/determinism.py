"""Does an answer depend on what else the engine holds? Measured two ways on one model.

1. **Logits** (llama.cpp alone, through its low-level API): a prompt's last-token logits computed
   whole, in chunks of 16, from a cached prefix (only the last token evaluated again), beside
   another sequence's token in the same batch, and in another slot after other sequences have
   used the cache; the largest absolute difference from "whole", for each context layout: flash
   attention on or off, the KV cache unified or split per slot (helios_raw: on, split).
2. **Texts** (helios_raw over HTTP, temperature 0): prompts answered one at a time, then the same
   prompts four at a time so that they share every batch; how many answers are identical.

``python -m benchmarks.determinism [--model FILE.gguf] [--prompts N] [--tokens N]`` writes
``results/determinism.{json,md}``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import itertools
import json
import os
import sys
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
PROMPTS = [
    "Write a short story about a lighthouse keeper.", "Explain how rainbows form.",
    "List five uses of a paperclip.", "Describe the taste of coffee to someone who never had it.",
    "What is the capital of France, and why is it famous?", "Give advice to a new gardener.",
    "Summarise the plot of a heist film you invent.", "How does a bicycle stay upright?",
    "Write a haiku about winter, then explain it.", "Compare cats and dogs as pets.",
    "Describe a day in the life of a baker.", "What makes a good friend?",
    "Explain photosynthesis to a child.", "Invent a new board game and give its rules.",
    "Why is the sky blue?", "Tell me about the history of the printing press.",
]


def logits_layouts(model_path: str, threads: int) -> list:
    """Part 1: the largest logit difference of each way of computing, per context layout."""
    import llama_cpp as lc
    import numpy as np
    from llama_cpp import _internals, _logger

    _logger.set_verbose(False)
    params = lc.llama_model_default_params()
    model = _internals.LlamaModel(path_model=model_path, params=params, verbose=False)
    n_vocab = model.n_vocab()
    prompt = model.tokenize(b"<|im_start|>user\nWrite a long essay about the history of painting in Europe, "
                            b"from the caves to the moderns.<|im_end|>\n<|im_start|>assistant\n", False, True)
    rows = []
    for flash, unified in itertools.product((True, False), (False, True)):
        cp = lc.llama_context_default_params()
        cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_seq_max, cp.kv_unified = 2048 * 4, 512, 512, 4, unified
        cp.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash else lc.LLAMA_FLASH_ATTN_TYPE_DISABLED
        cp.n_threads = cp.n_threads_batch = threads
        ctx = _internals.LlamaContext(model=model, params=cp, verbose=False)
        batch = lc.llama_batch_init(512, 0, 1)
        memory = lc.llama_get_memory(ctx.ctx)

        def decode(items) -> None:
            for i, (token, pos, seq, logits) in enumerate(items):
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, pos, 1
                batch.seq_id[i][0], batch.logits[i] = seq, logits
            batch.n_tokens = len(items)
            assert lc.llama_decode(ctx.ctx, batch) == 0

        def logits(row: int):
            return np.ctypeslib.as_array(lc.llama_get_logits_ith(ctx.ctx, row), shape=(n_vocab,)).copy()

        last = len(prompt) - 1
        decode([(t, i, 0, i == last) for i, t in enumerate(prompt)])
        whole = logits(last)
        for start in range(0, len(prompt), 16):
            part = prompt[start:start + 16]
            decode([(t, start + i, 1, start + i == last) for i, t in enumerate(part)])
        chunked = logits(last - last // 16 * 16)
        lc.llama_memory_seq_rm(memory, 1, last, -1)
        decode([(prompt[last], last, 1, True)])
        cached = logits(0)
        decode([(t, i, 2, i == last) for i, t in enumerate(prompt)] + [(int(whole.argmax()), len(prompt), 0, True)])
        beside = logits(last)
        decode([(t, i, 3, i == last) for i, t in enumerate(prompt)])
        other_slot = logits(last)
        rows.append({"flash_attention": flash, "kv_unified": unified, **{
            name: float(np.abs(whole - value).max())
            for name, value in (("chunks", chunked), ("cached_prefix", cached), ("beside_another", beside),
                                ("another_slot", other_slot))}})
        lc.llama_batch_free(batch)
        ctx.close()
    model.close()
    return rows


def texts(model_path: str, threads: int, count: int, tokens: int) -> dict:
    """Part 2: answers alone and four at a time, compared."""
    from benchmarks.load import ServerProcess
    from tests.support.rawhttp import Client

    server = ServerProcess([sys.executable, "-m", "helios_raw", "--model", model_path, "--threads", str(threads),
                            "--parallel", "4", "--bind", "127.0.0.1:0", "--no-access-log"],
                           env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=str(ROOT))

    def ask(prompt: str) -> str:
        body = json.dumps({"model": "m", "messages": [{"role": "user", "content": prompt}], "temperature": 0,
                           "max_tokens": tokens}).encode()
        with Client(server.port, timeout=600) as client:
            client.request("POST", "/v1/chat/completions", [("Content-Type", "application/json")], body)
            return client.read_response("POST").json()["choices"][0]["message"]["content"]

    try:
        prompts = [PROMPTS[i % len(PROMPTS)] + ("" if i < len(PROMPTS) else f" ({i})") for i in range(count)]
        alone = [ask(p) for p in prompts]
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            together = list(pool.map(ask, prompts))
    finally:
        server.stop()
    same = sum(a == b for a, b in zip(alone, together))
    first = [next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
             for a, b in zip(alone, together) if a != b]
    return {"prompts": count, "max_tokens": tokens, "identical": same,
            "first_difference_at_characters": first}


def report(data: dict) -> str:
    lines = [f"# Determinism ({data['date']}, {Path(data['model']).name}, {data['threads']} threads)", "",
             "Largest absolute difference of a prompt's last-token logits from computing it whole:", "",
             "| flash attention | KV cache | in chunks of 16 | from a cached prefix | beside another sequence "
             "| in another slot |", "|---|---|---:|---:|---:|---:|"]
    for row in data["logits"]:
        lines.append(f"| {'on' if row['flash_attention'] else 'off'} | "
                     f"{'unified' if row['kv_unified'] else 'per slot'} | {row['chunks']:.3g} | "
                     f"{row['cached_prefix']:.3g} | {row['beside_another']:.3g} | {row['another_slot']:.3g} |")
    t = data["texts"]
    lines += ["", f"helios_raw (flash attention on, a cache per slot, 4 slots), temperature 0, "
              f"{t['max_tokens']} tokens: of {t['prompts']} prompts answered alone and then four at a time, "
              f"{t['identical']} answers identical.", ""]
    if t["first_difference_at_characters"]:
        lines.append(f"The others first differ at characters {t['first_difference_at_characters']}.")
    return "\n".join(lines) + "\n"


def main(argv: Optional[list] = None) -> int:
    from helios_raw.backends.local.model_files import resolve_model_path
    from helios_raw.config import LocalConfig

    parser = argparse.ArgumentParser(prog="python -m benchmarks.determinism", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="GGUF model (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=128)
    args = parser.parse_args(argv)
    model = args.model or str(resolve_model_path(LocalConfig()))
    data = {"date": time.strftime("%Y-%m-%d"), "model": model, "threads": args.threads,
            "logits": logits_layouts(model, args.threads), "texts": texts(model, args.threads, args.prompts, args.tokens)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "determinism.json").write_text(json.dumps(data, indent=2) + "\n")
    (RESULTS / "determinism.md").write_text(report(data))
    print(report(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
