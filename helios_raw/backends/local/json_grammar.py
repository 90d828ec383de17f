"""JSON Schema to GBNF: a grammar whose every string is JSON valid against the schema.

What is enforced: ``type`` (one or a list), ``const``, ``enum``, ``anyOf`` / ``oneOf`` (both as
a union: ``oneOf`` alternatives are not checked for overlap), ``allOf`` (merged), ``$ref`` to
any part of the same document, recursion included (``"#"``); objects: ``properties``,
``required``, ``additionalProperties`` (when ``properties`` is given and it is absent, no other
keys are written; extra keys never repeat a listed name); arrays: ``items``, ``prefixItems``
(or a list ``items`` and ``additionalItems``), ``minItems``, ``maxItems``; strings:
``minLength``, ``maxLength``, ``pattern``, ``format`` (see :mod:`.json_strings`); integers:
``minimum``, ``maximum``, ``exclusiveMinimum``, ``exclusiveMaximum`` exactly; numbers: the same
bounds, soundly approximated: a number is written within the whole numbers the range holds
(``[0.5, 2.5]`` gives values from 1 to 2, such as ``1``, ``1.75`` or ``2``), and a range holding
no whole number is refused. Integers and integral parts have at most 16 digits. A string is
written without whitespace around it, with at most one space between tokens inside.

Annotations (``title``, ``description``, ``default`` ...) and unknown keywords are ignored.
Keywords that can't be enforced (:data:`UNENFORCEABLE`) are refused in strict mode and dropped
otherwise (function parameters, which OpenAI treats as advisory). Limits refuse a schema in
both modes, before its grammar is written: nesting ``MAX_SCHEMA_DEPTH`` (counting ``$ref``
hops), ``MAX_SCHEMA_NODES`` subschemas, ``MAX_ENUM_VALUES`` ``enum`` / ``const`` values, counts
(``minItems``, ``maxItems``, ``minLength``, ``maxLength``) up to ``MAX_REPEAT``, and the
grammar's own budget (:class:`~.gbnf.Rules`).
"""

from __future__ import annotations

import json
import math
from typing import Any, Optional

from .gbnf import (
    INT_LIMIT,
    MAX_REPEAT,
    GrammarError,
    GrammarTooLarge,
    Rules,
    class_char,
    integer_range,
    literal,
)
from .json_strings import SUPPORTED_FORMATS, any_char, format_symbol, pattern_symbol
from .schema_ops import (
    ANNOTATIONS,
    BOUNDS,
    MergeError,
    implied_type,
    is_type,
    merge,
    resolve,
)

MAX_SCHEMA_DEPTH = 64
MAX_SCHEMA_NODES = 5_000
MAX_ENUM_VALUES = 1_000

#: Keywords whose constraint the grammar does not enforce.
UNENFORCEABLE = frozenset({
    "multipleOf", "not", "if", "then", "else", "dependentRequired", "dependentSchemas", "dependencies",
    "patternProperties", "propertyNames", "minProperties", "maxProperties", "uniqueItems", "contains",
    "minContains", "maxContains", "unevaluatedProperties", "unevaluatedItems", "$dynamicRef", "$recursiveRef",
})
_TYPES = ("null", "boolean", "integer", "number", "string", "array", "object")
_SPACE = "space"
_COMMA = f'{_SPACE} "," {_SPACE}'


class SchemaError(GrammarError):
    """A schema that can't be turned into a grammar: ``limit`` when one of the limits refused
    it, ``empty`` when it allows no value at all."""

    def __init__(self, message: str, limit: bool = False, empty: bool = False) -> None:
        super().__init__(message)
        self.limit = limit
        self.empty = empty


class Converter:
    """Writes the rules for JSON Schema documents into ``rules``; ``strict`` refuses keywords
    that can't be enforced instead of dropping them."""

    def __init__(self, rules: Rules, strict: bool) -> None:
        self.rules = rules
        self.strict = strict
        self.nodes = 0
        self.enum_values = 0
        self._document: Any = None
        self._refs: dict[str, str] = {}
        self._any: Optional[str] = None
        rules.define(_SPACE, '" "?')

    def document(self, schema: Any) -> str:
        """The rule name for one whole schema document (the target of ``$ref: "#"``)."""
        self._document, self._refs = schema, {}
        return self._ref("#", 0)

    # -- dispatch ------------------------------------------------------------------------

    def visit(self, schema: Any, where: str, depth: int) -> str:
        """A symbol matching the JSON values valid against ``schema``."""
        if depth > MAX_SCHEMA_DEPTH:
            raise SchemaError(f"the schema nests deeper than {MAX_SCHEMA_DEPTH} levels (at {where})", limit=True)
        self.nodes += 1
        if self.nodes > MAX_SCHEMA_NODES:
            raise SchemaError(f"the schema has more than {MAX_SCHEMA_NODES:,} subschemas", limit=True)
        if schema is True:
            return self.any_value()
        if schema is False:
            raise SchemaError(f"the schema at {where or 'the root'} allows no value", empty=True)
        if not isinstance(schema, dict):
            raise SchemaError(f"{where or 'the schema'} is not a schema object")
        schema = self._enforceable(schema, where)
        kind = schema.get("type")
        if kind is not None and not (isinstance(kind, str) or (isinstance(kind, list) and kind
                                                               and all(isinstance(k, str) for k in kind))):
            raise SchemaError(f"'type' (at {_at(where, 'type')}) must be a type name or a list of them")
        if "$ref" in schema:
            return self._visit_ref(schema, where, depth)
        if "allOf" in schema:
            return self.visit(self._merge_all(schema, where, depth), where, depth + 1)
        if "const" in schema:
            return self._literals([schema["const"]], where)
        if "enum" in schema:
            return self._enum(schema, where)
        if "anyOf" in schema or "oneOf" in schema:
            return self._union(schema, where, depth)
        if isinstance(kind, list):
            return self._alternatives([{**schema, "type": t} for t in kind], _at(where, "type"), depth)
        if kind is None:
            kind = implied_type(schema)
            if kind is None:
                return self.any_value()
        if kind not in _TYPES:
            raise SchemaError(f"'type' {kind!r} (at {_at(where, 'type')}) is not a JSON Schema type")
        return getattr(self, f"_{kind}")(schema, where, depth)

    def _enforceable(self, schema: dict, where: str) -> dict:
        found = [key for key in schema if key in UNENFORCEABLE]
        if found and self.strict:
            raise SchemaError(f"the keyword '{found[0]}' (at {_at(where, found[0])}) is not supported")
        return {k: v for k, v in schema.items() if k not in UNENFORCEABLE} if found else schema

    def _unsupported(self, message: str) -> None:
        """Refuse in strict mode; otherwise the caller goes on without the keyword."""
        if self.strict:
            raise SchemaError(message)

    # -- references and combinations ---------------------------------------------------------

    def _visit_ref(self, schema: dict, where: str, depth: int) -> str:
        ref = schema["$ref"]
        if not isinstance(ref, str) or not ref.startswith("#"):
            raise SchemaError(f"only local references ('#...') are supported, not {ref!r} (at {_at(where, '$ref')})")
        if any(k != "$ref" and k not in ANNOTATIONS for k in schema):
            merged = {"allOf": [{"$ref": ref}], **{k: v for k, v in schema.items() if k != "$ref"}}
            return self.visit(merged, where, depth + 1)
        return self._ref(ref, depth)

    def _ref(self, ref: str, depth: int) -> str:
        name = self._refs.get(ref)
        if name is None:
            name = self._refs[ref] = self.rules.reserve("ref-" + ref.rsplit("/", 1)[-1] if ref != "#" else "doc")
            where = ref[1:].lstrip("/").replace("/", ".")
            self.rules.define(name, self.visit(self._resolve(ref), where, depth + 1))
        return name

    def _resolve(self, ref: str) -> Any:
        target = resolve(self._document, ref)
        if target is None:
            raise SchemaError(f"the reference {ref!r} points to nothing in the schema")
        return target

    def _merge_all(self, schema: dict, where: str, depth: int) -> dict:
        parts = schema["allOf"]
        if not isinstance(parts, list) or not parts:
            raise SchemaError(f"'allOf' (at {_at(where, 'allOf')}) must be a non-empty array")
        merged = {k: v for k, v in schema.items() if k != "allOf"}
        for i, part in enumerate(parts):
            seen = set()
            while isinstance(part, dict) and "$ref" in part and len(part) == 1:
                if not isinstance(part["$ref"], str):
                    raise SchemaError(f"'$ref' (at {where or 'the root'}) must be a string")
                if part["$ref"] in seen or len(seen) > MAX_SCHEMA_DEPTH:
                    raise SchemaError(f"'allOf' (at {where or 'the root'}) merges a recursive reference")
                seen.add(part["$ref"])
                part = self._resolve(part["$ref"])
            if not isinstance(part, dict):
                raise SchemaError(f"'allOf[{i}]' (at {where or 'the root'}) must be a schema object")
            merged = self._merge(merged, self._enforceable(part, where), f"{_at(where, 'allOf')}[{i}]")
        return merged

    def _union(self, schema: dict, where: str, depth: int) -> str:
        key = "anyOf" if "anyOf" in schema else "oneOf"
        options = schema[key]
        if not isinstance(options, list) or not options:
            raise SchemaError(f"'{key}' (at {_at(where, key)}) must be a non-empty array")
        rest = {k: v for k, v in schema.items() if k not in ("anyOf", "oneOf") and k not in ANNOTATIONS}
        if rest:
            options = [self._merge(rest, o, _at(where, key)) if isinstance(o, dict) else o for o in options]
        return self._alternatives(options, _at(where, key), depth)

    @staticmethod
    def _merge(first: dict, second: dict, where: str) -> dict:
        try:
            return merge(first, second, where)
        except MergeError as exc:
            raise SchemaError(str(exc), empty=exc.empty) from None

    def _alternatives(self, options: list, where: str, depth: int) -> str:
        symbols = []
        for i, option in enumerate(options):
            try:
                symbols.append(self.visit(option, f"{where}[{i}]", depth + 1))
            except SchemaError as exc:
                if not exc.empty:
                    raise
        if not symbols:
            raise SchemaError(f"no alternative of {where} allows a value", empty=True)
        return self.rules.add("alt", " | ".join(dict.fromkeys(symbols)))

    # -- literal values ----------------------------------------------------------------------

    def _enum(self, schema: dict, where: str) -> str:
        values = schema["enum"]
        if not isinstance(values, list):
            raise SchemaError(f"'enum' (at {_at(where, 'enum')}) must be an array")
        kind = schema.get("type")
        if kind is not None:
            kinds = kind if isinstance(kind, list) else [kind]
            values = [v for v in values if any(is_type(v, k) for k in kinds)]
        return self._literals(values, where)

    def _literals(self, values: list, where: str) -> str:
        self.enum_values += len(values)
        if self.enum_values > MAX_ENUM_VALUES:
            raise SchemaError(f"the schema has more than {MAX_ENUM_VALUES:,} 'enum' and 'const' values", limit=True)
        if not values:
            raise SchemaError(f"the schema at {where or 'the root'} allows no value", empty=True)
        texts = dict.fromkeys(literal(json.dumps(v, ensure_ascii=False)) for v in values)
        return self.rules.add("enum", " | ".join(texts))

    # -- types -------------------------------------------------------------------------------

    def _null(self, schema: dict, where: str, depth: int) -> str:
        return self.rules.add("null", '"null"')

    def _boolean(self, schema: dict, where: str, depth: int) -> str:
        return self.rules.add("boolean", '"true" | "false"')

    def _integer(self, schema: dict, where: str, depth: int) -> str:
        low, high = self._bounds(schema, where, integer=True)
        return self.rules.add("integer", integer_range(low, high))

    def _number(self, schema: dict, where: str, depth: int) -> str:
        if not any(key in schema for key in BOUNDS):
            return self.rules.add("number", f'{integer_range(-INT_LIMIT, INT_LIMIT)} {self._fraction()}? '
                                            f'{self.rules.add("exponent", "[eE] [-+]? [0-9]{1,2}")}?')
        low, high = self._bounds(schema, where, integer=False)
        fraction = self._fraction()
        options = [integer_range(low, high)]
        if max(low, 0) <= high - 1:
            options.append(f"{integer_range(max(low, 0), high - 1)} {fraction}")
        if max(-high, 0) <= -low - 1:
            options.append(f'"-" {integer_range(max(-high, 0), -low - 1)} {fraction}')
        return self.rules.add("number", " | ".join(options))

    def _fraction(self) -> str:
        return self.rules.add("fraction", '"." [0-9]{1,15}')

    def _bounds(self, schema: dict, where: str, integer: bool) -> tuple[int, int]:
        """The smallest and largest whole numbers ``schema``'s bounds allow (within 16 digits)."""
        low, high = -INT_LIMIT, INT_LIMIT
        for key in BOUNDS:
            value = schema.get(key)
            if value is None or (isinstance(value, bool) and key.startswith("exclusive")):
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise SchemaError(f"'{key}' (at {_at(where, key)}) must be a finite number")
            exclusive = key.startswith("exclusive") or schema.get("exclusive" + key[0].upper() + key[1:]) is True
            if key.endswith("inimum"):
                low = max(low, math.floor(value) + 1 if exclusive else math.ceil(value))
            else:
                high = min(high, math.ceil(value) - 1 if exclusive else math.floor(value))
        if low > high:
            what = "integer" if integer else "whole number (this server keeps numbers within the whole numbers " \
                                             "of their range)"
            raise SchemaError(f"no {what} satisfies the bounds at {where or 'the root'} within "
                              f"±{INT_LIMIT:,}")
        return low, high

    def _string(self, schema: dict, where: str, depth: int) -> str:
        quote = '"\\""'
        low, high = self._count(schema, "minLength", where), self._count(schema, "maxLength", where)
        lengths = low is not None or high is not None
        pattern, form = schema.get("pattern"), schema.get("format")
        if pattern is not None:
            if not isinstance(pattern, str):
                raise SchemaError(f"'pattern' (at {_at(where, 'pattern')}) must be a string")
            if lengths or form is not None:
                self._unsupported(f"'pattern' together with a length or 'format' is not supported (at {where})")
            try:
                return self.rules.add("string", f"{quote} {pattern_symbol(self.rules, pattern)} {quote}")
            except GrammarTooLarge:
                raise
            except GrammarError as exc:
                self._unsupported(f"{exc} (at {_at(where, 'pattern')})")
        if form is not None:
            symbol = format_symbol(self.rules, form) if isinstance(form, str) else None
            if symbol is None:
                self._unsupported(f"the string format {form!r} (at {_at(where, 'format')}) is not supported "
                                  f"(supported: {', '.join(SUPPORTED_FORMATS)})")
            elif lengths:
                self._unsupported(f"'format' together with a length is not supported (at {where})")
            else:
                return self.rules.add("string", f"{quote} {symbol} {quote}")
        run = self.rules.repeat(any_char(self.rules), low or 0, high)
        return self.rules.add("string", f"{quote} {run} {quote}")

    def _count(self, schema: dict, key: str, where: str) -> Optional[int]:
        value = schema.get(key)
        if value is None:
            return None
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise SchemaError(f"'{key}' (at {_at(where, key)}) must be a non-negative integer")
        if value > MAX_REPEAT:
            raise SchemaError(f"'{key}' (at {_at(where, key)}) is {value:,}; this server enforces at most "
                              f"{MAX_REPEAT:,}", limit=True)
        return value

    def _array(self, schema: dict, where: str, depth: int) -> str:
        items, prefix = schema.get("items"), schema.get("prefixItems")
        if isinstance(items, list):
            prefix, rest = items, schema.get("additionalItems", True)
        else:
            rest = True if items is None else items
        if prefix is not None and not isinstance(prefix, list):
            raise SchemaError(f"'prefixItems' (at {_at(where, 'prefixItems')}) must be an array")
        prefix = list(prefix or [])
        low, high = self._count(schema, "minItems", where) or 0, self._count(schema, "maxItems", where)
        if high is not None:
            prefix = prefix[:high]
        parts = [self.visit(p, f"{_at(where, 'prefixItems')}[{i}]", depth + 1) for i, p in enumerate(prefix)]
        more_low = max(low - len(parts), 0)
        more_high = None if high is None else high - len(parts)
        if rest is False or more_high == 0:
            if more_low:
                raise SchemaError(f"'minItems' (at {_at(where, 'minItems')}) asks for more items than the schema allows")
            body = f" {_COMMA} ".join(parts)
            body = f"{body} {_SPACE}" if body else ""
        else:
            item = self.visit(rest, _at(where, "items"), depth + 1)
            following = self.rules.add(f"{item}-next", f"{_COMMA} {item}")
            if parts:
                body = f" {_COMMA} ".join(parts) + f" {self.rules.repeat(following, more_low, more_high)} {_SPACE}"
            else:
                run = f"{item} {self.rules.repeat(following, max(more_low - 1, 0), None if more_high is None else more_high - 1)} {_SPACE}"
                body = run if more_low else self.rules.add("items", run) + "?"
        return self.rules.add("array", f'"[" {_SPACE} {body} "]"')

    def _object(self, schema: dict, where: str, depth: int) -> str:
        properties = schema.get("properties", {})
        required = schema.get("required", [])
        if not isinstance(properties, dict) or not isinstance(required, list) or \
                not all(isinstance(r, str) for r in required):
            raise SchemaError(f"'properties' must be an object and 'required' an array of names (at {where})")
        additional = schema.get("additionalProperties", "properties" not in schema)
        fields = []  # (name, value symbol, required)
        extras = [(name, additional) for name in dict.fromkeys(required) if name not in properties]
        for name, sub in list(properties.items()) + extras:
            needed = name in required
            if sub is False and not needed:
                continue
            if isinstance(sub, bool) and name not in properties:
                sub = {} if sub else False
            fields.append((name, self.visit(sub, f"{_at(where, 'properties')}.{name}", depth + 1), needed))
        kvs = [(self.rules.add("kv", f"{literal(json.dumps(n, ensure_ascii=False))} {_SPACE} \":\" {_SPACE} {v}"), r)
               for n, v, r in fields]
        extra = None
        if additional is not False:
            value = self.visit({} if additional is True else additional, _at(where, "additionalProperties"), depth + 1)
            key = self._other_key(list(properties)) if properties else self._string({}, where, depth)
            extra = self.rules.add("kv", f'{key} {_SPACE} ":" {_SPACE} {value}')
        return self.rules.add("object", f'"{{" {_SPACE} {self._members(kvs, extra)} "}}"')

    def _members(self, kvs: list, extra: Optional[str]) -> str:
        """The members of an object: ``kvs`` in order (optional ones may be left out), then any
        number of ``extra`` members, commas between."""
        comma = _COMMA
        after = ""  # what may follow once something has been written
        if extra is not None:
            after = self.rules.repeat(self.rules.add("kv-next", f"{comma} {extra}"), 0, None)
        suffixes = [after]  # suffixes[-1 - j]: the members after kvs[-1 - j], reversed below
        for kv, needed in reversed(kvs[1:]):
            step = f"{comma} {kv}" if needed else self.rules.add("kv-next", f"{comma} {kv}") + "?"
            suffixes.append(self.rules.add("members", f"{step} {suffixes[-1]}".strip()))
        suffixes.append("")
        suffixes.reverse()  # suffixes[i]: members i.. after something was written
        first = []
        for i, (kv, needed) in enumerate(kvs):
            first.append(f"{kv} {suffixes[i + 1]} {_SPACE}")
            if needed:
                break
        else:
            if extra is not None:
                first.append(f"{extra} {after} {_SPACE}")
            first.append("")
        if len(first) == 1:
            return first[0]
        return self.rules.add("members", " | ".join(first))

    def _other_key(self, names: list) -> str:
        """A JSON string (plain characters, no escapes) that is none of ``names``: a rule per
        node of the names' trie, written from the leaves up."""
        plain = '[^"\\\\\\x00-\\x1F]'
        free = self.rules.add("key-rest", f'{plain}* "\\""')
        trie: dict = {}
        for name in names:
            if any(ch in '"\\' or ord(ch) < 0x20 for ch in name):
                continue  # a key written in plain characters can't be this name anyway
            node = trie
            for ch in name:
                node = node.setdefault(ch, {})
            node[""] = {}
        order, stack = [], [trie]
        while stack:
            node = stack.pop()
            order.append(node)
            stack.extend(child for ch, child in node.items() if ch)
        symbols: dict[int, str] = {}
        for node in reversed(order):
            chars = [ch for ch in node if ch]
            options = [] if "" in node else ['"\\""']
            options.extend(f"{literal(ch)} {symbols[id(node[ch])]}" for ch in chars)
            options.append(f"{plain[:-1]}{''.join(class_char(ord(ch)) for ch in chars)}] {free}")
            symbols[id(node)] = self.rules.add("key-part", " | ".join(options))
        return self.rules.add("key", f'"\\"" {symbols[id(trie)]}')

    def any_value(self) -> str:
        """Any JSON value (one recursive rule, written once)."""
        if self._any is None:
            self._any = value = self.rules.reserve("value")
            kinds = [self._object({"type": "object"}, "", 0), self._array({}, "", 0), self._string({}, "", 0),
                     self._number({}, "", 0), self._boolean({}, "", 0), self._null({}, "", 0)]
            self.rules.define(value, " | ".join(kinds))
        return self._any


def _at(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key
