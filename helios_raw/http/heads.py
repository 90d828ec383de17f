"""Response heads: the headers every response carries, and the raw error response a connection
ends with when h11 can no longer write one (the request could not be parsed, or was refused
before it was complete)."""

from __future__ import annotations

import time
from email.utils import formatdate
from http import HTTPStatus

from ..errors import APIError

REASONS = {status.value: status.phrase.encode() for status in HTTPStatus}
SERVER_HEADER = (b"server", b"helios_raw")


class DateHeader:
    """The ``Date`` header, formatted at most once a second."""

    __slots__ = ("second", "header")

    def __init__(self) -> None:
        self.second = -1
        self.header = (b"date", b"")

    def get(self) -> tuple:
        now = time.time()
        if int(now) != self.second:
            self.second = int(now)
            self.header = (b"date", formatdate(now, usegmt=True).encode())
        return self.header


date = DateHeader()


def raw_error(error: APIError, headers: list, head_only: bool = False) -> bytes:
    """The bytes of ``error`` as a complete response that closes the connection: its own headers,
    then ``headers`` (the application's), Server, Date and the framing. ``head_only`` (the answer
    to a HEAD request) leaves out the body, as HTTP requires, and keeps its length."""
    body = error.to_json()
    lines = [b"HTTP/1.1 %d %s" % (error.status, REASONS.get(error.status, b""))]
    fields = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in error.headers]
    fields.append((b"content-type", b"application/json"))
    fields += headers
    fields += [SERVER_HEADER, date.get(), (b"content-length", b"%d" % len(body)), (b"connection", b"close")]
    lines += [name + b": " + value for name, value in fields]
    return b"\r\n".join(lines) + b"\r\n\r\n" + (b"" if head_only else body)
