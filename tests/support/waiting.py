"""Waiting for a condition without timing assumptions: poll until it holds, fail after a long deadline."""

from __future__ import annotations

import time
from typing import Callable, TypeVar

from tests.support.rawhttp import TIMEOUT

T = TypeVar("T")


def wait_for(condition: Callable[[], T], what: str, timeout: float = TIMEOUT) -> T:
    """The first truthy value of ``condition()``, polled every 10 ms; AssertionError naming
    ``what`` if none comes within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")
