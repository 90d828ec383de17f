"""Operations on JSON Schema documents themselves, before any grammar: resolving local
references, merging schemas that must both hold (``allOf``), and telling a value's type."""

from __future__ import annotations

from typing import Any, Optional
from urllib.parse import unquote

BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
OBJECT_KEYS = ("properties", "additionalProperties", "required")
ARRAY_KEYS = ("items", "prefixItems", "additionalItems", "minItems", "maxItems")
STRING_KEYS = ("minLength", "maxLength", "pattern", "format")
#: Keywords that describe rather than constrain (ignored when writing a grammar).
ANNOTATIONS = frozenset({"title", "description", "default", "examples", "$schema", "$id", "$comment",
                         "$defs", "definitions", "deprecated", "readOnly", "writeOnly", "strict", "name",
                         "discriminator", "nullable", "contentEncoding", "contentMediaType", "$anchor"})


class MergeError(ValueError):
    """Two schemas whose combination a shallow merge can't express; ``empty`` when the
    combination allows no value at all."""

    def __init__(self, message: str, empty: bool = False) -> None:
        super().__init__(message)
        self.empty = empty


def resolve(document: Any, ref: str) -> Any:
    """The part of ``document`` the local reference ``ref`` (``#``, ``#/a/b``) points to, or None."""
    target = document
    for part in ref[1:].lstrip("/").split("/") if ref not in ("#", "#/") else []:
        part = unquote(part).replace("~1", "/").replace("~0", "~")
        if isinstance(target, dict) and part in target:
            target = target[part]
        elif isinstance(target, list) and part.isdigit() and int(part) < len(target):
            target = target[int(part)]
        else:
            return None
    return target


def implied_type(schema: dict) -> Optional[str]:
    """The type a schema without ``type`` describes, judged by its keywords (None: any)."""
    for kind, keys in (("object", OBJECT_KEYS), ("array", ARRAY_KEYS), ("string", STRING_KEYS),
                       ("number", BOUNDS)):
        if any(key in schema for key in keys):
            return kind
    return None


def is_type(value: Any, kind: str) -> bool:
    return {"null": value is None, "boolean": isinstance(value, bool),
            "integer": isinstance(value, int) and not isinstance(value, bool),
            "number": isinstance(value, (int, float)) and not isinstance(value, bool),
            "string": isinstance(value, str), "array": isinstance(value, list),
            "object": isinstance(value, dict)}.get(kind, False)


def merge(first: dict, second: dict, where: str) -> dict:
    """The schema both ``first`` and ``second`` describe, as far as a shallow merge can tell."""
    merged = dict(first)
    for key, value in second.items():
        if key not in merged or merged[key] == value or key in ANNOTATIONS:
            merged[key] = value
        elif key == "type":
            merged[key] = _common_types(merged[key], value, where)
        elif key == "properties" and isinstance(value, dict) and isinstance(merged[key], dict):
            merged[key] = {**merged[key], **{k: ({"allOf": [merged[key][k], v]} if k in merged[key] else v)
                                              for k, v in value.items()}}
        elif key == "required" and _names(value) and _names(merged[key]):
            merged[key] = list(dict.fromkeys(merged[key] + value))
        elif key in ("minimum", "exclusiveMinimum", "minItems", "minLength") and _numbers(merged[key], value):
            merged[key] = max(merged[key], value)
        elif key in ("maximum", "exclusiveMaximum", "maxItems", "maxLength") and _numbers(merged[key], value):
            merged[key] = min(merged[key], value)
        else:
            raise MergeError(f"combining schemas with different '{key}' is not supported (at {where})")
    return merged


def _common_types(first: Any, second: Any, where: str) -> Any:
    """The types both ``type`` values allow (an integer is a number)."""
    def kinds(value: Any) -> set:
        if not (isinstance(value, str) or _names(value)):
            raise MergeError(f"'type' (at {where}) must be a type name or a list of them")
        found = set(value) if isinstance(value, list) else {value}
        return found | {"integer"} if "number" in found else found
    common = kinds(first) & kinds(second)
    if "number" in common:
        common.discard("integer")
    if not common:
        raise MergeError(f"the schema at {where} allows no value (its types exclude each other)", empty=True)
    return common.pop() if len(common) == 1 else sorted(common)


def _names(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _numbers(*values) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


