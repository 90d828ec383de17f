"""Grammars (llama.cpp GBNF text) that constrain what the local model may generate.

- ``response_format: json_object``: any JSON object;
- ``response_format: json_schema``: JSON valid against the schema. A schema using a keyword the
  grammar cannot enforce (``minimum``, ``not``, ``uniqueItems`` ...) is refused with a 400 that
  names the keyword: the schema is enforced or refused, never accepted and ignored;
- a forced tool call (``tool_choice`` ``"required"`` or naming a function):
  ``{"name": <a tool>, "arguments": <its parameters>}``. Function parameters are advisory in
  OpenAI's API, so keywords a grammar cannot enforce are dropped there instead of refused.

Conversion uses llama-cpp-python's JSON-schema converter (pure Python, imported lazily).
"""

from __future__ import annotations

import json
from typing import Any, Optional

from ...errors import APIError, bad_request

#: Keywords whose constraint a grammar built by the converter would silently not enforce.
UNENFORCEABLE_KEYWORDS = frozenset({
    "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf",
    "not", "if", "then", "else", "dependentRequired", "dependentSchemas", "dependencies",
    "patternProperties", "propertyNames", "minProperties", "maxProperties",
    "uniqueItems", "contains", "minContains", "maxContains", "unevaluatedProperties", "unevaluatedItems",
})
SUPPORTED_FORMATS = frozenset({"date", "time", "date-time", "uuid", "uuid1", "uuid2", "uuid3", "uuid4", "uuid5"})
_SUBSCHEMA_MAPS = ("properties", "$defs", "definitions")
_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SUBSCHEMA_SINGLE = ("items", "additionalProperties")


def json_object_grammar() -> str:
    """Any JSON object."""
    from llama_cpp.llama_grammar import JSON_GBNF

    return JSON_GBNF


def json_schema_grammar(schema: dict, param: str = "response_format.json_schema.schema") -> str:
    """A grammar for JSON valid against ``schema``; a 400 naming ``param`` if it can't be built."""
    problem = unenforceable(schema)
    if problem:
        raise bad_request(f"The JSON schema cannot be enforced on the local model: {problem}.", param,
                          "unsupported_schema")
    return _convert(schema, param)


def tool_call_grammar(tools: list[dict], name: Optional[str] = None) -> str:
    """A grammar for one call of the tool ``name`` (or of any of ``tools`` when None)."""
    choices = []
    for tool in tools:
        function = tool["function"]
        if name is not None and function["name"] != name:
            continue
        parameters = _enforceable_part(function.get("parameters") or {"type": "object"})
        choices.append({
            "type": "object",
            "properties": {"name": {"const": function["name"]}, "arguments": parameters},
            "required": ["name", "arguments"],
        })
    schema = choices[0] if len(choices) == 1 else {"oneOf": choices}
    try:
        return _convert(schema, "tools")
    except APIError:  # a parameters schema the converter rejects: constrain the name only
        loose = [{**c, "properties": {**c["properties"], "arguments": {"type": "object"}}} for c in choices]
        return _convert(loose[0] if len(loose) == 1 else {"oneOf": loose}, "tools")


def unenforceable(schema: Any, path: str = "") -> Optional[str]:
    """A description of the first part of ``schema`` a grammar can't enforce, or None."""
    if not isinstance(schema, dict):
        return None if isinstance(schema, bool) else f"{path or 'the schema'} is not an object"
    for key, value in schema.items():
        where = f"{path}.{key}" if path else key
        if key in UNENFORCEABLE_KEYWORDS:
            return f"the keyword '{key}' (at {where}) is not supported"
        if key == "format" and value not in SUPPORTED_FORMATS:
            return f"the string format {value!r} (at {where}) is not supported " \
                   f"(supported: {', '.join(sorted(SUPPORTED_FORMATS))})"
        if key == "$ref" and not (isinstance(value, str) and value.startswith("#")):
            return f"only local references ('#/...') are supported, not {value!r}"
        if key in _SUBSCHEMA_MAPS and isinstance(value, dict):
            for sub_key, sub in value.items():
                found = unenforceable(sub, f"{where}.{sub_key}")
                if found:
                    return found
        elif key in _SUBSCHEMA_LISTS and isinstance(value, list):
            for i, sub in enumerate(value):
                found = unenforceable(sub, f"{where}[{i}]")
                if found:
                    return found
        elif key in _SUBSCHEMA_SINGLE and isinstance(value, (dict, list)):
            subs = value if isinstance(value, list) else [value]
            for i, sub in enumerate(subs):
                found = unenforceable(sub, where if isinstance(value, dict) else f"{where}[{i}]")
                if found:
                    return found
    return None


def _enforceable_part(schema: Any) -> Any:
    """``schema`` without the keywords (and formats) a grammar can't enforce."""
    if isinstance(schema, list):
        return [_enforceable_part(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key in UNENFORCEABLE_KEYWORDS or (key == "format" and value not in SUPPORTED_FORMATS):
            continue
        if key in _SUBSCHEMA_MAPS and isinstance(value, dict):
            value = {k: _enforceable_part(v) for k, v in value.items()}
        elif key in _SUBSCHEMA_LISTS or key in _SUBSCHEMA_SINGLE:
            value = _enforceable_part(value)
        out[key] = value
    return out


def _convert(schema: dict, param: str) -> str:
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        return json_schema_to_gbnf(json.dumps(schema))
    except Exception as exc:  # the converter signals unsupported input with assorted errors
        reason = str(exc).replace("stdin", "") or type(exc).__name__
        raise bad_request(f"The JSON schema cannot be turned into a grammar: {reason.rstrip('.')}.", param,
                          "unsupported_schema") from None
