"""Tool calls read out of generated text as it comes, so that they stream token by token.

A model calls tools by writing ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` blocks
or one bare ``{"name": ..., "arguments": {...}}`` object (what the forced-call grammar makes).
:class:`CallReader` sits between the text and the client:

- while the answer may still be a tool call it is held, and only that long: through the opening
  tag or brace and the ``"name"`` key and value. Once it can't be (other text, another first
  key, a name that is no tool of the request), it is released as content and the rest passes
  straight through;
- once a call's name is read, the call is announced and its arguments are passed on as they are
  generated, until their JSON value closes (arguments written as a JSON string are decoded
  first, so they are passed on once whole);
- an object whose first key is ``"arguments"`` is held to the end and judged whole, as
  :func:`~.chat_formats.parse_tool_calls` does.

What follows a call that is neither another call nor its closing tag is dropped. With ``forced``
(a grammar makes the call) nothing is released as content.
"""

from __future__ import annotations

import json
import re
from typing import Callable, Optional

from ...ids import new_id
from ...openai.objects import TOOL_CALL_ID_PREFIX
from .chat_formats import TOOL_CALL_CLOSE, TOOL_CALL_OPEN, parse_tool_calls

#: ``emit(text, logprobs)``: content for the client.
Emit = Callable[[str, Optional[list]], None]
#: ``on_call(index, id, name)`` announces a call; ``on_arguments(index, text)`` continues it.
CallStart = Callable[[int, str, str], None]
CallArguments = Callable[[int, str], None]

#: Where a call's arguments begin.
_ARGUMENTS_AT = re.compile(r'"(?:arguments|parameters)"\s*:\s*')
#: What :func:`read_head` answers for text that may still become a call's head.
PARTIAL = "partial"
#: ... and for an object whose first key is its arguments.
ARGUMENTS_FIRST = "arguments first"


def read_head(text: str):
    """Read ``{"name": "<name>", "arguments":`` (or ``"parameters":``) at the start of ``text``:
    ``(end, name)`` when complete, :data:`PARTIAL` when ``text`` may still become one,
    :data:`ARGUMENTS_FIRST`, or None when it can't be one."""
    reader = _Cursor(text)
    name = None
    for step in ("{", " ", '"name"', " ", ":", " ", "string", " ", ",", " ", "key", " ", ":"):
        if step == " ":
            reader.skip_space()
            continue
        if step == "string":
            found = reader.string()
        elif step == "key":
            found = reader.literal('"arguments"', '"parameters"')
        else:
            found = reader.literal(step)
            if step == '"name"' and found is None:
                first = reader.literal('"arguments"', '"parameters"')
                return ARGUMENTS_FIRST if first not in (None, PARTIAL) else first
        if found is None or found == PARTIAL:
            return found
        if step == "string":
            name = found
    try:
        return reader.at, json.loads(name)
    except ValueError:
        return None


class _Cursor:
    """Reads pieces of text from the start; each read answers None or :data:`PARTIAL` on failure."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.at = 0

    def skip_space(self) -> None:
        while self.at < len(self.text) and self.text[self.at].isspace():
            self.at += 1

    def literal(self, *options: str):
        rest = self.text[self.at:]
        for option in options:
            if rest.startswith(option):
                self.at += len(option)
                return option
        return PARTIAL if any(option.startswith(rest) for option in options) else None

    def string(self):
        """A JSON string's source text, quotes included."""
        text, start = self.text, self.at
        if start >= len(text):
            return PARTIAL
        if text[start] != '"':
            return None
        i = start + 1
        while i < len(text):
            if text[i] == "\\":
                i += 2
                continue
            if text[i] == '"':
                self.at = i + 1
                return text[start:i + 1]
            i += 1
        return PARTIAL


class CallReader:
    """Turns generated text into content or streamed tool calls (see the module docstring).

    Feed it with :meth:`emit`; :meth:`finish` returns the calls, each ``{"id", "type",
    "function": {"name", "arguments"}}``, or None when the answer is content.
    """

    def __init__(self, emit: Emit, on_call: CallStart, on_arguments: CallArguments,
                 names: frozenset, forced: bool) -> None:
        self._emit = emit
        self._on_call = on_call
        self._on_arguments = on_arguments
        self._names = names
        self._forced = forced
        self.calls: list[dict] = []
        self._mode = "deciding"  # "content", "calls", "whole" (judged at the end) or "done"
        self._text = ""  # all text fed since the first character that could start a call
        self._at = 0  # where in _text reading resumes
        self._tagged = False
        self._value: Optional[_ValueEnd] = None  # the current call's arguments, while open
        self._value_at = 0  # where in _text they begin
        self._logprobs: list = []

    def emit(self, text: str, logprobs: Optional[list]) -> None:
        if self._mode == "content":
            self._emit(text, logprobs)
            return
        if logprobs:
            self._logprobs.extend(logprobs)
        self._text += text
        self._read()

    def finish(self) -> Optional[list]:
        """The calls made, or None when the answer is content (released now if it was held)."""
        if self._mode == "content":
            return None
        if self._mode == "whole" or not self.calls:
            calls = parse_tool_calls(self._text, set(self._names)) if self._text.strip() else None
            if calls is None and self._forced and len(self._names) == 1:
                self._announce(next(iter(self._names)))  # cut before its name: the one tool it may call
                found = _ARGUMENTS_AT.search(self._text)
                self._arguments(self._text[found.end():] if found else "")
                return self.calls
            if calls is None:
                if not self._forced:
                    self._release()
                return None
            for call in calls:
                self._announce(call["function"]["name"])
                self._arguments(call["function"]["arguments"])
        elif self._value is not None and self._value.string and not self._value.done:
            self._arguments(self._text[self._value_at:])  # cut short inside a string: as it stands
        return self.calls

    # -- reading -----------------------------------------------------------------------------

    def _read(self) -> None:
        while self._mode in ("deciding", "calls"):
            if self._value is not None:
                if not self._read_arguments():
                    return
            elif not self._read_head():
                return

    def _read_head(self) -> bool:
        """Read the next call's head; False when more text is needed or reading has ended."""
        rest = self._text[self._at:]
        body = rest.lstrip()
        if not body:
            return False
        if body.startswith(TOOL_CALL_OPEN) and (self._tagged or not self.calls):
            self._tagged = True
            body = body[len(TOOL_CALL_OPEN):].lstrip()
            if not body:
                return False
        elif (self._tagged or not self.calls) and TOOL_CALL_OPEN.startswith(body):
            return False  # the opening tag may still be arriving
        elif self.calls:  # after a call, only another tagged call may follow
            self._mode = "done"
            return False
        head = read_head(body)
        if head == PARTIAL:
            return False
        if head == ARGUMENTS_FIRST:
            self._mode = "whole"
            return False
        if head is None or head[1] not in self._names:
            return self._not_a_call()
        end, name = head
        self._mode = "calls"
        self._at += len(rest) - len(body) + end
        self._announce(name)
        self._value = _ValueEnd()
        return True

    def _read_arguments(self) -> bool:
        """Pass on the arguments read so far; True once the value and its call have closed."""
        value = self._value
        if not value.done:
            rest = self._text[self._at:]
            if not value.started:  # the space before the value is not part of it
                body = rest.lstrip()
                self._at += len(rest) - len(body)
                self._value_at = self._at
                rest = body
            used = value.feed(rest)
            if not value.string:
                self._arguments(rest[:used])
            self._at += used
            if not value.done:
                return False
            if value.string:  # arguments written as a JSON string: decoded, then passed on
                source = self._text[self._value_at:self._at]
                try:
                    decoded = json.loads(source)
                except ValueError:
                    decoded = source
                self._arguments(decoded if isinstance(decoded, str) else json.dumps(decoded))
        closing = self._text[self._at:].lstrip()
        if not closing:
            return False
        if closing[0] != "}":
            self._mode = "done"  # not the end of a call object: nothing more is read
            return False
        after = closing[1:].lstrip()
        if self._tagged:
            if not after or (TOOL_CALL_CLOSE.startswith(after) and after != TOOL_CALL_CLOSE):
                return False  # the closing tag may still be arriving
            if after.startswith(TOOL_CALL_CLOSE):
                after = after[len(TOOL_CALL_CLOSE):]
        self._at = len(self._text) - len(after)
        self._value = None
        if not self._tagged:
            self._mode = "done"  # one bare object is one call
        return True

    def _not_a_call(self) -> bool:
        if self.calls or self._forced:
            self._mode = "done" if self.calls else "whole"
        else:
            self._mode = "content"
            self._release()
        return False

    def _announce(self, name: str) -> None:
        call = {"id": new_id(TOOL_CALL_ID_PREFIX), "type": "function", "function": {"name": name, "arguments": ""}}
        self.calls.append(call)
        self._on_call(len(self.calls) - 1, call["id"], name)

    def _arguments(self, text: str) -> None:
        if text:
            self.calls[-1]["function"]["arguments"] += text
            self._on_arguments(len(self.calls) - 1, text)

    def _release(self) -> None:
        text, self._text = self._text, ""
        logprobs, self._logprobs = self._logprobs, []
        if text or logprobs:
            self._emit(text, logprobs or None)


class _ValueEnd:
    """Finds where one JSON value ends in text that arrives in pieces (it is not validated)."""

    __slots__ = ("depth", "in_string", "escaped", "done", "started", "string")

    def __init__(self) -> None:
        self.depth = 0
        self.in_string = False
        self.escaped = False
        self.done = False
        self.started = False
        self.string = False  # the value is a JSON string

    def feed(self, text: str) -> int:
        """How much of ``text`` (which starts where the value does) belongs to the value: all of
        it until the value closes."""
        for i, char in enumerate(text):
            if not self.started:
                self.started = True
                self.string = char == '"'
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif char == "\\":
                    self.escaped = True
                elif char == '"':
                    self.in_string = False
                    if self.depth == 0:
                        self.done = True
                        return i + 1
            elif char == '"':
                self.in_string = True
            elif char in "{[":
                self.depth += 1
            elif char in "}]":
                self.depth -= 1
                if self.depth <= 0:
                    self.done = True
                    return i + 1 if self.depth == 0 else i
            elif self.depth == 0 and char == ",":
                self.done = True
                return i
        return len(text)
