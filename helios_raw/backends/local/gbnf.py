"""Writing GBNF, llama.cpp's grammar format: literals, character classes, rules, bounded
repetition and integer ranges.

Everything here writes grammars in the shapes that llama.cpp (the version vendored by
llama-cpp-python 0.3.36) parses without deep recursion:

- repetition is written ``item{m,n}`` on a single symbol (a rule name, a literal or a class),
  which llama.cpp expands into a chain of small rules, never nested groups; its parser takes
  at most 2,000 (``REPEAT_LIMIT``: more is refused, or silently unbounded for ``n``), so
  longer runs are written as several chained repetitions;
- parentheses appear only in integer ranges, nested at most one level per digit.

:class:`Rules` collects named rules (identical bodies share one name) and keeps a running
``cost`` (an estimate of the rules llama.cpp will create), raising :class:`GrammarError` the
moment it passes its budget, so no request can make the server write a huge grammar.
"""

from __future__ import annotations

import re
from typing import Iterable, Optional

#: llama.cpp's MAX_REPETITION_THRESHOLD: the largest count ``{m,n}`` may name.
REPEAT_LIMIT = 2000
#: The largest count a schema may ask for (``maxLength``, ``maxItems``, a pattern's ``{m,n}`` ...).
MAX_REPEAT = 10_000
#: Integers are written with at most this many digits (as llama.cpp's own JSON grammar does).
MAX_DIGITS = 16
INT_LIMIT = 10 ** MAX_DIGITS - 1

_NAME_JUNK = re.compile(r"[^a-zA-Z0-9-]+")
_LITERAL_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_CLASS_SPECIAL = set('\\]-^["')
_TOKENS = re.compile(r'"(?:\\.|[^"\\])*"|\[(?:\\.|[^\]\\])*\]|[()|]|[^"\[()|]+')
_SPACES = re.compile(r"[ \t]+")
_SYMBOL = re.compile(r'[a-zA-Z0-9-]+|"(?:\\.|[^"\\])*"|\[(?:\\.|[^\]\\])*\]')


class GrammarError(Exception):
    """A grammar that can't (or may not) be built; the message says why, for the client."""


class GrammarTooLarge(GrammarError):
    """A grammar past one of the limits that keep llama.cpp (and the server) safe."""


def literal(text: str) -> str:
    """A GBNF string literal matching exactly ``text``."""
    out = []
    for ch in text:
        if ch in _LITERAL_ESCAPES:
            out.append(_LITERAL_ESCAPES[ch])
        else:
            out.append(_visible(ord(ch)))
    return '"' + "".join(out) + '"'


def is_symbol(text: str) -> bool:
    """Whether ``text`` is one GBNF symbol (a rule name, a literal or a class, unrepeated)."""
    return bool(_SYMBOL.fullmatch(text))


def char_class(ranges: Iterable[tuple[int, int]], negate: bool = False) -> str:
    """A GBNF character class of the code point ranges ``(first, last)``."""
    parts = []
    for first, last in ranges:
        parts.append(class_char(first) if first == last else f"{class_char(first)}-{class_char(last)}")
    return "[" + ("^" if negate else "") + "".join(parts) + "]"


def class_char(code: int) -> str:
    """Code point ``code`` written inside a GBNF character class."""
    ch = chr(code)
    if ch in _CLASS_SPECIAL:
        return "\\" + ch
    return _visible(code)


def _visible(code: int) -> str:
    """Code point ``code`` as GBNF text, escaped unless it is a visible character or a space."""
    ch = chr(code)
    if code == 0x20 or (ch.isprintable() and not ch.isspace()):
        return ch
    return f"\\x{code:02X}" if code < 0x80 else f"\\u{code:04X}" if code < 0x10000 else f"\\U{code:08X}"


class Rules:
    """Named GBNF rules under construction, within a budget of ``max_cost`` rules as llama.cpp
    will expand them and ``max_bytes`` of text."""

    def __init__(self, max_cost: int, max_bytes: int) -> None:
        self.max_cost = max_cost
        self.max_bytes = max_bytes
        self.cost = 0
        self.size = 0
        self._bodies: dict[str, str] = {}
        self._names: dict[str, str] = {}
        self._taken: dict[str, int] = {}  # the last number given to each base name

    def add(self, name: str, body: str) -> str:
        """Define a rule with ``body`` (a name is made unique) and return its name; a body
        already defined returns the existing rule's name."""
        body = _tidy(body)
        known = self._names.get(body)
        if known is not None:
            return known
        name = self.reserve(name)
        self._set(name, body)
        return name

    def reserve(self, name: str) -> str:
        """A fresh rule name for a rule defined later with :meth:`define` (for recursion)."""
        base = _NAME_JUNK.sub("-", name).strip("-")[:40] or "r"
        candidate, n = base, self._taken.get(base, 1)
        while candidate in self._bodies:
            n += 1
            candidate = f"{base}-{n}"
        self._taken[base] = n
        self._bodies[candidate] = ""
        return candidate

    def define(self, name: str, body: str) -> None:
        """Give the reserved rule ``name`` its ``body``."""
        self._set(name, _tidy(body))

    def _set(self, name: str, body: str) -> None:
        self._bodies[name] = body
        self._names.setdefault(body, name)
        self.charge(1, len(name) + len(body) + 5)

    def charge(self, cost: int, size: int = 0) -> None:
        """Count ``cost`` expanded rules and ``size`` bytes; a GrammarError past the budget."""
        self.cost += cost
        self.size += size
        if self.cost > self.max_cost or self.size > self.max_bytes:
            raise GrammarTooLarge(
                f"the grammar it needs is larger than this server allows (over {self.max_cost:,} rules "
                f"or {self.max_bytes:,} bytes); simplify the schema (fewer or shorter repetitions, "
                "fewer properties or alternatives)")

    def repeat(self, item: str, low: int, high: Optional[int]) -> str:
        """A sequence matching ``item`` (one symbol) repeated ``low`` to ``high`` times (None: no
        upper bound), written in blocks of at most REPEAT_LIMIT."""
        if high is not None and high < low:
            raise GrammarError(f"a repetition of {low} to {high} items can't be satisfied")
        return self._repeat(item, low, high)

    def _repeat(self, item: str, low: int, high: Optional[int]) -> str:
        self.charge(low + (1 if high is None else high - low))
        parts = []
        while low > REPEAT_LIMIT:
            parts.append(f"{item}{{{REPEAT_LIMIT}}}")
            low -= REPEAT_LIMIT
            if high is not None:
                high -= REPEAT_LIMIT
        if high is None:
            parts.append({0: f"{item}*", 1: f"{item}+"}.get(low, f"{item}{{{low},}}"))
        elif high <= REPEAT_LIMIT:
            if high:
                parts.append(_count(item, low, high))
        else:
            if low:
                parts.append(f"{item}{{{low}}}")
            parts.append(self._optional_run(item, high - low))
        return " ".join(parts)

    def _optional_run(self, item: str, count: int) -> str:
        """Up to ``count`` (> REPEAT_LIMIT) more ``item``: a rule per block of REPEAT_LIMIT."""
        tail = f"{item}{{0,{count % REPEAT_LIMIT or REPEAT_LIMIT}}}"
        blocks = (count - 1) // REPEAT_LIMIT
        for _ in range(blocks):
            tail = self.add(f"{item}-run", f"{item}{{{REPEAT_LIMIT}}} {tail} | {item}{{0,{REPEAT_LIMIT - 1}}}")
        return tail

    def render(self, root: str) -> str:
        """The grammar text: ``root ::= <root>`` and then every rule."""
        lines = [f"root ::= {root}"]
        lines.extend(f"{name} ::= {body}" for name, body in self._bodies.items())
        return "\n".join(lines) + "\n"


def _tidy(body: str) -> str:
    """``body`` with single spaces and each empty alternative written ``""``: llama.cpp reads
    past the end of a line that ends in ``|`` (or a rule with nothing after ``::=``)."""
    alternatives, current, depth = [], [], 0
    for token in _TOKENS.findall(body):
        if token[0] not in '"[':  # outside literals and classes: structure and ASCII spaces
            if token == "|" and depth == 0:
                alternatives.append("".join(current).strip(" "))
                current = []
                continue
            depth += {"(": 1, ")": -1}.get(token, 0)
            token = _SPACES.sub(" ", token)
        current.append(token)
    alternatives.append("".join(current).strip(" "))
    return " | ".join(a or '""' for a in alternatives)


def _count(item: str, low: int, high: int) -> str:
    if low == high:
        return item if low == 1 else f"{item}{{{low}}}"
    if (low, high) == (0, 1):
        return f"{item}?"
    return f"{item}{{{low},{high}}}"


# -- integer ranges ------------------------------------------------------------------------------


def integer_range(low: int, high: int) -> str:
    """A GBNF expression for the decimal integers from ``low`` to ``high`` (both within
    ``±INT_LIMIT``), written without leading zeros or ``-0``."""
    if low > high:
        raise GrammarError(f"no integer lies between {low} and {high}")
    if (low, high) == (-INT_LIMIT, INT_LIMIT):
        return f'("-"? [1-9] [0-9]{{0,{MAX_DIGITS - 1}}} | [0])'
    alternatives = []
    if low < 0:
        alternatives.append('"-" ' + _group(_natural_range(max(1, -high), -low)))
    if high >= 0:
        alternatives.extend(_natural_range(max(low, 0), high))
    return _group(alternatives)


def _natural_range(low: int, high: int) -> list[str]:
    """Alternatives for the integers ``low..high`` (0 <= low <= high), by number of digits."""
    out = []
    for digits in range(len(str(low)), len(str(high)) + 1):
        first = max(low, 10 ** (digits - 1) if digits > 1 else 0)
        last = min(high, 10 ** digits - 1)
        out.append(_same_length(str(first), str(last)))
    return out


def _same_length(low: str, high: str) -> str:
    """The digit strings of one length from ``low`` to ``high`` (leading zeros allowed inside)."""
    shared = 0
    while shared < len(low) and low[shared] == high[shared]:
        shared += 1
    prefix = literal(low[:shared]) + " " if shared else ""
    if shared == len(low):
        return literal(low)
    first, last, rest = low[shared], high[shared], len(low) - shared - 1
    if rest == 0:
        return prefix + _digits(first, last)
    tail_low, tail_high = low[shared + 1:], high[shared + 1:]
    low_full, high_full = tail_low == "0" * rest, tail_high == "9" * rest
    alternatives = []
    if not low_full:
        alternatives.append(f"[{first}] " + _same_length(tail_low, "9" * rest))
    start = first if low_full else chr(ord(first) + 1)
    end = last if high_full else chr(ord(last) - 1)
    if start <= end:
        alternatives.append(_digits(start, end) + " " + _count("[0-9]", rest, rest))
    if not high_full:
        alternatives.append(f"[{last}] " + _same_length("0" * rest, tail_high))
    return prefix + _group(alternatives)


def _digits(first: str, last: str) -> str:
    return f"[{first}]" if first == last else f"[{first}-{last}]"


def _group(alternatives: list[str]) -> str:
    if len(alternatives) == 1:
        return alternatives[0]
    return "(" + " | ".join(alternatives) + ")"
