"""The inside of JSON strings as GBNF: any character, sets of characters, JSON Schema
``pattern`` regular expressions and string ``format`` s.

Everything is written over *decoded* characters and emitted in its JSON-escaped form (``"``
and ``\\`` and control characters as escapes), so a pattern or format constrains the string's
value, and the text stays valid JSON.

Patterns are ECMA-262 regular expressions, as JSON Schema defines them: alternation, groups
(capturing, ``(?:...)``, named), classes, ``.``, ``\\d \\w \\s`` and their negations, the
quantifiers ``* + ? {n} {n,} {n,m}`` (lazy or not: the language is the same), and ``^`` / ``$``
at the ends of the pattern or of its top-level alternatives; a pattern not anchored at an end
may have any text there, as JSON Schema's search semantics say. Lookarounds, backreferences,
word boundaries, Unicode property escapes and anchors elsewhere are refused. A pattern may be
at most ``MAX_PATTERN_CHARS`` long, nest groups ``MAX_PATTERN_DEPTH`` deep and count to at most
``MAX_REPEAT``; its repetitions share the grammar's budget (see :class:`~.gbnf.Rules`).

Formats: ``date`` (years 1000-9999, days valid for their month, 28 in February), ``time`` and
``date-time`` (RFC 3339 with a required offset), ``uuid`` (and ``uuid1``..``uuid5`` with their
version digit), ``email`` (a dot-atom local part ``@`` a domain of letters, digits and
hyphens), ``hostname`` (RFC 1123 labels), ``ipv4`` (no leading zeros).
"""

from __future__ import annotations

from typing import Optional

from .gbnf import (
    MAX_REPEAT,
    GrammarError,
    GrammarTooLarge,
    Rules,
    char_class,
    integer_range,
    is_symbol,
    literal,
)

MAX_PATTERN_CHARS = 2000
MAX_PATTERN_DEPTH = 32
MAX_CODE_POINT = 0x10FFFF

Ranges = list  # sorted, disjoint, non-adjacent (first, last) code point pairs

_ALL: Ranges = [(0, MAX_CODE_POINT)]
#: Characters never written raw inside a JSON string (escaped instead) or never valid at all.
_NOT_RAW: Ranges = [(0x00, 0x1F), (0x22, 0x22), (0x5C, 0x5C), (0xD800, 0xDFFF)]
_SHORT_ESCAPES = {0x08: "\\b", 0x09: "\\t", 0x0A: "\\n", 0x0C: "\\f", 0x0D: "\\r", 0x22: '\\"', 0x5C: "\\\\"}
_DIGIT: Ranges = [(0x30, 0x39)]
_WORD: Ranges = [(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)]
_SPACE: Ranges = [(0x09, 0x0D), (0x20, 0x20), (0xA0, 0xA0), (0x1680, 0x1680), (0x2000, 0x200A),
                  (0x2028, 0x2029), (0x202F, 0x202F), (0x205F, 0x205F), (0x3000, 0x3000), (0xFEFF, 0xFEFF)]
_LINE_ENDS: Ranges = [(0x0A, 0x0A), (0x0D, 0x0D), (0x2028, 0x2029)]
_CLASS_ESCAPES = {"d": (_DIGIT, False), "D": (_DIGIT, True), "w": (_WORD, False), "W": (_WORD, True),
                  "s": (_SPACE, False), "S": (_SPACE, True)}
_CHAR_ESCAPES = {"n": 0x0A, "r": 0x0D, "t": 0x09, "v": 0x0B, "f": 0x0C, "0": 0x00}
_HEX = "[0-9a-fA-F]"


# -- character sets ------------------------------------------------------------------------------


def normalise(ranges) -> Ranges:
    """``ranges`` sorted and merged."""
    out: Ranges = []
    for first, last in sorted(ranges):
        if out and first <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], last))
        else:
            out.append((first, last))
    return out


def complement(ranges: Ranges) -> Ranges:
    out, start = [], 0
    for first, last in ranges:
        if first > start:
            out.append((start, first - 1))
        start = last + 1
    if start <= MAX_CODE_POINT:
        out.append((start, MAX_CODE_POINT))
    return out


def _minus(ranges: Ranges, removed: Ranges) -> Ranges:
    return complement(normalise(complement(ranges) + removed))


def any_char(rules: Rules) -> str:
    """The rule for one character of a JSON string, escapes included (no lone surrogates)."""
    escape = rules.add("char-escape", '["\\\\/bfnrt] | "u" ' + _unicode_escape(rules))
    return rules.add("char", '[^"\\\\\\x00-\\x1F] | "\\\\" ' + escape)


def _unicode_escape(rules: Rules) -> str:
    return rules.add("char-hex", f"[0-9a-cA-Ce-fE-F] {_HEX}{{3}} | [dD] [0-7] {_HEX}{{2}}")


def char_set(rules: Rules, ranges: Ranges) -> str:
    """One symbol matching one character of ``ranges`` as it is written in a JSON string."""
    raw = _minus(ranges, _NOT_RAW)
    excluded = complement(raw)
    alternatives = []
    if raw:
        alternatives.append(char_class(excluded, negate=True) if len(excluded) < len(raw) else char_class(raw))
    for first, last in ranges:
        for code in range(first, min(last, 0x5C) + 1):
            if code < 0x20 or code in (0x22, 0x5C):
                alternatives.append(literal(_SHORT_ESCAPES.get(code, f"\\u{code:04x}")))
    if not alternatives:
        raise GrammarError("a character class in the pattern matches no character")
    if len(alternatives) == 1:
        return alternatives[0]
    return rules.add("chars", " | ".join(alternatives))


# -- patterns ------------------------------------------------------------------------------------


def pattern_symbol(rules: Rules, pattern: str) -> str:
    """A symbol for the contents of a JSON string that ``pattern`` matches (searching)."""
    if len(pattern) > MAX_PATTERN_CHARS:
        raise GrammarError(f"the pattern is longer than {MAX_PATTERN_CHARS} characters")
    tree = _Parser(pattern).parse()
    anything = f"{any_char(rules)}*"
    alternatives = []
    for sequence in tree[1] if tree[0] == "alt" else [tree]:
        items = list(sequence[1]) if sequence[0] == "seq" else [sequence]
        start = bool(items) and items[0] == ("bol",)
        end = len(items) > start and items[-1] == ("eol",)
        body = items[start:len(items) - end]
        text = _Emitter(rules).sequence(body)[0]
        alternatives.append(" ".join(part for part in ("" if start else anything, text,
                                                       "" if end else anything) if part))
    return rules.add("pattern", " | ".join(alternatives))


class _Parser:
    """Parses a pattern into a tree: ``("alt", [..])``, ``("seq", [..])``, ``("set", ranges)``,
    ``("rep", node, low, high)``, ``("bol",)``, ``("eol",)``."""

    def __init__(self, pattern: str) -> None:
        self.text = pattern
        self.pos = 0
        self.depth = 0

    def parse(self):
        tree = self.alternation()
        if self.pos != len(self.text):
            raise self.error("has an unmatched ')'")
        return tree

    def error(self, what: str) -> GrammarError:
        return GrammarError(f"the pattern {what} (at character {self.pos + 1})")

    def alternation(self):
        branches = [self.sequence()]
        while self.peek() == "|":
            self.pos += 1
            branches.append(self.sequence())
        return branches[0] if len(branches) == 1 else ("alt", branches)

    def sequence(self):
        items = []
        while self.pos < len(self.text) and self.peek() not in "|)":
            atom = self.atom()
            quantified = self.quantifier(atom)
            items.append(quantified)
        return ("seq", items)

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def atom(self):
        ch = self.text[self.pos]
        self.pos += 1
        if ch == "(":
            return self.group()
        if ch == "[":
            return ("set", self.char_class())
        if ch == ".":
            return ("set", complement(_LINE_ENDS))
        if ch == "^":
            return ("bol",)
        if ch == "$":
            return ("eol",)
        if ch == "\\":
            return ("set", self.escape(in_class=False))
        if ch in "*+?":
            raise self.error("repeats nothing")
        return ("set", [(ord(ch), ord(ch))])

    def group(self):
        if self.text.startswith("?:", self.pos):
            self.pos += 2
        elif self.text.startswith("?<", self.pos) and self.text[self.pos + 2:self.pos + 3] not in ("=", "!"):
            close = self.text.find(">", self.pos)
            if close < 0:
                raise self.error("has an unterminated group name")
            self.pos = close + 1
        elif self.peek() == "?":
            raise self.error("uses a lookaround, which a grammar can't enforce")
        self.depth += 1
        if self.depth > MAX_PATTERN_DEPTH:
            raise self.error(f"nests groups more than {MAX_PATTERN_DEPTH} deep")
        tree = self.alternation()
        self.depth -= 1
        if self.peek() != ")":
            raise self.error("has an unclosed '('")
        self.pos += 1
        return tree

    def quantifier(self, atom):
        ch = self.peek()
        if ch in ("*", "+", "?"):
            self.pos += 1
            low, high = {"*": (0, None), "+": (1, None), "?": (0, 1)}[ch]
        elif ch == "{" and self._counted():
            body = self.text[self.pos + 1:self.text.index("}", self.pos)]
            self.pos += len(body) + 2
            first, _, second = body.partition(",")
            low = int(first)
            high = low if "," not in body else (int(second) if second else None)
            if high is not None and high < low:
                raise self.error("has a repetition whose maximum is below its minimum")
            if max(low, high or 0) > MAX_REPEAT:
                raise GrammarTooLarge(f"the pattern repeats something {max(low, high or 0):,} times; this server "
                                      f"enforces at most {MAX_REPEAT:,}")
        else:
            return atom
        if atom[0] in ("bol", "eol"):
            raise self.error("repeats an anchor")
        if self.peek() == "?":
            self.pos += 1  # lazy: matches the same strings
        return ("rep", atom, low, high)

    def _counted(self) -> bool:
        close = self.text.find("}", self.pos)
        body = self.text[self.pos + 1:close] if close > 0 else ""
        first, comma, second = body.partition(",")
        return first.isdigit() and first.isascii() and (not second or (second.isdigit() and second.isascii()))

    def char_class(self) -> Ranges:
        negate = self.peek() == "^"
        if negate:
            self.pos += 1
        ranges: Ranges = []
        first = True
        while True:
            if self.pos >= len(self.text):
                raise self.error("has an unclosed '['")
            ch = self.text[self.pos]
            if ch == "]" and not first:
                self.pos += 1
                break
            first = False
            low = self.class_atom()
            if self.peek() == "-" and self.text[self.pos + 1:self.pos + 2] not in ("]", ""):
                self.pos += 1
                high = self.class_atom()
                if len(low) != 1 or len(high) != 1 or low[0][0] != low[0][1] or high[0][0] != high[0][1]:
                    raise self.error("has a range between character classes")
                if high[0][0] < low[0][0]:
                    raise self.error("has a character range out of order")
                ranges.append((low[0][0], high[0][0]))
            else:
                ranges.extend(low)
        ranges = normalise(ranges)
        return complement(ranges) if negate else ranges

    def class_atom(self) -> Ranges:
        ch = self.text[self.pos]
        self.pos += 1
        if ch == "\\":
            return self.escape(in_class=True)
        return [(ord(ch), ord(ch))]

    def escape(self, in_class: bool) -> Ranges:
        if self.pos >= len(self.text):
            raise self.error("ends with a lone backslash")
        ch = self.text[self.pos]
        self.pos += 1
        if ch in _CLASS_ESCAPES:
            ranges, negated = _CLASS_ESCAPES[ch]
            return complement(ranges) if negated else list(ranges)
        if ch in _CHAR_ESCAPES and not (ch == "0" and self.peek().isdigit()):
            code = _CHAR_ESCAPES[ch]
        elif ch == "b" and in_class:
            code = 0x08
        elif ch in "bB" or ch.isdigit() or ch in "pPk":
            raise self.error(f"uses \\{ch}, which a grammar can't enforce")
        elif ch == "c" and self.peek().isascii() and self.peek().isalpha():
            code = ord(self.text[self.pos]) % 32
            self.pos += 1
        elif ch in "xu":
            code = self.hex_escape(ch)
        else:
            code = ord(ch)
        return [(code, code)]

    def hex_escape(self, kind: str) -> int:
        if kind == "u" and self.peek() == "{":
            close = self.text.find("}", self.pos)
            digits = self.text[self.pos + 1:close] if close > 0 else ""
            self.pos = close + 1
        else:
            size = 2 if kind == "x" else 4
            digits = self.text[self.pos:self.pos + size]
            self.pos += size
        try:
            code = int(digits, 16) if digits and len(digits) <= 6 else -1
        except ValueError:
            code = -1
        if not 0 <= code <= MAX_CODE_POINT:
            raise self.error(f"has a bad \\{kind} escape")
        return code


class _Emitter:
    """Writes a pattern tree as GBNF sequences and rules."""

    def __init__(self, rules: Rules) -> None:
        self.rules = rules

    def node(self, node) -> tuple[str, bool]:
        """(GBNF sequence text, whether it can match the empty string)."""
        kind = node[0]
        if kind == "set":
            return char_set(self.rules, node[1]), False
        if kind == "seq":
            return self.sequence(node[1])
        if kind == "alt":
            branches = [self.node(branch) for branch in node[1]]
            body = " | ".join(text for text, _ in branches)
            return self.rules.add("alt", body), any(empty for _, empty in branches)
        if kind == "rep":
            text, empty = self.node(node[1])
            if empty and node[3] is None:
                raise GrammarError("the pattern repeats without bound a part that can match nothing")
            if not text:
                return "", True
            symbol = text if is_symbol(text) else self.rules.add("part", text)
            return self.rules.repeat(symbol, node[2], node[3]), empty or node[2] == 0
        raise GrammarError("the pattern has '^' or '$' inside it, which a grammar can't enforce")

    def sequence(self, items: list) -> tuple[str, bool]:
        parts = [self.node(item) for item in items]
        return " ".join(text for text, _ in parts if text), all(empty for _, empty in parts)


# -- formats -------------------------------------------------------------------------------------

SUPPORTED_FORMATS = ("date", "time", "date-time", "email", "hostname", "ipv4",
                     "uuid", "uuid1", "uuid2", "uuid3", "uuid4", "uuid5")


def format_symbol(rules: Rules, name: str) -> Optional[str]:
    """A symbol for the contents of a JSON string of format ``name``, or None if unsupported."""
    if name in ("date", "time", "date-time"):
        return _date_time(rules, name)
    if name.startswith("uuid") and name in SUPPORTED_FORMATS:
        version = _HEX if name == "uuid" else f"[{name[4:]}]"
        variant = _HEX if name == "uuid" else "[89abAB]"
        return rules.add(name, f'{_HEX}{{8}} "-" {_HEX}{{4}} "-" {version} {_HEX}{{3}} "-" {variant} {_HEX}{{3}} '
                               f'"-" {_HEX}{{12}}')
    if name in ("hostname", "email"):
        label = rules.add("host-label", "[a-zA-Z0-9] " + rules.add("host-label-end", "[a-zA-Z0-9-]{0,20} [a-zA-Z0-9]")
                          + "?")
        dot_label = rules.add("host-more", '"." ' + label)
        if name == "hostname":
            return rules.add("hostname", f"{label} {dot_label}{{0,3}}")
        atom = rules.add("email-atom", "[a-zA-Z0-9!#$%&'*+/=?^_`{|}~-]{1,20}")
        dot_atom = rules.add("email-more", '"." ' + atom)
        tld = rules.add("email-tld", "[a-zA-Z]{2,10}")
        return rules.add("email", f'{atom} {dot_atom}{{0,3}} "@" {label} {dot_label}{{0,2}} "." {tld}')
    if name == "ipv4":
        octet = rules.add("ipv4-octet", integer_range(0, 255))
        return rules.add("ipv4", ' "." '.join([octet] * 4))
    return None


def _date_time(rules: Rules, name: str) -> str:
    day28 = '"0" [1-9] | "1" [0-9] | "2" [0-8]'
    day30, day31 = f'{day28} | "29" | "30"', f'{day28} | "29" | "30" | "31"'
    month_day = (f'"0" [13578] "-" ({day31}) | "1" [02] "-" ({day31}) | "0" [469] "-" ({day30}) '
                 f'| "11-" ({day30}) | "02-" ({day28})')
    date = rules.add("date", '[1-9] [0-9]{3} "-" ' + rules.add("month-day", month_day))
    if name == "date":
        return date
    hour, minute = '([01] [0-9] | "2" [0-3])', "[0-5] [0-9]"
    offset = rules.add("time-offset", f'"Z" | [+-] {hour} ":" {minute}')
    fraction = rules.add("time-fraction", '"." [0-9]{1,6}')
    time = rules.add("time", f'{hour} ":" {minute} ":" {minute} {fraction}? {offset}')
    return time if name == "time" else rules.add("date-time", f'{date} "T" {time}')
