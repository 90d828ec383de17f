"""Checking a GBNF grammar before llama.cpp sees it, and describing one in a line for logs.

:func:`check` parses grammar text the way llama.cpp's parser (the version vendored by
llama-cpp-python 0.3.36, ``src/llama-grammar.cpp``) does and refuses, with
:class:`~.gbnf.GrammarError`, anything that version would reject, crash on, or spend
unbounded time on. What it measures, and the limits, against what was measured on that
version (a grammar initialised on a Python worker thread with the default 8 MiB stack):

====================================  ========  ============================================
what is measured                      limit     llama.cpp's behaviour
====================================  ========  ============================================
nesting of parentheses                64        its parser recurses per group: SIGSEGV at
                                                ~18,700 levels
depth of its left-recursion check     5,000     recursion per rule: SIGSEGV between 50,000
(rules that start with other rules)             and 100,000
continuations stacked at a rule's     500       init time grows with the square of it
start                                           (10,000: 7 s; 50,000: 283 s)
calls of that check for one rule      100,000   it revisits shared rules: exponential time
rules once ``{m,n}`` is expanded      60,000    memory, and ~4 us each to parse
text                                  1 MiB     the parser copies and scans it
``{m,n}`` with m or n over 2,000      refused   m: refused; n: silently made unbounded
a repeated group of x rules, x*n      2,000     refused (MAX_REPETITION_THRESHOLD)
left recursion                        refused   refused
undefined rules, no ``root``          refused   refused
a line ending in ``|`` (or empty)     refused   it reads the next rule as part of this one
unbounded repetition of what can be   refused   accepted (its check only sees rules with a
empty                                           literally empty alternative)
====================================  ========  ============================================

It also refuses a grammar whose ``root`` derives no finite string (generation could never end
in a valid answer). A grammar that passes never makes llama.cpp write its text to the log.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from .gbnf import REPEAT_LIMIT, GrammarError, GrammarTooLarge

MAX_PAREN_DEPTH = 64
MAX_CHAIN_DEPTH = 5_000
MAX_STACK_GROWTH = 500
MAX_CHECK_CALLS = 100_000
MAX_EXPANDED_RULES = 60_000
MAX_GRAMMAR_BYTES = 1 << 20

_TOKEN = re.compile(r'''
    (?P<space>[ \t]+)
  | (?P<literal>"(?:\\.|[^"\\])*")
  | (?P<cls>\[(?:\\.|[^\]\\])*\])
  | (?P<name>[a-zA-Z0-9-]+)
  | (?P<open>\()
  | (?P<close>\))
  | (?P<bar>\|)
  | (?P<quant>[?*+]|\{[0-9]+(?:,[0-9]*)?\})
''', re.VERBOSE)


@dataclass
class _Item:
    """One symbol of a sequence: a terminal (``ref`` None) or a rule reference, repeated
    ``low`` to ``high`` times (``high`` None: unbounded)."""

    ref: Optional[str]
    low: int = 1
    high: Optional[int] = 1
    synthesized: int = 0  # rules llama.cpp creates for the group this item stands for


def check(text: str) -> None:
    """Raise :class:`GrammarError` unless llama.cpp can safely use grammar ``text``."""
    if len(text.encode("utf-8")) > MAX_GRAMMAR_BYTES:
        raise GrammarTooLarge(f"the grammar is larger than {MAX_GRAMMAR_BYTES:,} bytes")
    rules, expanded = _parse(text)
    if "root" not in rules:
        raise GrammarError("the grammar has no root rule")
    for name, alternatives in rules.items():
        for sequence in alternatives:
            for item in sequence:
                if item.ref is not None and item.ref not in rules:
                    raise GrammarError(f"rule {name!r} refers to the undefined rule {item.ref!r}")
    if expanded > MAX_EXPANDED_RULES:
        raise GrammarTooLarge(f"the grammar expands to {expanded:,} rules (at most {MAX_EXPANDED_RULES:,})")
    nullable = _nullable(rules)
    _check_left_recursion(rules, nullable)
    if "root" not in _productive(rules):
        raise GrammarError("the schema allows no finite value (every alternative recurses forever)")


def describe(text: str, width: int = 100) -> str:
    """One bounded line about grammar ``text``: its size, rule count and start, for logs."""
    lines = text.count("\n") + (not text.endswith("\n"))
    start = " ".join(text.split())[:width]
    more = "..." if len(" ".join(text.split())) > width else ""
    return f"GBNF grammar of {len(text.encode('utf-8')):,} bytes, {lines:,} rules: {start}{more}"


# -- parsing -------------------------------------------------------------------------------------


def _parse(text: str) -> tuple[dict[str, list[list[_Item]]], int]:
    """The rules of ``text`` (groups become rules of their own, as llama.cpp makes them) and
    the number of rules llama.cpp will hold once repetitions are expanded."""
    rules: dict[str, list[list[_Item]]] = {}
    symbols = _Symbols()
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        name, sep, body = line.partition(" ::= ")
        if not sep or not re.fullmatch(r"[a-zA-Z0-9-]+", name):
            raise GrammarError(f"line {number} of the grammar is not a rule")
        if not body.strip() or body.rstrip().endswith("|"):
            raise GrammarError(f"rule {name!r} ends in an empty alternative (llama.cpp would read on)")
        symbols.mention(name)
        rules[name] = _parse_body(body, name, rules, symbols)
    return rules, symbols.count


class _Symbols:
    """llama.cpp's symbol table, counted: a symbol for each name at its first mention, each
    group and each rule a repetition expands into."""

    def __init__(self) -> None:
        self.count = 0
        self.seen: set = set()

    def mention(self, name: str) -> None:
        if name not in self.seen:
            self.seen.add(name)
            self.count += 1


def _parse_body(body: str, name: str, rules: dict, symbols: _Symbols) -> list[list[_Item]]:
    # Each open group: [alternatives, current sequence, symbol count before it opened].
    stack: list[list] = [[[], [], symbols.count]]
    pos = 0
    while pos < len(body):
        match = _TOKEN.match(body, pos)
        if match is None:
            raise GrammarError(f"rule {name!r} has unparseable text at {body[pos:pos + 20]!r}")
        pos = match.end()
        kind, value = match.lastgroup, match.group()
        group = stack[-1]
        if kind == "space":
            continue
        if kind == "literal":
            if value != '""':
                group[1].append(_Item(None))
        elif kind == "cls":
            group[1].append(_Item(None))
        elif kind == "name":
            symbols.mention(value)
            group[1].append(_Item(value))
        elif kind == "open":
            if len(stack) > MAX_PAREN_DEPTH:
                raise GrammarTooLarge(f"rule {name!r} nests parentheses more than {MAX_PAREN_DEPTH} deep")
            stack.append([[], [], symbols.count])
            symbols.count += 1
        elif kind == "close":
            if len(stack) == 1:
                raise GrammarError(f"rule {name!r} has an unmatched ')'")
            alternatives, sequence, before = stack.pop()
            rule = f"{name}_{before}"
            rules[rule] = alternatives + [sequence]
            stack[-1][1].append(_Item(rule, synthesized=symbols.count - before))
        elif kind == "bar":
            group[0].append(group[1])
            group[1] = []
        else:
            if not group[1]:
                raise GrammarError(f"rule {name!r} repeats nothing")
            symbols.count += _quantify(group[1][-1], value, name)
    if len(stack) != 1:
        raise GrammarError(f"rule {name!r} has an unclosed '('")
    alternatives, sequence, _ = stack[0]
    return alternatives + [sequence]


def _quantify(item: _Item, quantifier: str, name: str) -> int:
    """Apply ``quantifier`` to ``item``; the number of rules llama.cpp makes for it."""
    if item.low != 1 or item.high != 1:
        raise GrammarError(f"rule {name!r} repeats a repetition")
    if quantifier in "?*+":
        low, high = {"?": (0, 1), "*": (0, None), "+": (1, None)}[quantifier]
    else:
        numbers = quantifier[1:-1].split(",")
        low = int(numbers[0])
        high = low if len(numbers) == 1 else (int(numbers[1]) if numbers[1] else None)
        if low > REPEAT_LIMIT or (high is not None and high > REPEAT_LIMIT):
            raise GrammarError(f"rule {name!r} repeats more than {REPEAT_LIMIT:,} times")
    if high is not None and high < low:
        raise GrammarError(f"rule {name!r} has a repetition whose maximum is below its minimum")
    total = high if high else (low or 1)
    if max(item.synthesized, 1) * total > REPEAT_LIMIT:
        raise GrammarError(f"rule {name!r} repeats a group of {item.synthesized} rules {total} times")
    item.low, item.high = low, high
    return 1 if high is None else high - low


# -- analysis ------------------------------------------------------------------------------------


def _nullable(rules: dict) -> set:
    """The rules that can match the empty string."""
    return _closure(rules, _item_nullable)


def _item_nullable(item: _Item, nullable: set) -> bool:
    return item.low == 0 or (item.ref is not None and item.ref in nullable)


def _productive(rules: dict) -> set:
    """The rules that derive at least one finite string."""
    return _closure(rules, lambda item, found: item.low == 0 or item.ref is None or item.ref in found)


def _closure(rules: dict, holds) -> set:
    """The rules with an alternative whose every item ``holds(item, found)``, to a fixed point."""
    found: set = set()
    changed = True
    while changed:
        changed = False
        for name, alternatives in rules.items():
            if name not in found and any(all(holds(i, found) for i in seq) for seq in alternatives):
                found.add(name)
                changed = True
    return found


def _leftmost(sequence: list, nullable: set):
    """The items llama.cpp's left-recursion check descends into: the first, and each next one
    while all before it can be empty."""
    for item in sequence:
        yield item
        if not _item_nullable(item, nullable):
            return


def _check_left_recursion(rules: dict, nullable: set) -> None:
    """Refuse left recursion, and leftmost chains or check costs past the limits (computed
    without recursion, so a hostile grammar can't exhaust Python's stack either)."""
    depth: dict[str, int] = {}
    calls: dict[str, int] = {}
    stack: dict[str, int] = {}
    for start in rules:
        if start in depth:
            continue
        path = [start]
        on_path = {start}
        pending = [iter(_children(rules[start], nullable))]
        while pending:
            child = next(pending[-1], None)
            if child is None:
                name = path.pop()
                on_path.discard(name)
                pending.pop()
                _measure(name, rules[name], nullable, depth, calls, stack)
                continue
            if child in on_path:
                raise GrammarError(f"rule {child!r} is left-recursive (a recursive reference that "
                                   "consumes nothing before recursing)")
            if child in depth:
                continue
            path.append(child)
            on_path.add(child)
            pending.append(iter(_children(rules[child], nullable)))


def _children(alternatives: list, nullable: set) -> list:
    names = []
    for sequence in alternatives:
        for item in _leftmost(sequence, nullable):
            if item.ref is not None:
                if item.high is None and item.ref in nullable:
                    raise GrammarError(f"rule {item.ref!r} can match nothing and is repeated without bound")
                names.append(item.ref)
    return names


def _measure(name: str, alternatives: list, nullable: set, depth: dict, calls: dict, stack: dict) -> None:
    """How deep llama.cpp's left-recursion check recurses from rule ``name``, how many calls it
    makes, and how many continuations its stacks hold when they first expand it."""
    deepest, total, tallest = 0, 1, 0
    for sequence in alternatives:
        for position, item in enumerate(_leftmost(sequence, nullable)):
            inner = (depth[item.ref], calls[item.ref], stack[item.ref]) if item.ref else (0, 0, 0)
            inner_depth, inner_calls, inner_stack = inner
            if item.low != 1 or item.high != 1:  # llama.cpp adds a chain of rules for it
                chain = 1 + ((item.high or 1) - item.low if item.ref in nullable else 0)
                inner_depth += chain
                inner_calls = inner_calls * max(item.high or 1, 1) + chain
            deepest = max(deepest, inner_depth)
            tallest = max(tallest, inner_stack + (position < len(sequence) - 1))
            total += inner_calls
    depth[name], calls[name], stack[name] = deepest + 1, total, tallest
    if depth[name] > MAX_CHAIN_DEPTH or tallest > MAX_STACK_GROWTH:
        raise GrammarTooLarge(f"the grammar's rules nest more than {MAX_CHAIN_DEPTH:,} deep at their start")
    if total > MAX_CHECK_CALLS:
        raise GrammarTooLarge(f"the grammar's rule {name!r} shares too many alternatives (llama.cpp would "
                              f"check it {total:,} times)")
