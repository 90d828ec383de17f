"""Grammars (llama.cpp GBNF text) that constrain what the local model may generate.

- ``response_format: json_object``: any JSON object;
- ``response_format: json_schema``: JSON valid against the schema (see :mod:`.json_grammar` for
  what is enforced). A keyword the grammar cannot enforce is refused with a 400 that names it:
  the schema is enforced or refused, never accepted and ignored;
- a forced tool call (``tool_choice`` ``"required"`` or naming a function):
  ``{"name": <a tool>, "arguments": <its parameters>}``. Function parameters are advisory in
  OpenAI's API, so keywords a grammar cannot enforce are dropped there instead of refused, and
  parameters the converter can't use at all leave the arguments any JSON object. A function
  without ``parameters`` takes none: its arguments are ``{}``.

Every grammar is built within limits (schema depth and size, counts, the grammar's own size)
and then checked by :func:`~.gbnf_check.check` before it is returned: past a limit, the
request gets a 400 (code ``schema_too_large``) naming the keyword or the limit, and no grammar
that llama.cpp would refuse or crash on is ever handed to it. Building a grammar is CPU work
bounded by those limits; callers run it off the event loop. The last 64 grammars built (of up
to 256 KiB each) are kept and reused for requests with the same schema or tools.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from functools import lru_cache
from typing import Optional

from ...errors import APIError, bad_request
from .gbnf import GrammarError, GrammarTooLarge, Rules, literal
from .gbnf_check import MAX_EXPANDED_RULES, MAX_GRAMMAR_BYTES, check, describe
from .json_grammar import Converter, SchemaError

__all__ = ["json_object_grammar", "json_schema_grammar", "tool_call_grammar", "describe"]

#: The budget the converter writes within (the checker's limits leave room above it).
GRAMMAR_COST = MAX_EXPANDED_RULES - 10_000
NO_PARAMETERS = {"type": "object", "properties": {}, "additionalProperties": False}
ANY_OBJECT = {"type": "object"}


@lru_cache(maxsize=1)
def json_object_grammar() -> str:
    """Any JSON object."""
    rules = _rules()
    return _finish(rules, Converter(rules, strict=True).document(ANY_OBJECT), "response_format")


def json_schema_grammar(schema: dict, param: str = "response_format.json_schema.schema") -> str:
    """A grammar for JSON valid against ``schema``; a 400 naming ``param`` if it can't be built."""
    key = "schema:" + json.dumps(schema, sort_keys=True)
    return _cache.get(key) or _cache.keep(key, _schema_grammar(schema, param))


def _schema_grammar(schema: dict, param: str) -> str:
    rules = _rules()
    try:
        root = Converter(rules, strict=True).document(schema)
    except GrammarError as exc:
        raise _refusal(exc, param) from None
    return _finish(rules, root, param)


def tool_call_grammar(tools: list[dict], name: Optional[str] = None) -> str:
    """A grammar for one call of the tool ``name`` (or of any of ``tools`` when None)."""
    key = "tools:" + json.dumps([name, tools], sort_keys=True)
    return _cache.get(key) or _cache.keep(key, _tool_grammar(tools, name))


def _tool_grammar(tools: list[dict], name: Optional[str]) -> str:
    rules = _rules()
    converter = Converter(rules, strict=False)
    space = "space"
    calls = []
    for i, tool in enumerate(tools):
        function = tool["function"]
        if name is not None and function["name"] != name:
            continue
        parameters = function.get("parameters")
        parameters = NO_PARAMETERS if parameters is None else {"type": "object", **parameters}
        param = f"tools[{i}].function.parameters"
        try:
            arguments = converter.document(parameters)
        except GrammarError as exc:
            if isinstance(exc, GrammarTooLarge) or (isinstance(exc, SchemaError) and exc.limit):
                raise _refusal(exc, param) from None
            arguments = converter.document(ANY_OBJECT)
        label = literal(json.dumps(function["name"], ensure_ascii=False))
        calls.append(rules.add("call", f'"{{" {space} "\\"name\\"" {space} ":" {space} {label} {space} "," {space} '
                                       f'"\\"arguments\\"" {space} ":" {space} {arguments} {space} "}}"'))
    return _finish(rules, " | ".join(calls), "tools")


class _Cache:
    """The most recently built grammars, by their request's schema: a client asking for the
    same structure again reuses its grammar. Bounded in entries and in bytes."""

    def __init__(self, entries: int, max_bytes: int) -> None:
        self.entries = entries
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> Optional[str]:
        with self._lock:
            text = self._items.get(key)
            if text is not None:
                self._items.move_to_end(key)
            return text

    def keep(self, key: str, text: str) -> str:
        with self._lock:
            if len(key) + len(text) <= self.max_bytes // self.entries:
                self._items[key] = text
                while len(self._items) > self.entries:
                    self._items.popitem(last=False)
        return text


_cache = _Cache(entries=64, max_bytes=16 << 20)


def _rules() -> Rules:
    return Rules(max_cost=GRAMMAR_COST, max_bytes=MAX_GRAMMAR_BYTES // 2)


def _finish(rules: Rules, root: str, param: str) -> str:
    text = rules.render(root)
    try:
        check(text)
    except GrammarError as exc:
        raise _refusal(exc, param) from None
    return text


def _refusal(exc: GrammarError, param: str) -> APIError:
    too_large = isinstance(exc, GrammarTooLarge) or getattr(exc, "limit", False)
    if too_large:
        return bad_request(f"The JSON schema is too large for this server: {exc}.", param, "schema_too_large")
    return bad_request(f"The JSON schema cannot be enforced on the local model: {exc}.", param, "unsupported_schema")
