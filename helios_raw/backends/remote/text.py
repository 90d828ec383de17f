"""Text an upstream split inside a character, put back together.

An upstream that streams each token's raw bytes can cut a UTF-8 character between two events: the
first event's JSON then holds bytes that are not valid UTF-8, the next event the rest. An upstream
written in a UTF-16 language can likewise cut a surrogate pair (``"\\ud83d"`` then
``"\\ude00"``). Such text is decoded keeping the pieces as lone surrogates (:func:`decode_json`);
the stream holds back an unfinished character (:func:`split_incomplete`) until the next event
completes it, and :func:`mend` turns what remains into text: pairs joined, raw bytes decoded, and
bytes that never complete a character as U+FFFD.

An upstream that already sent U+FFFD in place of split bytes leaves nothing to repair: the bytes
are gone. llama-server does not split characters (it holds back an incomplete UTF-8 sequence
until the next token completes it) and writes any invalid byte as U+FFFD.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson


def decode_json(data: bytes) -> tuple[Any, bool]:
    """``(value, lossy)``: the JSON ``data`` holds (ValueError if none). Text that is not valid
    UTF-8 (raw bytes of a split character) or holds a lone surrogate escape is decoded keeping
    those pieces as lone surrogates, and ``lossy`` says so: :func:`mend` and
    :func:`split_incomplete` then turn them into text."""
    try:
        return orjson.loads(data), False
    except orjson.JSONDecodeError:
        return json.loads(data.decode("utf-8", "surrogateescape")), True


SURROGATE = re.compile("[\ud800-\udfff]")
_ESCAPED_BYTES = re.compile("[\udc80-\udcff]+")
_ESCAPED_TAIL = re.compile("[\udc80-\udcff]{1,3}$")


def mend(text: str) -> str:
    """``text`` with surrogate pairs joined, raw bytes (kept as lone surrogates) decoded as
    UTF-8, and whatever is left over replaced by U+FFFD."""
    if not SURROGATE.search(text):
        return text
    text = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")
    text = _ESCAPED_BYTES.sub(lambda m: m.group().encode("utf-8", "surrogateescape").decode("utf-8", "replace"), text)
    return SURROGATE.sub("\ufffd", text)


def split_incomplete(text: str) -> tuple[str, str]:
    """``(head, tail)``: ``tail`` is the unfinished character at the end of ``text`` (the first
    bytes of a UTF-8 sequence, or a high surrogate), kept for the next piece."""
    if text and "\ud800" <= text[-1] <= "\udbff":
        return text[:-1], text[-1]
    found = _ESCAPED_TAIL.search(text)
    if found is None:
        return text, ""
    raw = found.group().encode("utf-8", "surrogateescape")
    for back in range(1, len(raw) + 1):
        byte = raw[-back]
        if byte >= 0xC0:  # a lead byte: does its sequence end past the text?
            need = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return (text[:-back], text[-back:]) if back < need else (text, "")
    return text, ""


def mend_all(node: Any) -> Any:
    """``node`` with :func:`mend` applied to every string in it."""
    if isinstance(node, str):
        return mend(node)
    if isinstance(node, list):
        return [mend_all(item) for item in node]
    if isinstance(node, dict):
        return {key: mend_all(value) for key, value in node.items()}
    return node
