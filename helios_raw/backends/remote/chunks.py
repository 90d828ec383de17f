"""One upstream stream's chunks, normalised to OpenAI's: see :mod:`.normalise` for what every
object gets. A stream's chunks share the first chunk's ``id`` and ``created``; usage comes alone in
a last chunk with empty ``choices``, only when the client asked for it (``include_usage``), moved
there from a chunk with choices if the upstream put it on one (llama-server does, for text
completions); text split inside a character between events is reassembled (see :mod:`.text`).
"""

from __future__ import annotations

import time
from typing import Any, Optional

from ...ids import new_id
from .normalise import (
    ID_PREFIXES,
    created_of,
    envelope,
    fix_choice,
    text_logprobs,
    tool_call_piece,
    usage,
)
from .text import SURROGATE, mend, mend_all, split_incomplete

#: The ``object`` of a stream's chunks (OpenAI streams text completions as ``text_completion``).
CHUNK_OBJECTS = {"chat": "chat.completion.chunk", "text": "text_completion"}


class ChunkNormaliser:
    """Normalises the chunks of one stream (``kind`` "chat" or "text"); see the module docstring.

    :meth:`chunk` takes each upstream chunk and returns the chunks to send (none, one, or two when
    a usage riding on a choice is moved to a chunk of its own); :meth:`finish` returns what the end
    of the stream still owes: text held back for an unfinished character, and the usage chunk.
    """

    def __init__(self, kind: str, model: str, include_usage: bool) -> None:
        self.kind = kind
        self.model = model
        self.include_usage = include_usage
        self.id: Optional[str] = None
        self.created = 0
        self.fingerprint: Optional[str] = None
        self.usage: Optional[dict] = None
        self.usage_sent = False
        self._held: dict[tuple, str] = {}  # (choice index, field) -> unfinished character
        self._offsets: dict[int, int] = {}  # choice index -> text length so far (text logprobs)
        self._lossy = False

    def chunk(self, obj: dict, lossy: bool = False) -> list:
        self._lossy = lossy
        if self.id is None:
            self.id = str(obj.get("id") or new_id(ID_PREFIXES[self.kind]))
            self.created = created_of(obj)
        envelope(obj, self.model, CHUNK_OBJECTS[self.kind], self.id, self.created)
        self.fingerprint = obj.get("system_fingerprint", self.fingerprint)
        found = usage(obj.pop("usage", None))
        out = []
        choices = [c for c in obj["choices"] if isinstance(c, dict)]
        for position, choice in enumerate(choices):
            fix_choice(choice, self.kind, position)
            self._text_of(choice)
        obj["choices"] = choices
        if choices or found is None:
            out.append(self._clean(obj))
        if found is not None:
            self.usage = found
            if not choices:
                out.extend(self._usage_chunk(obj))
        return out

    def finish(self) -> list:
        """What the stream still owes at its end (called once, after the upstream's last chunk)."""
        out = []
        for (index, key), held in list(self._held.items()):
            if held:
                out.append(self._bare([self._tail_choice(index, key, mend(held))]))
        self._held.clear()
        if self.usage is not None and not self.usage_sent:
            out.extend(self._usage_chunk(self._bare([])))
        return out

    # -- helpers -------------------------------------------------------------------------------

    def _usage_chunk(self, obj: dict) -> list:
        if not self.include_usage or self.usage_sent or self.usage is None:
            return []
        self.usage_sent = True
        obj["choices"], obj["usage"] = [], self.usage
        return [self._clean(obj)]

    def _bare(self, choices: list) -> dict:
        chunk = {"id": self.id or new_id(ID_PREFIXES[self.kind]), "created": self.created or int(time.time()),
                 "model": self.model, "choices": choices}
        envelope(chunk, self.model, CHUNK_OBJECTS[self.kind], chunk["id"], chunk["created"])
        if isinstance(self.fingerprint, str):
            chunk["system_fingerprint"] = self.fingerprint
        return chunk

    def _tail_choice(self, index: int, key: str, text: str) -> dict:
        if self.kind == "text":
            return {"text": text, "index": index, "logprobs": None, "finish_reason": None}
        return {"index": index, "delta": {key: text}, "logprobs": None, "finish_reason": None}

    def _text_of(self, choice: dict) -> None:
        """Reassemble the choice's text across events; convert text logprobs; check the delta."""
        index = choice["index"]
        if self.kind == "text":
            choice["text"] = self._joined(index, "text", choice.get("text"))
            if choice["finish_reason"] is not None:
                choice["text"] += mend(self._held.pop((index, "text"), ""))
            choice["logprobs"] = text_logprobs(choice.get("logprobs"), self._offsets.get(index, 0))
            self._offsets[index] = self._offsets.get(index, 0) + len(choice["text"])
            return
        delta = choice.get("delta")
        delta = choice["delta"] = delta if isinstance(delta, dict) else {}
        for key in ("content", "reasoning_content", "refusal"):
            if isinstance(delta.get(key), str) or self._held.get((index, key)):
                delta[key] = self._joined(index, key, delta.get(key))
        if delta.get("role") not in (None, "developer", "system", "user", "assistant", "tool"):
            delta.pop("role")
        if isinstance(delta.get("tool_calls"), list):
            delta["tool_calls"] = [tool_call_piece(call, i) for i, call in enumerate(delta["tool_calls"])
                                   if isinstance(call, dict)]
        if choice["finish_reason"] is not None:
            self._flush(index, delta)

    def _joined(self, index: int, key: str, text: Any) -> str:
        text = text if isinstance(text, str) else ""
        held = self._held.pop((index, key), "")
        if not held and not SURROGATE.search(text):
            return text
        head, tail = split_incomplete(held + text)
        if tail:
            self._held[(index, key)] = tail
        return mend(head)

    def _flush(self, index: int, delta: dict) -> None:
        for key in ("content", "reasoning_content", "refusal"):
            held = self._held.pop((index, key), "")
            if held:
                delta[key] = (delta.get(key) or "") + mend(held)

    def _clean(self, obj: dict) -> dict:
        """``obj`` without lone surrogates anywhere, when its event held some (its text fields
        are already reassembled)."""
        return mend_all(obj) if self._lossy else obj
