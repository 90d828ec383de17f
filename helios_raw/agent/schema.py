"""JSON schemas for tool parameters: derived from type hints and docstrings, and checked against
the arguments a model sends.

Type hints map as follows: ``str`` string, ``int`` integer, ``float`` number, ``bool`` boolean,
``list[X]`` / ``set[X]`` / ``tuple[X, ...]`` array of X, ``dict`` / ``dict[str, X]`` object,
``Optional[X]`` X or null, ``Union[A, B]`` anyOf, ``Literal[...]`` and ``Enum`` subclasses enum,
``Annotated[X, "text"]`` X described by text, ``Any`` or no hint anything. Other types raise
``TypeError``: give such a tool an explicit schema with :class:`~helios_raw.agent.tools.Tool`.

Docstrings: the first paragraph describes the tool; parameters are described by a Google-style
``Args:`` section, Sphinx-style ``:param name:`` lines or a NumPy-style ``Parameters`` section.
"""

from __future__ import annotations

import collections.abc
import enum
import inspect
import re
import sys
import typing
from typing import Any, Optional

if sys.version_info >= (3, 10):
    from types import UnionType

    UNIONS: tuple = (typing.Union, UnionType)
else:  # pragma: no cover
    UNIONS = (typing.Union,)

_PRIMITIVES = {str: "string", bool: "boolean", int: "integer", float: "number"}
_ARRAYS = (list, set, frozenset, tuple, collections.abc.Sequence, collections.abc.Set,
           collections.abc.Iterable, collections.abc.MutableSequence)
_OBJECTS = (dict, collections.abc.Mapping, collections.abc.MutableMapping)


def schema_of(hint: Any) -> dict:
    """The JSON schema of values of type ``hint`` (see the module docstring for the mapping)."""
    if hint is inspect.Parameter.empty or hint is Any:
        return {}
    if hint is None or hint is type(None):
        return {"type": "null"}
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Annotated:
        schema = schema_of(args[0])
        text = next((a for a in args[1:] if isinstance(a, str)), None)
        return {**schema, "description": text} if text else schema
    if origin in UNIONS:
        return _union(args)
    if origin is typing.Literal:
        return _enum(list(args))
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return _enum([member.value for member in hint])
    if hint in _PRIMITIVES:
        return {"type": _PRIMITIVES[hint]}
    if hint in _ARRAYS or origin in _ARRAYS:
        if origin is tuple and args and (len(args) != 2 or args[1] is not Ellipsis):
            return {"type": "array", "prefixItems": [schema_of(a) for a in args],
                    "minItems": len(args), "maxItems": len(args)}
        items = schema_of(args[0]) if args else {}
        return {"type": "array", "items": items} if items else {"type": "array"}
    if hint in _OBJECTS or origin in _OBJECTS:
        values = schema_of(args[1]) if len(args) == 2 else {}
        return {"type": "object", "additionalProperties": values} if values else {"type": "object"}
    raise TypeError(f"no JSON schema for type {hint!r}")


def _union(members: tuple) -> dict:
    has_null = type(None) in members
    schemas = [schema_of(m) for m in members if m is not type(None)]
    if len(schemas) == 1:
        schema = schemas[0]
        return nullable(schema) if has_null else schema
    if has_null:
        schemas.append({"type": "null"})
    return {"anyOf": schemas}


def nullable(schema: dict) -> dict:
    """``schema`` that also accepts null."""
    if not schema:
        return schema
    if "enum" in schema:
        types = schema.get("type")
        schema = {**schema, "enum": schema["enum"] + [None]}
        if types is not None:
            schema["type"] = [types, "null"] if isinstance(types, str) else list(types) + ["null"]
        return schema
    if isinstance(schema.get("type"), str) and "anyOf" not in schema:
        return {**schema, "type": [schema["type"], "null"]}
    return {"anyOf": [schema, {"type": "null"}]}


def _enum(values: list) -> dict:
    kinds = {_PRIMITIVES.get(type(v)) for v in values}
    schema: dict = {"enum": values}
    if len(kinds) == 1 and None not in kinds:
        schema = {"type": kinds.pop(), "enum": values}
    return schema


# -- docstrings ----------------------------------------------------------------------------------

_GOOGLE_HEADER = re.compile(r"^(Args|Arguments|Parameters|Params|Keyword Args|Keyword Arguments):\s*$")
_GOOGLE_ENTRY = re.compile(r"^\*{0,2}(\w+)\s*(\([^)]*\))?\s*:\s*(.*)$")
_SPHINX_PARAM = re.compile(r"^:param\s+(?:[^:]*\s)?(\w+)\s*:\s*(.*)$")
_NUMPY_ENTRY = re.compile(r"^(\w+)\s*(:.*)?$")


def parse_docstring(doc: Optional[str]) -> tuple[str, dict[str, str]]:
    """``(description, {parameter: description})`` from a docstring: the description is its
    first paragraph, parameter descriptions come from a Google, Sphinx or NumPy section."""
    if not doc:
        return "", {}
    lines = inspect.cleandoc(doc).splitlines()
    summary: list[str] = []
    for index, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or _starts_section(lines, index):
            break
        summary.append(stripped)
    params: dict[str, str] = {}
    _google(lines, params)
    _sphinx(lines, params)
    _numpy(lines, params)
    return " ".join(summary), params


def _starts_section(lines: list[str], index: int) -> bool:
    stripped = lines[index].strip()
    if _GOOGLE_HEADER.match(stripped) or stripped.startswith(":"):
        return True
    return index + 1 < len(lines) and set(lines[index + 1].strip()) == {"-"}


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _google(lines: list[str], params: dict[str, str]) -> None:
    i = 0
    while i < len(lines):
        if not _GOOGLE_HEADER.match(lines[i].strip()):
            i += 1
            continue
        header_indent = _indent(lines[i])
        entry_indent: Optional[int] = None
        current: Optional[str] = None
        i += 1
        while i < len(lines):
            line = lines[i]
            if line.strip() and _indent(line) <= header_indent:
                break
            if line.strip():
                if entry_indent is None:
                    entry_indent = _indent(line)
                match = _GOOGLE_ENTRY.match(line.strip())
                if _indent(line) == entry_indent and match:
                    current = match.group(1)
                    params[current] = match.group(3).strip()
                elif current is not None:
                    params[current] = f"{params[current]} {line.strip()}".strip()
            i += 1


def _sphinx(lines: list[str], params: dict[str, str]) -> None:
    current: Optional[str] = None
    for line in lines:
        stripped = line.strip()
        match = _SPHINX_PARAM.match(stripped)
        if match:
            current = match.group(1)
            params[current] = match.group(2).strip()
        elif stripped.startswith(":") or not stripped:
            current = None
        elif current is not None and _indent(line) > 0:
            params[current] = f"{params[current]} {stripped}".strip()


def _numpy(lines: list[str], params: dict[str, str]) -> None:
    for i, line in enumerate(lines[:-1]):
        if line.strip() not in ("Parameters", "Other Parameters") or set(lines[i + 1].strip()) != {"-"}:
            continue
        base = _indent(line)
        current: Optional[str] = None
        for entry in lines[i + 2:]:
            stripped = entry.strip()
            if not stripped:
                continue
            if _indent(entry) == base:
                match = _NUMPY_ENTRY.match(stripped)
                if not match:
                    break
                current = match.group(1)
                params.setdefault(current, "")
            elif current is not None:
                params[current] = f"{params[current]} {stripped}".strip()


# -- checking arguments --------------------------------------------------------------------------

_JSON_TYPES = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
    "null": lambda v: v is None,
}


#: The ``where`` of a tool's whole argument object.
TOP = "the arguments"

_A = {"string": "a string", "integer": "an integer", "number": "a number", "boolean": "true or false",
      "array": "an array", "object": "an object", "null": "null"}


def check_value(schema: dict, value: Any, where: str = TOP) -> Optional[str]:
    """Why ``value`` does not fit ``schema`` (one sentence naming ``where``), or None if it does.

    Checks what tool schemas use: ``type``, ``enum``, ``anyOf``/``oneOf``, ``properties`` with
    ``required`` and ``additionalProperties``, ``items``. Other keywords are not enforced.
    """
    if not isinstance(schema, dict):
        return None
    alternatives = schema.get("anyOf") or schema.get("oneOf")
    if alternatives and all(check_value(s, value, where) for s in alternatives):
        return f"{where} does not match any of the allowed forms"
    if "enum" in schema and value not in schema["enum"]:
        allowed = ", ".join(repr(v) for v in schema["enum"])
        return f"{where} must be one of {allowed}, not {value!r}"
    types = schema.get("type")
    if types is not None:
        names = [types] if isinstance(types, str) else list(types)
        if not any(_JSON_TYPES.get(name, lambda v: True)(value) for name in names):
            expected = " or ".join(_A.get(name, name) for name in names)
            return f"{where} must be {expected}, not {_A.get(_json_type(value), 'that')}"
    if isinstance(value, dict):
        return _check_object(schema, value, where)
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            problem = check_value(schema["items"], item, f"{where}[{i}]")
            if problem:
                return problem
    return None


def _check_object(schema: dict, value: dict, where: str) -> Optional[str]:
    properties = schema.get("properties") or {}
    missing = [name for name in schema.get("required") or [] if name not in value]
    if missing:
        return f"{_owner(where)}missing the required {_plural('argument', missing)} {', '.join(missing)}"
    extra = schema.get("additionalProperties", True)
    for name, item in value.items():
        if name in properties:
            problem = check_value(properties[name], item, _join(where, name))
        elif extra is False:
            known = ", ".join(properties) or "none"
            problem = f"{_owner(where)}unknown argument {name!r} (known: {known})"
        else:
            problem = check_value(extra, item, _join(where, name)) if isinstance(extra, dict) else None
        if problem:
            return problem
    return None


def _owner(where: str) -> str:
    return "" if where == TOP else f"{where}: "


def _join(where: str, name: str) -> str:
    return name if where == TOP else f"{where}.{name}"


def _plural(word: str, items: list) -> str:
    return word if len(items) == 1 else word + "s"


def _json_type(value: Any) -> str:
    for name in ("null", "boolean", "integer", "number", "string", "array", "object"):
        if _JSON_TYPES[name](value):
            return name
    return type(value).__name__
