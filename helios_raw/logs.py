"""Logging: every line about a request names its id, and the access log is text or JSON lines.

The HTTP core sets :data:`current_request_id` while a request's handler runs (in the handler's
task, and so in worker threads started with ``asyncio.to_thread``, which copy it); a
:class:`RequestIdFilter` on a handler gives each record a ``request_id`` attribute (``""`` outside
a request) and a ``request_tag`` (`` [<id>]`` or ``""``) for formats to show. An access record
carries its request's id itself.
"""

from __future__ import annotations

import contextvars
import logging
import sys
import time

ACCESS_FORMATS = ("text", "json")
#: The id of the request being handled, or "".
current_request_id: contextvars.ContextVar[str] = contextvars.ContextVar("helios_raw_request_id", default="")

LINE_FORMAT = "%(asctime)s %(levelname)-7s %(name)s%(request_tag)s: %(message)s"


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` and ``request_tag`` to every record it sees; lets all through."""

    def filter(self, record: logging.LogRecord) -> bool:
        request_id = getattr(record, "request_id", None)
        if request_id is None:
            request_id = record.request_id = current_request_id.get()
        if not hasattr(record, "request_tag"):
            record.request_tag = f" [{request_id}]" if request_id else ""
        return True


def setup_logging(level: str, access_format: str = "text") -> None:
    """Log to stderr at ``level``, each line about a request tagged with its id; with
    ``access_format`` "json" the access log is one JSON object a line, nothing around it."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LINE_FORMAT))
    handler.addFilter(RequestIdFilter())
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), handlers=[handler])
    if access_format == "json":
        access = logging.getLogger("helios_raw.access")
        json_lines = logging.StreamHandler(sys.stderr)
        json_lines.setFormatter(logging.Formatter("%(message)s"))
        access.addHandler(json_lines)
        access.propagate = False


class UTCTime:
    """The time of an access line as ISO 8601 UTC with milliseconds, formatted whole at most once
    a second."""

    __slots__ = ("second", "text")

    def __init__(self) -> None:
        self.second = -1
        self.text = ""

    def format(self, now: float) -> str:
        second = int(now)
        if second != self.second:
            self.second = second
            self.text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self.text}.{int((now - second) * 1000):03d}Z"
