"""The GBNF writer and checker against llama.cpp itself: what the checker refuses, llama.cpp refuses
or can't survive; what it accepts at each of its limits, llama.cpp loads (on a worker thread of
a separate process, where a crash can't take the test run down)."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
import textwrap

import pytest

from helios_raw.backends.local.gbnf import (
    REPEAT_LIMIT,
    GrammarError,
    GrammarTooLarge,
    Rules,
    integer_range,
)
from helios_raw.backends.local.gbnf_check import (
    MAX_CHAIN_DEPTH,
    MAX_EXPANDED_RULES,
    MAX_PAREN_DEPTH,
    MAX_STACK_GROWTH,
    check,
    describe,
)
from helios_raw.backends.local.grammars import json_schema_grammar

PROBE = textwrap.dedent("""
    import json, sys, threading, llama_cpp
    threading.stack_size(8 << 20)  # the default thread stack on Linux, as the server's worker has
    llama = llama_cpp.Llama(sys.argv[1], vocab_only=True, verbose=False)
    def load(text):
        grammar = llama_cpp.llama_sampler_init_grammar(llama._model.vocab, text.encode(), b"root")
        print("loaded" if grammar else "refused", flush=True)
        if grammar:
            llama_cpp.llama_sampler_free(grammar)
    for text in json.load(sys.stdin):
        worker = threading.Thread(target=load, args=(text,))
        worker.start()
        worker.join()
""")


def llama_loads(model_path, *grammars: str) -> list:
    """'loaded' or 'refused' for each of ``grammars`` in one fresh process, then 'crashed' for
    the rest if that process dies."""
    done = subprocess.run([sys.executable, "-c", PROBE, str(model_path)], input=json.dumps(grammars).encode(),
                          capture_output=True, timeout=300)
    results = done.stdout.decode().split()
    return results + ["crashed"] * (len(grammars) - len(results))


REFUSED_BY_LLAMA = {
    "left recursion": 'root ::= root "a" | "b"\n',
    "more than 2,000 repetitions": 'root ::= "a"{2001}\n',
    "a group of rules repeated 2,000 times": 'root ::= ("a" ("b" | "c")){0,2000}\n',
    "an undefined rule": 'root ::= x\n',
    "a line ending in |": 'root ::= "a" |\nx ::= "b"\n',
    "no root": 'start ::= "a"\n',
}


def test_the_checker_refuses_what_llama_cpp_refuses(tiny_model_path) -> None:
    for name, grammar in REFUSED_BY_LLAMA.items():
        with pytest.raises(GrammarError):
            check(grammar)
    assert llama_loads(tiny_model_path, *REFUSED_BY_LLAMA.values()) == ["refused"] * len(REFUSED_BY_LLAMA)


def nested_groups(depth: int) -> str:
    return 'root ::= ' + '("a" ' * depth + ")" * depth + "\n"


def leftmost_chain(length: int, stacked: bool) -> str:
    """Rules each starting with the next; ``stacked``: each continues after it, so llama.cpp
    stacks a continuation per rule."""
    tail = ' "a"' if stacked else ""
    rules = [f"r{i} ::= r{i + 1}{tail} | \"b\"" for i in range(length)]
    return "root ::= r0\n" + "\n".join(rules) + f'\nr{length} ::= "c"\n'


def test_grammars_at_the_checkers_limits_load_in_llama_cpp(tiny_model_path) -> None:
    at_limits = {
        "parentheses": nested_groups(MAX_PAREN_DEPTH - 1),
        "leftmost chain": leftmost_chain(MAX_CHAIN_DEPTH - 2, stacked=False),
        "stacked chain": leftmost_chain(MAX_STACK_GROWTH - 1, stacked=True),
        "expanded rules": "root ::= " + " ".join(f"r{i}" for i in range(MAX_EXPANDED_RULES // 2000 - 1)) + "\n"
                          + "".join(f'r{i} ::= "a"{{0,{REPEAT_LIMIT - 2}}} "b"\n'
                                    for i in range(MAX_EXPANDED_RULES // 2000 - 1)),
        "counts": json_schema_grammar({"type": "array", "minItems": 10000, "maxItems": 10000,
                                       "items": {"type": "string", "maxLength": 10000}}),
    }
    for grammar in at_limits.values():
        check(grammar)
    assert llama_loads(tiny_model_path, *at_limits.values()) == ["loaded"] * len(at_limits)


def test_past_the_limits_the_checker_refuses_long_before_llama_cpp_fails(tiny_model_path) -> None:
    with pytest.raises(GrammarTooLarge):
        check(nested_groups(MAX_PAREN_DEPTH + 1))
    with pytest.raises(GrammarTooLarge):
        check(leftmost_chain(MAX_CHAIN_DEPTH + 1, stacked=False))
    with pytest.raises(GrammarTooLarge):
        check(leftmost_chain(MAX_STACK_GROWTH + 1, stacked=True))
    # What the checker guards against: llama.cpp's parser recursing once per group
    # (it fails at ~18,700 nested groups on an 8 MiB stack).
    assert llama_loads(tiny_model_path, nested_groups(40_000)) == ["crashed"]


def test_shared_alternatives_that_would_make_llama_cpp_check_exponentially_are_refused() -> None:
    rules = ["root ::= s0"] + [f"s{i} ::= s{i + 1} | s{i + 1} \"x\"" for i in range(40)] + ['s40 ::= "y"']
    with pytest.raises(GrammarTooLarge, match="shares too many alternatives"):
        check("\n".join(rules) + "\n")


def test_unbounded_repetition_of_what_can_be_empty_is_refused() -> None:
    # llama.cpp's left-recursion check sees only rules with a literally empty alternative, so it
    # loads this one; the checker refuses it as left recursion in all but name.
    with pytest.raises(GrammarError, match="repeated without bound"):
        check('root ::= x* "a"\nx ::= "b"?\n')


def test_a_grammar_that_never_ends_is_refused() -> None:
    with pytest.raises(GrammarError, match="no finite value"):
        check('root ::= "a" root\n')


def test_the_writers_budget_refuses_before_writing() -> None:
    rules = Rules(max_cost=50_000, max_bytes=1 << 20)
    with pytest.raises(GrammarTooLarge):
        rules.repeat("x", 0, 10 ** 12)
    assert rules.size < 1000


def test_long_runs_are_written_as_chained_repetitions_within_llama_cpps_limit() -> None:
    rules = Rules(max_cost=50_000, max_bytes=1 << 20)
    run = rules.repeat("x", 2500, 9000)
    grammar = rules.render(run) + 'x ::= "a"\n'
    check(grammar)
    counts = [int(n) for n in re.findall(r"\{(?:\d+,)?(\d+)\}", grammar)]
    assert counts and max(counts) <= REPEAT_LIMIT


def integer_regex(expression: str) -> re.Pattern:
    return re.compile(re.sub(r'"([^"]*)"', lambda m: re.escape(m.group(1)), expression).replace(" ", ""))


def test_integer_ranges_are_exact() -> None:
    rng = random.Random(7)
    cases = [(0, 0), (-5, -5), (-1, 1), (0, 9), (10, 99), (-100, 100), (7, 1234), (-37, 1234), (999, 1001),
             (1, 10 ** 16 - 1), (-(10 ** 16 - 1), 3)]
    cases += [tuple(sorted((rng.randint(-5000, 5000), rng.randint(-5000, 5000)))) for _ in range(300)]
    for low, high in cases:
        pattern = integer_regex(integer_range(low, high))
        probes = {low - 1, low, low + 1, high - 1, high, high + 1, 0, -1, 1} | {rng.randint(low - 99, high + 99)
                                                                              for _ in range(40)}
        for value in probes:
            assert bool(pattern.fullmatch(str(value))) == (low <= value <= high), (low, high, value)
        for bad in ("-0", "00", "01", "-01", "+1"):
            assert not pattern.fullmatch(bad), (low, high, bad)


def test_describe_is_one_bounded_line() -> None:
    grammar = "root ::= x\n" + "".join(f'r{i} ::= "{"a" * 50}"\n' for i in range(4000))
    line = describe(grammar)
    assert "\n" not in line and len(line) < 200 and "4,001 rules" in line and "bytes" in line


def test_grammars_are_reused_for_the_same_schema_and_refusals_are_not_kept() -> None:
    from helios_raw.errors import APIError

    schema = {"type": "object", "properties": {"b": {"type": "integer"}, "a": {"type": "string"}}}
    first = json_schema_grammar(schema)
    assert json_schema_grammar(json.loads(json.dumps(schema))) is first
    for _ in range(2):
        with pytest.raises(APIError):
            json_schema_grammar({"type": "string", "maxLength": 10 ** 6})
