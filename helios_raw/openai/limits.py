"""Bounds on what one chat request may ask of the server, checked while it is parsed, before
any prompt is rendered or tokenised and before anything reaches native code.

The defaults are generous for real use and named so that a deployment can change them:

=========================  ==========  =====================================================
limit                      default     what it bounds
=========================  ==========  =====================================================
``MAX_JSON_DEPTH``         64          nesting of the whole body (objects and arrays)
``MAX_MESSAGES``           4,096       ``messages``
``MAX_PROMPT_BYTES``       4 MiB       UTF-8 text of messages, names, tool calls and tools
``MAX_TOOLS``              128         ``tools`` (OpenAI's own limit)
``MAX_STOP``               4           ``stop`` sequences (OpenAI's own limit)
``MAX_STOP_CHARS``         512         characters in one stop sequence
``MAX_LOGIT_BIAS``         1,024       ``logit_bias`` entries
``MAX_TOKEN_ID``           2**31 - 1   a token id (``logit_bias`` keys)
``SEED_RANGE``             int64       ``seed``
=========================  ==========  =====================================================
"""

from __future__ import annotations

import json
from itertools import compress
from typing import Any, Optional

MAX_JSON_DEPTH = 64
MAX_MESSAGES = 4096
MAX_PROMPT_BYTES = 4 * 1024 * 1024
MAX_TOOLS = 128
MAX_STOP = 4
MAX_STOP_CHARS = 512
MAX_LOGIT_BIAS = 1024
MAX_TOKEN_ID = 2 ** 31 - 1
SEED_RANGE = (-(2 ** 63), 2 ** 63 - 1)

_CONTAINERS = (dict, list)
_IS_CONTAINER = frozenset(_CONTAINERS).__contains__
_LONG = 32  # containers longer than this are scanned for children with C-level iteration


def too_deep(body: Any, limit: int = MAX_JSON_DEPTH) -> Optional[str]:
    """The top-level field under which ``body`` nests deeper than ``limit`` levels, "" for the
    body itself, or None if it doesn't. Breadth-first and without recursion: a hostile body
    costs time linear in its size, never Python's stack."""
    if not isinstance(body, _CONTAINERS):
        return None
    if isinstance(body, list):
        roots = [("", body)]
    else:
        roots = [(key, value) for key, value in body.items() if isinstance(value, _CONTAINERS)]
    for key, value in roots:
        level, depth = [value], 2 if key else 1
        while level:
            if depth > limit:
                return key
            following: list = []
            for node in level:
                children = node.values() if type(node) is dict else node
                if len(children) > _LONG:
                    following.extend(compress(children, map(_IS_CONTAINER, map(type, children))))
                else:
                    for child in children:
                        if type(child) in _CONTAINERS:
                            following.append(child)
            level = following
            depth += 1
    return None


def prompt_bytes(messages: list, tools: Optional[list]) -> int:
    """The UTF-8 size of the text a prompt is made of: message contents (text parts), names,
    tool call names and arguments, tool call ids, and the tools' JSON."""
    total = 0
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            total += _size(content)
        elif isinstance(content, list):
            total += sum(_size(part.get("text") or part.get("refusal") or "") for part in content
                         if isinstance(part, dict))
        for key in ("name", "tool_call_id"):
            if isinstance(message.get(key), str):
                total += _size(message[key])
        for call in message.get("tool_calls") or ():
            function = call.get("function") or {}
            total += _size(function.get("name") or "") + _size(function.get("arguments") or "")
    for tool in tools or ():
        total += _size(json.dumps(tool.get("function"), ensure_ascii=False))
    return total


def _size(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
