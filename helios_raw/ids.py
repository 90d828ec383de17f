"""Fresh ids for the objects the server mints (completions, tool calls, responses ...)."""

from __future__ import annotations

import os


def new_id(prefix: str) -> str:
    """``prefix`` followed by 24 random hex digits, e.g. ``chatcmpl-3f2a...`` or ``call_9b1c...``."""
    return prefix + os.urandom(12).hex()
